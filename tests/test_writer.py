"""The writer: files that ggml's C reader and gguf-py accept with identical content, ggml's exact
layout, explicit typing rules, and atomic replacement of the target."""
from __future__ import annotations

import os

import numpy as np
import pytest

import qformat
from qformat import errors as E
from qformat.container.values import TypedValue, ValueType as VT

from .test_real_files import assert_matches_ggml, assert_matches_gguf_py, gguf_py_view, same_value, write_with_gguf_py

RNG = np.random.default_rng(7)
METADATA = {
    "general.architecture": "llama",
    "general.alignment": 64,
    "u8": np.uint8(255), "i8": np.int8(-128), "u16": np.uint16(65535), "i16": np.int16(-32768),
    "u32": np.uint32(2**32 - 1), "i32": np.int32(-2**31), "f32": np.float32(3.25),
    "u64": np.uint64(2**64 - 1), "i64": np.int64(-2**63), "f64": np.float64(-1e300),
    "flag": False, "name": "ünïcødé ✓", "empty": "",
    "toks": ["<s>", "", "é", "日本語"], "scores": np.linspace(-1, 1, 5, dtype=np.float32),
    "bools": np.array([True, False, True]), "none": np.zeros(0, dtype=np.int16),
    "big": np.arange(3, dtype=np.uint64) * (2**62),
}
TENSORS = {
    "tok_embd.weight": RNG.standard_normal((5, 64)).astype(np.float32),
    "h": RNG.standard_normal((2, 3, 4)).astype(np.float16),
    "d": RNG.standard_normal(7),
    "i8": np.arange(-5, 5, dtype=np.int8), "i16": np.arange(9, dtype=np.int16).reshape(3, 3),
    "i32": np.arange(4, dtype=np.int32), "i64": np.arange(1, 2, dtype=np.int64).reshape(1, 1, 1, 1),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    p = tmp_path_factory.mktemp("w") / "all.gguf"
    qformat.write(p, TENSORS, METADATA)
    return p


def test_written_file_reads_back_exactly(written):
    with qformat.open(written) as f:
        assert f.alignment == 64 and f.byteorder == "<" and f.version == 3
        assert list(f.metadata) == list(METADATA)
        for k, v in METADATA.items():
            if k == "general.alignment":
                assert f.metadata[k] == 64 and f.field(k).type is VT.UINT32
            else:
                assert same_value(f.metadata[k], v if not isinstance(v, list) else v), k
        assert f.field("none").elem_type is VT.INT16 and f.field("big").elem_type is VT.UINT64
        for name, x in TENSORS.items():
            t = f.tensors[name]
            assert t.shape == x.shape and t.offset % 64 == 0
            assert f.raw(name).tobytes() == np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<")).tobytes()


def test_layout_is_ggml_layout(written):
    """Contiguous data, each tensor padded with zeros up to the alignment, the last one too."""
    blob = written.read_bytes()
    with qformat.open(written) as f:
        expect = f.data_offset
        for t in f.tensors.values():
            assert t.offset == expect
            pad = -t.nbytes % 64
            assert blob[t.offset + t.nbytes:t.offset + t.nbytes + pad] == bytes(pad)
            expect += t.nbytes + pad
        assert len(blob) == expect
        assert blob[f.data_offset - 1] == 0


def test_accepted_by_ggml_with_identical_content(written, ggml_ref):
    with qformat.open(written) as f:
        assert_matches_ggml(f, ggml_ref.read_gguf(str(written)))


def test_accepted_by_gguf_py_with_identical_content(written):
    view = gguf_py_view(written)
    with qformat.open(written) as f:
        assert_matches_gguf_py(f, view)
        for name, g in view["tensors"].items():
            assert f.raw(name).tobytes() == np.ascontiguousarray(g["data"]).astype(
                g["data"].dtype.newbyteorder("<")).tobytes()


def test_byte_identical_to_gguf_py_writer(tmp_path):
    """gguf-py (llama.cpp's converter) writes the same layout: the files must be equal byte for byte."""
    ref = tmp_path / "ref.gguf"

    def setup(w):
        w.add_custom_alignment(64)  # sets the key and the layout (a bare add_uint32 would only set the key)
        w.add_array("toks", ["a", "bé"])
        w.add_float32("eps", 1e-5)
        w.add_int64("n", -3)
    write_with_gguf_py(ref, TENSORS, setup=setup)
    ours = tmp_path / "ours.gguf"
    qformat.write(ours, TENSORS, {"general.architecture": "llama", "general.alignment": 64, "toks": ["a", "bé"],
                                  "eps": np.float32(1e-5), "n": -3})
    assert ours.read_bytes() == ref.read_bytes()


def test_quantized_and_raw_tensors(tmp_path, ggml_ref):
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    p = tmp_path / "q.gguf"
    qformat.write(p, {"q": (x, "Q8_0"), "f16": (x, "F16")})
    with qformat.open(p) as f:
        q = f.tensors["q"]
        assert q.qtype is qformat.QType.Q8_0 and q.shape == (4, 64) and q.nbytes == 4 * 2 * 34
        assert f.raw("q").tobytes() == ggml_ref.quantize(x, "Q8_0").tobytes()
        assert np.array_equal(f.read("q"), ggml_ref.dequantize(ggml_ref.quantize(x, "Q8_0"), "Q8_0").reshape(4, 64))
        assert np.array_equal(f.read("f16"), x.astype(np.float16).astype(np.float32))
        # copying bytes qformat need not understand (and the metadata: the statistics the writer
        # recorded for q and f16 travel as ordinary typed values)
        p2 = tmp_path / "copy.gguf"
        with qformat.Writer(p2, f.typed_metadata()) as w:
            for name, t in f.tensors.items():
                w.add_raw(name, f.raw(name), t.qtype, t.shape)
        assert p2.read_bytes() == p.read_bytes()


def test_plain_python_values_and_standard_keys(tmp_path):
    p = tmp_path / "t.gguf"
    qformat.write(p, {}, {"general.file_type": 7, "split.count": 3, "split.tensors.count": 5, "split.no": 0,
                          "general.quantization_version": 2, "n": 5, "x": 0.1, "ints": [1, 2**40],
                          "floats": [1, 2.5], "bools": [True],
                          "nest": [[1], ["a", "b"], np.zeros(0, np.uint8), [[True]]]})
    with qformat.open(p) as f:
        types = {k: f.field(k).type for k in f.metadata}
        assert types["general.file_type"] is VT.UINT32 and types["general.quantization_version"] is VT.UINT32
        assert types["split.count"] is VT.UINT16 and types["split.no"] is VT.UINT16
        assert types["split.tensors.count"] is VT.INT32
        assert types["n"] is VT.INT64 and types["x"] is VT.FLOAT64 and f.metadata["x"] == 0.1
        assert f.field("ints").elem_type is VT.INT64 and f.field("floats").elem_type is VT.FLOAT64
        assert f.field("bools").elem_type is VT.BOOL and f.field("nest").elem_type is VT.ARRAY
        nest = f.typed_metadata()["nest"].value
        assert [t.elem_type for t in nest] == [VT.INT64, VT.STRING, VT.UINT8, VT.ARRAY]
        assert nest[3].value[0].elem_type is VT.BOOL and f.metadata["nest"][3][0].tolist() == [True]
    with pytest.raises(E.WriteError, match="empty list"):
        qformat.write(tmp_path / "x.gguf", {}, {"nest": [[1], []]})


@pytest.mark.parametrize("meta", [
    {"general.alignment": 2**32}, {"split.count": 70000}, {"split.no": -1},
    {"k": TypedValue(256, VT.UINT8)}, {"k": TypedValue(-1, VT.UINT64)}, {"k": TypedValue(1e39, VT.FLOAT32)},
    {"k": TypedValue(1.5, VT.INT32)}, {"k": TypedValue([1, 300], VT.ARRAY, VT.INT8)},
    {"k": TypedValue(np.array([2**40]), VT.ARRAY, VT.UINT32)}, {"k": TypedValue([-1], VT.ARRAY, VT.UINT16)},
])
def test_values_out_of_range_are_refused(tmp_path, meta):
    with pytest.raises(E.ValueOutOfRange):
        qformat.write(tmp_path / "x.gguf", {}, meta)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [
    dict(metadata={"": 1}), dict(metadata={"k": []}), dict(metadata={"k": [1, "a"]}), dict(metadata={"k": None}),
    dict(metadata={"k": np.float16(1)}), dict(metadata={"k": "\udc80"}), dict(metadata={"k": np.ones((2, 2))}),
    dict(metadata={"general.alignment": 48}), dict(metadata={"general.alignment": TypedValue(64, VT.INT32)}),
    dict(metadata={"k": ["ok", "\udc80"]}), dict(tensors={"\udc80": np.ones(2, np.float32)}),
    dict(tensors={"a\0b": np.ones(2, np.float32)}),
    dict(metadata={"general.alignment": 64}, alignment=32), dict(alignment=0), dict(alignment=3),
    dict(tensors={"": np.ones(2, np.float32)}), dict(tensors={"x" * 64: np.ones(2, np.float32)}),
    dict(tensors={"t": np.ones((1, 1, 1, 1, 1), np.float32)}), dict(tensors={"t": np.ones((2, 0), np.float32)}),
    dict(tensors={"t": np.ones(3, np.uint8)}), dict(tensors={"t": np.ones(3, bool)}),
    dict(tensors={"t": (np.ones(33, np.float32), "Q8_0")}), dict(tensors={"t": (np.ones(32, np.float32), "Q4_2")}),
    dict(tensors={"t": [1.0, 2.0]}),
])
def test_bad_arguments_are_write_errors(tmp_path, kwargs):
    with pytest.raises(E.WriteError):
        qformat.write(tmp_path / "x.gguf", kwargs.get("tensors", {}), kwargs.get("metadata"),
                      alignment=kwargs.get("alignment"))
    assert list(tmp_path.iterdir()) == []


def test_alignment_argument(tmp_path):
    for a, key_written in [(None, False), (32, False), (1, True), (4096, True)]:
        p = tmp_path / f"a{a}.gguf"
        qformat.write(p, {"x": np.ones(3, np.float32), "y": np.ones(5, np.float32)}, {"k": 1}, alignment=a)
        with qformat.open(p) as f:
            assert f.alignment == (a or 32) and ("general.alignment" in f.metadata) == key_written
            assert f.tensors["y"].offset % f.alignment == 0
    # the same value given both ways is one setting
    qformat.write(tmp_path / "b.gguf", {}, {"general.alignment": 16}, alignment=16)


def test_writer_streaming_and_duplicates(tmp_path):
    p = tmp_path / "s.gguf"
    with qformat.Writer(p, {"k": "v"}, alignment=16) as w:
        w.add_tensor("a", np.float32(2.5))  # 0-d: stored as shape (1,)
        w.add_tensor("b", np.arange(6, dtype=np.float32).reshape(2, 3))
        with pytest.raises(E.WriteError, match="twice"):
            w.add_tensor("a", np.ones(2, np.float32))
        assert not p.exists()
    with qformat.open(p) as f:
        assert f.tensors["a"].shape == (1,) and f.read("a")[0] == 2.5
        assert f.read("b").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert sorted(os.listdir(tmp_path)) == ["s.gguf"]


def test_exception_inside_writer_leaves_nothing(tmp_path):
    p = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError):
        with qformat.Writer(p, {"k": 1}) as w:
            w.add_tensor("a", np.ones(100, np.float32))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_existing_target(tmp_path):
    p = tmp_path / "out.gguf"
    qformat.write(p, {"a": np.ones(4, np.float32)}, {"k": "old"})
    before = p.read_bytes()
    bad = np.ones(64, np.float32)
    bad[3] = np.nan
    # the second tensor fails while being encoded, after the header and first tensor were streamed
    with pytest.raises(E.QFormatError):
        qformat.write(p, {"a": np.ones(4, np.float32), "b": (bad, "Q8_0")}, {"k": "new"})
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["out.gguf"]
    with pytest.raises(E.WriteError):
        with qformat.Writer(p, {"k": "new"}) as w:
            w.add_tensor("a", np.ones(4, np.float32))
            w.add_tensor("a", np.ones(4, np.float32))
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["out.gguf"]


def test_overwrite_while_open_keeps_the_open_view(tmp_path):
    p = tmp_path / "o.gguf"
    qformat.write(p, {"a": np.full(4, 1, np.float32)})
    with qformat.open(p) as f:
        qformat.write(p, {"a": np.full(4, 2, np.float32)})
        assert f.read("a").tolist() == [1, 1, 1, 1]
    with qformat.open(p) as g:
        assert g.read("a").tolist() == [2, 2, 2, 2]
