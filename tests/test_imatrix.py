"""qformat.imatrix: llama.cpp's two importance-matrix formats, read strictly, and their use by the encoders."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qformat
from qformat import imatrix
from qformat.container import TypedValue, ValueType
from qformat.errors import (
    CodecError, FormatError, ImatrixBadEntry, ImatrixError, ImatrixMismatch, ImatrixTruncated, QFormatError,
)

from .conftest import ROOT, load_tool

DATA = ROOT / "tests" / "data" / "imatrix"
DAT = DATA / "imatrix.dat"
GGUF = DATA / "imatrix.gguf"


# --- the committed files ------------------------------------------------------------------------

def test_both_formats_give_the_recipes_mean_squares():
    gen = load_tool("gen_imatrix")
    stats = gen.statistics()
    dat, gguf_ = imatrix.load_file(DAT), imatrix.load_file(GGUF)
    assert set(dat.weights) == set(gguf_.weights) == set(gen.ENTRIES)
    for name, (sum2, _, counts) in stats.items():
        expected = (sum2 / counts[:, None]).reshape(-1)
        np.testing.assert_allclose(gguf_.weights[name], expected, rtol=0)
        # the legacy writer stores mean * ncall and the reader divides by ncall: one float rounding each way
        np.testing.assert_allclose(dat.weights[name], expected, rtol=3e-7)
        assert dat.weights[name].dtype == gguf_.weights[name].dtype == np.float32
    assert dat.legacy and not gguf_.legacy
    assert dat.datasets == gguf_.datasets == [gen.DATASET]
    assert dat.chunk_count == gguf_.chunk_count == gen.CHUNKS
    assert gguf_.chunk_size == gen.CHUNK_SIZE and dat.chunk_size is None


def test_regenerating_reproduces_the_committed_files(tmp_path):
    gen = load_tool("gen_imatrix")
    stats = gen.statistics()
    gen.write_dat(tmp_path / "a.dat", stats)
    gen.write_gguf(tmp_path / "a.gguf", stats)
    assert (tmp_path / "a.dat").read_bytes() == DAT.read_bytes()
    assert (tmp_path / "a.gguf").read_bytes() == GGUF.read_bytes()


def test_gguf_imatrix_matches_gguf_py_reader():
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(GGUF))
    arrays = {t.name: np.array(t.data, dtype=np.float32) for t in r.tensors}
    w = imatrix.load(GGUF)
    for name, got in w.items():
        sums = arrays[name + ".in_sum2"].reshape(-1)
        counts = arrays[name + ".counts"].reshape(-1)
        np.testing.assert_array_equal(got, (sums.reshape(counts.size, -1) / counts[:, None]).reshape(-1))


def test_gguf_imatrix_is_accepted_by_ggml_parser(ggml_ref):
    info = ggml_ref.read_gguf(str(GGUF))
    assert info is not None
    assert info["kv"]["general.type"][1] == "imatrix"
    assert info["kv"]["imatrix.chunk_size"][0] == 4  # UINT32, as llama-imatrix writes it
    assert {n.rsplit(".", 1)[0] for n in info["tensors"]} >= set(imatrix.load(GGUF))


# --- weights_for ----------------------------------------------------------------------------------

def test_weights_for_shapes():
    """llama-quantize's rule: exactly n_cols values, times the expert count for a 3-D tensor."""
    w = imatrix.load(GGUF)
    assert imatrix.weights_for(w, "blk.0.attn_q.weight", 256).shape == (256,)
    assert imatrix.weights_for(w, "blk.0.attn_q.weight", (1024, 256)).shape == (256,)
    experts = imatrix.weights_for(w, "blk.0.ffn_up_exps.weight", (2, 64, 256))
    assert experts.shape == (2, 256) and experts.dtype == np.float32
    np.testing.assert_array_equal(experts.reshape(-1), w["blk.0.ffn_up_exps.weight"])
    assert imatrix.weights_for(w, "no.such.weight", 256) is None
    assert imatrix.weights_for(None, "blk.0.attn_q.weight", 256) is None
    with pytest.raises(ImatrixMismatch, match="512 values"):
        imatrix.weights_for(w, "blk.0.ffn_down.weight", 384)
    # a per-expert entry for a 2-D tensor, or for a tensor with another expert count, does not fit
    with pytest.raises(ImatrixMismatch, match="fits 2 matrices; this tensor has 1"):
        imatrix.weights_for(w, "blk.0.ffn_up_exps.weight", (64, 256))
    with pytest.raises(ImatrixMismatch, match="fits 2 matrices; this tensor has 4"):
        imatrix.weights_for(w, "blk.0.ffn_up_exps.weight", (4, 64, 256))
    # nor does a single vector for a tensor of several experts (llama-quantize refuses it too)
    with pytest.raises(ImatrixMismatch, match="2 matrices"):
        imatrix.weights_for(w, "blk.0.attn_q.weight", (2, 64, 256))


@pytest.mark.parametrize("qt", ["Q4_K", "Q6_K", "Q4_0"])
def test_per_expert_weights_encode_each_matrix_with_its_own_vector(ggml_ref, qt):
    """quantize(x (n_exp, rows, n), imatrix=(n_exp, n)) == expert k quantized with row k, as
    llama-quantize loops over experts, and == ggml_quantize_chunk per expert."""
    w = imatrix.weights_for(imatrix.load(GGUF), "blk.0.ffn_up_exps.weight", (2, 3, 256))
    x = np.random.default_rng(11).standard_normal((2, 3, 256)).astype(np.float32)
    got = qformat.quantize(x, qt, imatrix=w)
    for k in range(2):
        np.testing.assert_array_equal(got[k], qformat.quantize(x[k], qt, imatrix=w[k]))
        np.testing.assert_array_equal(got[k], ggml_ref.quantize(x[k], qt, imatrix=w[k]))
    assert not np.array_equal(got[1], qformat.quantize(x[1], qt, imatrix=w[0]))  # the vectors differ
    # a leading axis before the experts broadcasts: each (.., k, :, :) matrix uses vector k
    x4 = np.stack([x, -x])
    got4 = qformat.quantize(x4, qt, imatrix=w)
    np.testing.assert_array_equal(got4[0], got)
    np.testing.assert_array_equal(got4[1, 1], qformat.quantize(-x[1], qt, imatrix=w[1]))
    with pytest.raises(CodecError, match="imatrix has shape"):
        qformat.quantize(x, qt, imatrix=np.ones((3, 256), np.float32))
    with pytest.raises(CodecError, match="imatrix has shape"):
        qformat.quantize(x[0], qt, imatrix=w)  # a 2-D input has no expert axis


@pytest.mark.parametrize("qt", ["Q4_K", "Q5_K"])
@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"])
def test_file_weights_drive_ggml_weighted_encoder_byte_exactly(ggml_ref, qt, name):
    """mode "ggml" with an imatrix read from a file == ggml_quantize_chunk with the same vector."""
    w = imatrix.load(DAT)[name]
    x = np.random.default_rng(7).standard_normal((6, w.size)).astype(np.float32)
    cols = imatrix.weights_for(imatrix.load(DAT), name, x.shape)
    ours = qformat.quantize(x, qt, imatrix=cols)
    np.testing.assert_array_equal(ours, ggml_ref.quantize(x, qt, imatrix=cols))
    # and the imatrix matters: without it the bytes differ
    assert not np.array_equal(ours, ggml_ref.quantize(x, qt))


# --- legacy format: round trip and strictness ----------------------------------------------------

def _dat(entries, trailer=None) -> bytes:
    out = [struct.pack("<i", len(entries))]
    for name, ncall, values in entries:
        raw = name.encode("utf-8") if isinstance(name, str) else name
        out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, len(values)),
                np.asarray(values, dtype="<f4").tobytes()]
    if trailer is not None:
        chunks, ds = trailer
        out += [struct.pack("<ii", chunks, len(ds)), ds]
    return b"".join(out)


#: what UTF-8 can encode and a C string can hold (no NUL). A lone surrogate ('\ud800') is not a
#: character a file can carry: no UTF-8 byte sequence decodes to it, so no name read from a file is
#: one (the bytes a careless encoder would write for it are refused, see test_legacy_rule_violations),
#: and the strategy, which builds names to write, must not produce it.
_NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.text(_NAME_CHARS, min_size=1, max_size=20), st.integers(0, 1000),
                          st.lists(st.floats(0, 1e6, width=32), min_size=1, max_size=40)),
                min_size=1, max_size=5, unique_by=lambda e: e[0]),
       st.one_of(st.none(), st.tuples(st.integers(0, 100), st.text(_NAME_CHARS, max_size=12).map(str.encode))))
def test_legacy_round_trip(tmp_path_factory, entries, trailer):
    p = tmp_path_factory.mktemp("dat") / "x.dat"
    p.write_bytes(_dat(entries, trailer))
    got = imatrix.load_file(p)
    assert list(got.weights) == [e[0] for e in entries]
    for name, ncall, values in entries:
        v = np.asarray(values, dtype=np.float32)
        np.testing.assert_array_equal(got.weights[name], v / np.float32(ncall) if ncall else v)
    if trailer is None:
        assert got.chunk_count is None and got.datasets == []
    else:
        assert got.chunk_count == trailer[0] and got.datasets == [trailer[1].decode()]


def test_every_truncation_of_the_dat_file_is_a_clean_error(tmp_path):
    data = DAT.read_bytes()
    p = tmp_path / "t.dat"
    # every cut inside the entries or the trailer (cuts exactly at the end of the last entry are valid)
    end_entries = len(data) - 8 - len(load_tool("gen_imatrix").DATASET)
    cuts = sorted(set(range(0, 64)) | set(range(64, len(data), 97)) | {end_entries + 1, end_entries + 5,
                                                                         len(data) - 1})
    for n in cuts:
        p.write_bytes(data[:n])
        with pytest.raises(QFormatError) as ei:
            imatrix.load(p)
        assert isinstance(ei.value, (ImatrixError, FormatError)), (n, ei.value)
        assert ei.value.offset is not None and ei.value.offset <= n, (n, ei.value)
    p.write_bytes(data[:end_entries])
    assert imatrix.load_file(p).chunk_count is None  # the trailer is optional


@pytest.mark.parametrize("blob, cls, offset, match", [
    (struct.pack("<i", 0), ImatrixBadEntry, 0, "entry count is 0"),
    (struct.pack("<i", 1 << 30), ImatrixTruncated, 0, "needs at least"),
    (_dat([("", 1, [1.0])]), ImatrixBadEntry, 4, "name length is 0"),
    (_dat([(b"\xff\xfe", 1, [1.0])]), ImatrixBadEntry, 8, "UTF-8"),
    # a lone surrogate has no UTF-8 form; its CESU-8/WTF-8 bytes are refused like any invalid UTF-8
    (_dat([(b"a\xed\xa0\x80", 1, [1.0])]), ImatrixBadEntry, 9, "UTF-8"),
    (_dat([("a\0b", 1, [1.0])]), ImatrixBadEntry, 8, "NUL"),
    (_dat([("a", -1, [1.0])]), ImatrixBadEntry, 9, "call count is -1"),
    (_dat([("a", 1, [])]) + b"\0" * 16, ImatrixBadEntry, 13, "value count is 0"),
    (_dat([("a", 1, [1.0, float("nan")])]), ImatrixBadEntry, 21, "finite"),
    (_dat([("a", 1, [-2.0])]), ImatrixBadEntry, 17, ">= 0"),
    (_dat([("a", 1, [1.0]), ("a", 1, [1.0])]), ImatrixBadEntry, 21, "twice"),
    (_dat([("a", 1, [1.0])], (1, b"ds")) + b"x", ImatrixTruncated, 31, "unexpected bytes"),
    (_dat([("a", 1, [1.0])]) + struct.pack("<ii", 1, -3), ImatrixBadEntry, 25, "dataset name length"),
])
def test_legacy_rule_violations(tmp_path, blob, cls, offset, match):
    p = tmp_path / "bad.dat"
    p.write_bytes(blob)
    with pytest.raises(cls, match=match) as ei:
        imatrix.load(p)
    assert ei.value.offset == offset
    assert f"byte {offset}" in str(ei.value) and f"[{cls.rule}]" in str(ei.value)


# --- GGUF format: strictness ---------------------------------------------------------------------

META = {
    "general.type": "imatrix",
    "imatrix.datasets": ["d.txt"],
    "imatrix.chunk_count": TypedValue(2, ValueType.UINT32),
    "imatrix.chunk_size": TypedValue(8, ValueType.UINT32),
}


def _gguf(tmp_path: Path, tensors, metadata=None) -> Path:
    p = tmp_path / "m.gguf"
    qformat.write(p, tensors, META if metadata is None else metadata)
    return p


def _good():
    return {"t.weight.in_sum2": np.full((2, 32), 4.0, np.float32),
            "t.weight.counts": np.array([[2.0], [0.0]], np.float32)}


def test_gguf_counts_zero_means_neutral_weights(tmp_path):
    w = imatrix.load(_gguf(tmp_path, _good()))["t.weight"]
    np.testing.assert_array_equal(w, np.r_[np.full(32, 2.0), np.ones(32)].astype(np.float32))


@pytest.mark.parametrize("mutate, cls, match", [
    (lambda t, m: m.pop("imatrix.chunk_size"), ImatrixError, "imatrix.chunk_size"),
    (lambda t, m: m.__setitem__("imatrix.chunk_count", TypedValue(2, ValueType.INT32)), ImatrixError, "UINT32"),
    (lambda t, m: m.__setitem__("general.type", "model"), ImatrixError, "general.type"),
    (lambda t, m: t.pop("t.weight.counts"), ImatrixBadEntry, "t.weight.counts"),
    (lambda t, m: t.__setitem__("t.weight.in_sum2", t["t.weight.in_sum2"].astype(np.float16)), ImatrixBadEntry, "F32"),
    (lambda t, m: t.__setitem__("t.weight.counts", np.array([[2.0], [-1.0]], np.float32)), ImatrixBadEntry, ">= 0"),
    (lambda t, m: t["t.weight.in_sum2"].__setitem__((1, 3), np.inf), ImatrixBadEntry, "finite"),
    (lambda t, m: t.__setitem__("t.weight.counts", np.ones((3, 1), np.float32)), ImatrixBadEntry, "do not split"),
    (lambda t, m: t.__setitem__("t.weight.in_sum", np.ones(5, np.float32)), ImatrixBadEntry, "in_sum has 5"),
    (lambda t, m: [t.clear(), t.__setitem__("other", np.ones(4, np.float32))], ImatrixError, "no '<name>.in_sum2'"),
])
def test_gguf_rule_violations(tmp_path, mutate, cls, match):
    tensors, meta = _good(), dict(META)
    mutate(tensors, meta)
    p = _gguf(tmp_path, tensors, meta)
    with pytest.raises(cls, match=match) as ei:
        imatrix.load(p)
    assert str(p) in str(ei.value) and f"[{cls.rule}]" in str(ei.value)


def test_gguf_structure_errors_come_from_the_strict_reader(tmp_path):
    data = GGUF.read_bytes()
    p = tmp_path / "cut.gguf"
    for n in (5, 30, 200, len(data) - 100):
        p.write_bytes(data[:n])
        with pytest.raises(FormatError):
            imatrix.load(p)
