"""Tensor sources: our safetensors reader/writer against the reference library, npz/npy, GGUF, bad files."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load_file, save_file

import qformat
from qformat.errors import NumpyFileError, SafetensorsError, SourceError, UnsupportedSource
from qformat.sources import open_source, write_safetensors

from .conftest import shared_file


def _load_all(path):
    with open_source(path) as s:
        return {n: t.load() for n, t in s}


def test_real_safetensors_equals_reference_reader():
    p = shared_file("weights/minilm-l6-layer0.safetensors")
    ref = load_file(str(p))
    with open_source(p) as s:
        assert set(s.tensors) == set(ref) and len(s) == 16
        assert s.metadata["license"] == "Apache-2.0"
        for name, t in s:
            a = t.load()
            assert t.shape == ref[name].shape and a.dtype == ref[name].dtype
            assert np.array_equal(a, ref[name])


_DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int16, np.int32, np.int64]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_DTYPES), hnp.array_shapes(min_dims=1, max_dims=3, max_side=9)),
                min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_files_written_by_the_reference_read_back_exactly(tmp_path_factory, specs, rnd):
    tensors = {}
    for i, (dt, shape) in enumerate(specs):
        raw = np.frombuffer(rnd.randbytes(int(np.prod(shape)) * np.dtype(dt).itemsize), dtype=dt).reshape(shape)
        tensors[f"t{i}"] = raw.copy()
    p = tmp_path_factory.mktemp("st") / "a.safetensors"
    save_file(tensors, str(p))
    got = _load_all(p)
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert got[k].tobytes() == v.tobytes()  # bitwise (NaN payloads included)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([np.float32, np.float16, np.int32]),
                          hnp.array_shapes(min_dims=1, max_dims=3, max_side=7)), min_size=0, max_size=4))
def test_our_writer_is_read_by_the_reference(tmp_path_factory, specs):
    rng = np.random.default_rng(len(specs))
    tensors = {f"w{i}": (rng.standard_normal(shape) * 100).astype(dt) for i, (dt, shape) in enumerate(specs)}
    p = tmp_path_factory.mktemp("w") / "b.safetensors"
    write_safetensors(p, [(k, v.shape, v.dtype, (lambda v=v: v)) for k, v in tensors.items()], {"k": "v"})
    ref = load_file(str(p))
    assert set(ref) == set(tensors)
    for k, v in tensors.items():
        assert ref[k].dtype == v.dtype and np.array_equal(ref[k], v)
    assert open_source(p).metadata == {"k": "v"}


def _handmade(tmp_path, header: dict, data: bytes, name="h.safetensors", pad=b"") -> str:
    blob = json.dumps(header).encode() + pad
    p = tmp_path / name
    p.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return str(p)


def test_bf16_becomes_float32_exactly(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(40).astype(np.float32)
    bits = (x.view(np.uint32) >> 16).astype("<u2")   # the top halves: what a BF16 file stores
    want = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)  # binary32 with the low half cleared
    p = _handmade(tmp_path, {"b": {"dtype": "BF16", "shape": [5, 8], "data_offsets": [0, 80]}}, bits.tobytes())
    got = _load_all(p)["b"]
    assert got.dtype == np.float32 and got.shape == (5, 8)
    assert np.array_equal(got.ravel().view(np.uint32), want.view(np.uint32))
    # and it agrees with the BF16 codec (checked against ggml elsewhere)
    assert np.array_equal(got.ravel(), qformat.dequantize(bits.view(np.uint8).reshape(-1, 2), "BF16").ravel())


def _f32(n, begin=0):
    return {"dtype": "F32", "shape": [n], "data_offsets": [begin, begin + 4 * n]}


BAD_SAFETENSORS = {
    "header past end": (lambda tp: _raw(tp, struct.pack("<Q", 1000) + b"{}"), 0),
    "too short": (lambda tp: _raw(tp, b"\x02\x00\x00"), 0),
    "huge header length": (lambda tp: _raw(tp, struct.pack("<Q", 2**64 - 1) + b"{}"), 0),
    "not json": (lambda tp: _raw(tp, struct.pack("<Q", 5) + b"{abc}"), None),
    "not utf8": (lambda tp: _raw(tp, struct.pack("<Q", 4) + b'"\xff"'[:3] + b" "), 9),
    "json list": (lambda tp: _raw(tp, struct.pack("<Q", 2) + b"[]"), 8),
    "duplicate name": (lambda tp: _raw(tp, _hdr(b'{"a":' + _j(_f32(1)) + b',"a":' + _j(_f32(1, 4)) + b"}")
                                       + bytes(8)), 8),
    "unknown dtype": (lambda tp: _handmade(tp, {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}},
                                           bytes(16)), 8),
    "missing key": (lambda tp: _handmade(tp, {"a": {"dtype": "F32", "shape": [1]}}, bytes(4)), 8),
    "negative dim": (lambda tp: _handmade(tp, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
                                          bytes(4)), 8),
    "size mismatch": (lambda tp: _handmade(tp, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
                                           bytes(4)), None),
    "hole": (lambda tp: _handmade(tp, {"a": _f32(1), "b": _f32(1, 8)}, bytes(12)), None),
    "overlap": (lambda tp: _handmade(tp, {"a": _f32(2), "b": _f32(1, 4)}, bytes(8)), None),
    "trailing bytes": (lambda tp: _handmade(tp, {"a": _f32(1)}, bytes(9)), None),
    "data truncated": (lambda tp: _handmade(tp, {"a": _f32(4)}, bytes(10)), None),
    "bad metadata": (lambda tp: _handmade(tp, {"__metadata__": {"k": 1}, "a": _f32(1)}, bytes(4)), 8),
    "reversed offsets": (lambda tp: _handmade(tp, {"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}},
                                              bytes(4)), 8),
}


def _j(d):
    return json.dumps(d).encode()


def _hdr(blob):
    return struct.pack("<Q", len(blob)) + blob


def _raw(tmp_path, content: bytes) -> str:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    return str(p)


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_bad_safetensors_raise_with_offset(tmp_path, case):
    make, offset = BAD_SAFETENSORS[case]
    p = make(tmp_path)
    with pytest.raises(SafetensorsError) as ei:
        open_source(p)
    assert ei.value.offset is not None and str(ei.value).startswith(p)
    if offset is not None:
        assert ei.value.offset == offset
    # the reference library refuses these files too
    with pytest.raises(Exception):
        load_file(p)


def test_unloadable_dtype_refused_at_load(tmp_path):
    p = _handmade(tmp_path, {"u": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}}, bytes(4))
    with open_source(p) as s:
        assert s.tensors["u"].shape == (2,)
        with pytest.raises(SafetensorsError, match="no GGUF equivalent"):
            s.tensors["u"].load()


# --- numpy and GGUF sources ------------------------------------------------------------------------

def test_npz_and_npy(tmp_path):
    rng = np.random.default_rng(7)
    arrays = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b.c": np.arange(6, dtype=np.int16),
              "f": np.asfortranarray(rng.standard_normal((4, 5)))}
    np.savez(tmp_path / "x.npz", **arrays)
    with open_source(tmp_path / "x.npz") as s:
        assert {n: t.shape for n, t in s} == {k: v.shape for k, v in arrays.items()}
        for n, t in s:
            assert np.array_equal(t.load(), arrays[n]) and t.load().dtype == arrays[n].dtype
    np.save(tmp_path / "one.npy", arrays["a"])
    assert list(_load_all(tmp_path / "one.npy")) == ["one"]
    assert np.array_equal(_load_all(tmp_path / "one.npy")["one"], arrays["a"])


def test_bad_numpy_sources(tmp_path):
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(NumpyFileError):
        open_source(tmp_path / "t.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NumpyFileError):
        open_source(tmp_path / "obj.npy")
    np.save(tmp_path / "c.npy", np.zeros(3, dtype=np.complex64))
    with pytest.raises(NumpyFileError, match="no GGUF equivalent"):
        open_source(tmp_path / "c.npy").tensors["c"].load()
    good = tmp_path / "g.npy"
    np.save(good, np.zeros((100, 100), np.float32))
    (tmp_path / "trunc.npy").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(NumpyFileError):
        open_source(tmp_path / "trunc.npy")


def test_kind_and_missing(tmp_path):
    with pytest.raises(UnsupportedSource):
        open_source(tmp_path / "x.bin")
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "nope.safetensors")


def test_gguf_source(tmp_path):
    x = np.random.default_rng(8).standard_normal((4, 64)).astype(np.float32)
    qformat.write(tmp_path / "g.gguf", {"f": x, "h": x.astype(np.float16), "q": (x, "Q8_0")}, {"k": "v"})
    with open_source(tmp_path / "g.gguf") as s:
        assert s.metadata["k"] == "v"
        assert [t.dtype for _, t in s] == ["F32", "F16", "Q8_0"]
        assert np.array_equal(s.tensors["f"].load(), x)
        assert np.array_equal(s.tensors["h"].load(), x.astype(np.float16).astype(np.float32))
        assert s.tensors["q"].raw().tobytes() == qformat.quantize(x, "Q8_0").tobytes()
