"""Property tests: whatever goes into the writer comes out of the reader exactly (types, values bit
for bit, tensors), and the independent readers (ggml's C reader, gguf-py) agree on the written file;
big-endian files written by gguf-py read back identically."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qformat
from qformat import _ggml
from qformat.container.values import FIXED_DTYPE, TypedValue, ValueType as VT

from .test_real_files import assert_matches_ggml, assert_matches_gguf_py, gguf_py_view, write_with_gguf_py

NUMERIC = [VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.FLOAT32, VT.UINT64, VT.INT64, VT.FLOAT64]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
# ggml's C API hands keys, names and strings out as NUL-terminated C strings: a NUL inside one is
# legal GGUF but cannot survive that API, so the differential test against ggml avoids it
C_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


def numeric_array(t: VT, max_size=20):
    return hnp.arrays(np.dtype(FIXED_DTYPE[t]), st.integers(0, max_size))


def typed_scalar(text=TEXT, nan=True):
    nums = st.sampled_from(NUMERIC).flatmap(
        lambda t: numeric_array(t, 1).filter(lambda a: a.size == 1 and (nan or not np.isnan(a[0])))
        .map(lambda a: TypedValue(a[0], t)))
    return st.one_of(nums, st.booleans().map(lambda b: TypedValue(b, VT.BOOL)),
                     text.map(lambda s: TypedValue(s, VT.STRING)))


def typed_array(depth: int, text=TEXT):
    leaves = st.one_of(
        st.sampled_from(NUMERIC).flatmap(lambda t: numeric_array(t).map(lambda a: TypedValue(a, VT.ARRAY, t))),
        st.lists(st.booleans(), max_size=10).map(lambda v: TypedValue(np.array(v, dtype=bool), VT.ARRAY, VT.BOOL)),
        st.lists(text, max_size=10).map(lambda v: TypedValue(v, VT.ARRAY, VT.STRING)),
    )
    if depth <= 1:
        return leaves
    return st.one_of(leaves, st.lists(typed_array(depth - 1, text), max_size=3).map(
        lambda v: TypedValue(v, VT.ARRAY, VT.ARRAY)))


def metadata(nested: bool, text=TEXT):
    keys = text.filter(lambda k: k and k != "general.alignment")
    return st.dictionaries(keys, st.one_of(typed_scalar(text), typed_array(3 if nested else 1, text)), max_size=8)


TENSOR_DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int16, np.int32, np.int64]
tensors = st.dictionaries(
    C_TEXT.filter(lambda n: 1 <= len(n.encode()) <= 63),
    st.sampled_from(TENSOR_DTYPES).flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=1, max_dims=4,
                                                                                     min_side=1, max_side=17))),
    max_size=4)


def canon(tv: TypedValue):
    """A comparable form: type ids plus values as exact bytes (so NaN payloads and -0.0 count)."""
    if tv.type is VT.ARRAY:
        if tv.elem_type is VT.ARRAY:
            return (9, 9, tuple(canon(x) for x in tv.value))
        if tv.elem_type is VT.STRING:
            return (9, 8, tuple(tv.value))
        if tv.elem_type is VT.BOOL:
            return (9, 7, tuple(bool(x) for x in tv.value))
        return (9, int(tv.elem_type), np.asarray(tv.value, dtype="<" + FIXED_DTYPE[tv.elem_type]).tobytes())
    if tv.type in (VT.STRING, VT.BOOL):
        return (int(tv.type), tv.value)
    return (int(tv.type), np.asarray(tv.value, dtype="<" + FIXED_DTYPE[tv.type]).tobytes())


@SETTINGS
@given(meta=metadata(nested=True), tens=tensors, align=st.sampled_from([None, 1, 8, 32, 256]))
def test_write_then_open_gives_back_exactly_what_went_in(tmp_path, meta, tens, align):
    p = tmp_path / "p.gguf"
    qformat.write(p, tens, meta, alignment=align)
    with qformat.open(p) as f:
        typed = f.typed_metadata()
        extra = {"general.alignment"} if align not in (None, 32) else set()
        assert set(typed) == set(meta) | extra and list(typed)[:len(meta)] == list(meta)
        for k, tv in meta.items():
            assert canon(typed[k]) == canon(tv), k
        assert list(f.tensors) == list(tens)
        for name, x in tens.items():
            t = f.tensors[name]
            assert t.shape == x.shape and t.offset % f.alignment == 0
            assert f.raw(name).tobytes() == x.astype(x.dtype.newbyteorder("<")).tobytes()
            if x.dtype in (np.float32, np.float16):
                assert np.array_equal(f.read(name), x.astype(np.float32), equal_nan=True)


@settings(SETTINGS, max_examples=25)
@given(meta=metadata(nested=False, text=C_TEXT), tens=tensors)
def test_written_files_agree_with_ggml_and_gguf_py(tmp_path, meta, tens):
    p = tmp_path / "g.gguf"
    qformat.write(p, tens, meta)
    with qformat.open(p) as f:
        if _ggml.available():
            assert_matches_ggml(f, _ggml.read_gguf(str(p)))
        view = gguf_py_view(p)
        assert_matches_gguf_py(f, view)
        for name, g in view["tensors"].items():
            assert f.raw(name).tobytes() == g["data"].astype(g["data"].dtype.newbyteorder("<")).tobytes()


@settings(SETTINGS, max_examples=25)
@given(scalars=st.lists(typed_scalar(nan=False), max_size=6), strs=st.lists(TEXT, min_size=1, max_size=6),
       ints=hnp.arrays(np.int32, st.integers(1, 10)), tens=tensors)
def test_big_endian_files_from_gguf_py(tmp_path, scalars, strs, ints, tens):
    gguf = pytest.importorskip("gguf")
    p = tmp_path / "be.gguf"

    def setup(w):
        for i, tv in enumerate(scalars):  # (gguf-py packs floats through Python floats: no NaNs here)
            w.add_key_value(f"k{i}", tv.value, gguf.GGUFValueType(int(tv.type)))
        w.add_array("strs", strs)
        w.add_array("ints", ints.tolist())
    write_with_gguf_py(p, tens, big=True, arch="arch", setup=setup)
    with qformat.open(p) as f:
        assert f.byteorder == ">"
        typed = f.typed_metadata()
        for i, tv in enumerate(scalars):
            assert canon(typed[f"k{i}"]) == canon(tv)
        assert f.metadata["strs"] == strs
        assert f.metadata["ints"].dtype.isnative and f.metadata["ints"].tolist() == ints.tolist()
        for name, x in tens.items():
            assert f.tensors[name].shape == x.shape
            assert f.raw(name).tobytes() == x.astype(x.dtype.newbyteorder(">")).tobytes()
            if x.dtype in (np.float32, np.float16):
                assert np.array_equal(f.read(name), x.astype(np.float32), equal_nan=True)
        # and the typed metadata copies into a little-endian file with the same values
        out = tmp_path / "le.gguf"
        qformat.write(out, {}, typed)
        with qformat.open(out) as g:
            assert g.byteorder == "<"
            assert {k: canon(v) for k, v in g.typed_metadata().items()} == {k: canon(v) for k, v in typed.items()}
