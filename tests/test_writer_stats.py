"""Round-trip statistics recorded by the container writer itself (``qformat.write``, ``qformat.Writer``),
which tensors get a record, how ``write()`` fills the records it reserved, and that the Writer keeps no
tensor data once it is written."""
from __future__ import annotations

import gc
import math
import subprocess
import sys
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qformat
from qformat import errors as E
from qformat.container.values import TypedValue, ValueType as VT
from qformat.stats import FIELDS, FIELDS_KEY, encoded_stats, recorded_stats, roundtrip_stats, stats_key, verify

from .test_real_files import gguf_py_view

RNG = np.random.default_rng(11)


def _expected(x, qtype):
    """The statistics the writer must record, from the public codec functions (not the writer)."""
    return roundtrip_stats(x, qformat.dequantize(qformat.quantize(x, qtype), qtype)).as_record()


def _record(path, name):
    with qformat.open(path) as f:
        return np.asarray(f.metadata[stats_key(name)])


# --- the issue-3.6 round trip: write -> verify, ggml's reader, gguf-py's decoder, tampering ---------

@pytest.fixture(scope="module")
def q4k(tmp_path_factory):
    d = tmp_path_factory.mktemp("q4k")
    x = RNG.standard_normal((24, 512)).astype(np.float32)
    p = d / "w.gguf"
    qformat.write(p, {"w": (x, "Q4_K")})
    return d, p, x


def test_write_records_stats_equal_to_roundtrip_stats(q4k):
    d, p, x = q4k
    assert np.array_equal(_record(p, "w"), _expected(x, "Q4_K"))  # bit for bit, not within a tolerance
    with qformat.open(p) as f:
        assert list(f.metadata) == [FIELDS_KEY, stats_key("w")]
        assert list(f.metadata[FIELDS_KEY]) == list(FIELDS)
        assert f.typed_metadata()[stats_key("w")].elem_type is VT.FLOAT64
        assert not np.isnan(f.metadata[stats_key("w")]).any()  # the reservation was filled
    rep = verify(p, against={"w": x})
    assert rep.ok and [t.status for t in rep.tensors] == ["pass"], rep.as_dict()
    assert verify(p).ok  # and without the source: the record agrees with the decoded tensor


def test_file_loads_in_ggml_and_gguf_py_decodes_it_identically(q4k, ggml_ref):
    d, p, x = q4k
    ref = ggml_ref.read_gguf(str(p))
    assert ref is not None
    type_id, offset, size = ref["tensors"]["w"]
    assert type_id == 12 and size == 24 * 512 // 256 * 144
    assert ref["kv"][stats_key("w")][1].tolist() == _record(p, "w").tolist()
    gguf = pytest.importorskip("gguf")
    with qformat.open(p) as f:
        raw = f.raw("w")
        assert f.data_offset + offset == f.tensors["w"].offset
        assert raw.tobytes() == ggml_ref.quantize(x, "Q4_K").tobytes()
        theirs = gguf.quants.dequantize(np.array(raw), gguf.GGMLQuantizationType.Q4_K).reshape(-1)
        ours = qformat.dequantize(raw, "Q4_K").reshape(-1)
        assert theirs.dtype == ours.dtype == np.float32
        assert np.array_equal(theirs.view(np.uint32), ours.view(np.uint32))
    # gguf-py reads the qformat.* keys as ordinary values
    assert gguf_py_view(p)["kv"][FIELDS_KEY][2] == list(FIELDS)


def test_tampered_data_fails_verify_in_the_api_and_the_cli(q4k):
    d, p, x = q4k
    np.savez(d / "src.npz", w=x)
    bad = d / "bad.gguf"
    blob = bytearray(p.read_bytes())
    with qformat.open(p) as f:
        t = f.tensors["w"]
    blob[t.offset + t.nbytes // 2] ^= 0x11  # two 4-bit quants in the middle of the tensor
    bad.write_bytes(bytes(blob))
    rep = verify(bad, against={"w": x})
    assert not rep.ok and [c.name for c in rep.failures] == ["w"]
    assert any(pr.startswith("mse: recorded") for pr in rep.failures[0].problems), rep.failures[0].problems

    def cli(path):
        return subprocess.run([sys.executable, "-m", "qformat", "verify", str(path), "--against", str(d / "src.npz")],
                              capture_output=True, text=True, timeout=120)
    good, failed = cli(p), cli(bad)
    assert good.returncode == 0, good.stdout + good.stderr
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "w" in failed.stdout + failed.stderr


# --- which tensors get a record ------------------------------------------------------------------

def test_which_tensors_are_measured(tmp_path):
    x = RNG.standard_normal((4, 256)).astype(np.float32)
    with_nan = x.copy()
    with_nan[1, 3] = np.nan
    tensors = {
        "q4k": (x, "Q4_K"), "q8": (x, "Q8_0"), "f16": (x, "F16"), "bf16": (x, "BF16"),
        "f32": (x, "F32"),                     # exact: recorded, mse 0, snr +inf
        "f64src": (x.astype(np.float64) / 3, "F32"),  # float64 values narrowed to F32: lossy
        "bare": x,                              # stored as its dtype: nothing encoded
        "ints": (np.arange(8, dtype=np.int32), "I32"),
        "nan": (with_nan, "F32"),               # error undefined
        "q81": (x, "Q8_1"),                     # encodable, but qformat has no decoder for it
    }
    p = tmp_path / "m.gguf"
    qformat.write(p, tensors)
    measured = ["q4k", "q8", "f16", "bf16", "f32", "f64src"]
    with qformat.open(p) as f:
        assert list(f.metadata) == [FIELDS_KEY] + [stats_key(n) for n in measured]
        assert list(f.tensors) == list(tensors)
    for name in ("q4k", "q8", "f16", "bf16"):
        assert np.array_equal(_record(p, name), _expected(x, tensors[name][1]), equal_nan=True), name
    rec = recorded_stats(qformat.open(p).metadata)
    assert rec["f32"]["mse"] == 0 and rec["f32"]["max_abs"] == 0 and rec["f32"]["snr_db"] == math.inf
    assert rec["f16"]["mse"] > 0 and rec["bf16"]["mse"] > rec["f16"]["mse"]
    y = (x.astype(np.float64) / 3).astype(np.float32)
    assert np.array_equal(_record(p, "f64src"), roundtrip_stats(x.astype(np.float64) / 3, y).as_record())
    assert rec["f64src"]["mse"] > 0
    assert verify(p).ok


def test_stats_false_records_nothing_and_equals_the_raw_copy(tmp_path):
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    qformat.write(a, {"w": (x, "Q8_0"), "h": (x, "F16")}, {"k": 1}, stats=False)
    with qformat.Writer(b, {"k": 1}) as w:
        w.add_raw("w", qformat.quantize(x, "Q8_0"), "Q8_0", x.shape)
        w.add_raw("h", x.astype(np.float16).view(np.uint8), "F16", x.shape)
    assert a.read_bytes() == b.read_bytes()
    with qformat.open(a) as f:
        assert list(f.metadata) == ["k"]
    c = tmp_path / "c.gguf"
    with qformat.Writer(c, {"k": 1}, stats=False) as w:
        assert w.add_tensor("w", (x, "Q8_0")) is None and w.stats == {}
        w.add_tensor("h", (x, "F16"))
    assert c.read_bytes() == a.read_bytes()


def test_given_records_and_fields_key(tmp_path):
    x = RNG.standard_normal((2, 32)).astype(np.float32)
    stale = np.full(len(FIELDS), 7.0)
    # a stale record for an encoded tensor is replaced in place; one for another tensor is kept as given
    meta = {"a": 1, stats_key("w"): stale, stats_key("old"): stale, "z": "end"}
    p = tmp_path / "p.gguf"
    qformat.write(p, {"w": (x, "Q8_0")}, meta)
    with qformat.open(p) as f:
        assert list(f.metadata) == ["a", stats_key("w"), stats_key("old"), "z", FIELDS_KEY]
        assert np.array_equal(f.metadata[stats_key("w")], _expected(x, "Q8_0"))
        assert np.array_equal(f.metadata[stats_key("old")], stale)
    # the same column list is accepted; another one would mislabel the records
    qformat.write(tmp_path / "same.gguf", {"w": (x, "Q8_0")}, {FIELDS_KEY: list(FIELDS)})
    for writer in ("write", "Writer"):
        target = tmp_path / f"x_{writer}.gguf"
        with pytest.raises(E.WriteError, match="qformat.stats.fields"):
            if writer == "write":
                qformat.write(target, {"w": (x, "Q8_0")}, {FIELDS_KEY: ["mse"]})
            else:
                with qformat.Writer(target, {FIELDS_KEY: ["mse"]}) as w:
                    w.add_tensor("w", (x, "Q8_0"))
        assert not target.exists()
    # no record written: a foreign fields key is nobody's business
    qformat.write(tmp_path / "ok.gguf", {"w": x}, {FIELDS_KEY: ["stale"]})


def test_imatrix_goes_to_the_encoder_and_the_record_measures_that_encoding(tmp_path):
    x = RNG.standard_normal((6, 256)).astype(np.float32)
    imx = RNG.uniform(0, 4, 256).astype(np.float32)
    p = tmp_path / "i.gguf"
    with qformat.Writer(p) as w:
        st = w.add_tensor("w", (x, "Q4_K"), imatrix=imx)
        with pytest.raises(E.CodecError):
            w.add_tensor("v", (x, "F32"), imatrix=imx)  # F32 takes no importance weights
        w.add_tensor("after", (x, "Q8_0"))  # the failed tensor left nothing behind in the data
    data = qformat.quantize(x, "Q4_K", imatrix=imx)
    assert not np.array_equal(data, qformat.quantize(x, "Q4_K"))  # the weights do change the encoding
    with qformat.open(p) as f:
        assert list(f.tensors) == ["w", "after"]
        assert f.raw("w").tobytes() == data.tobytes()
        assert np.array_equal(f.read("after"), qformat.dequantize(qformat.quantize(x, "Q8_0"), "Q8_0"))
    want = roundtrip_stats(x, qformat.dequantize(data, "Q4_K")).as_record()
    assert np.array_equal(st.as_record(), want) and np.array_equal(_record(p, "w"), want)
    assert verify(p, against={"w": x, "after": x}).ok


def test_encoded_stats_equals_roundtrip_stats_over_several_chunks():
    x = RNG.standard_normal((4400, 256)).astype(np.float32)  # 1 126 400 values: two decode slices, ragged
    data = qformat.quantize(x, "Q8_0")
    assert np.array_equal(encoded_stats(x, data, "Q8_0").as_record(),
                          roundtrip_stats(x, qformat.dequantize(data, "Q8_0")).as_record())
    with pytest.raises(qformat.QFormatError):
        encoded_stats(x[:-1], data, "Q8_0")


# --- write() and Writer agree byte for byte ----------------------------------------------------

TYPES = ["Q4_K", "Q8_0", "Q5_0", "Q6_K", "IQ4_NL", "F16", "BF16", "F32"]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from([256, 512]), st.sampled_from(TYPES + [None])),
                min_size=1, max_size=4),
       st.integers(0, 2**32 - 1), st.sampled_from([None, 64]))
def test_write_and_writer_give_identical_files_with_exact_records(tmp_path_factory, specs, seed, alignment):
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, (rows, cols, qt) in enumerate(specs):
        x = (rng.standard_normal((rows, cols)) * rng.uniform(1e-3, 10)).astype(np.float32)
        tensors[f"t{i}"] = x if qt is None else (x, qt)
    d = tmp_path_factory.mktemp("wr")
    qformat.write(d / "a.gguf", tensors, {"general.architecture": "x"}, alignment=alignment)
    with qformat.Writer(d / "b.gguf", {"general.architecture": "x"}, alignment=alignment) as w:
        for name, v in tensors.items():
            w.add_tensor(name, v)
    assert (d / "a.gguf").read_bytes() == (d / "b.gguf").read_bytes()
    measured = {n: v for n, v in tensors.items() if isinstance(v, tuple)}
    with qformat.open(d / "a.gguf") as f:
        rec = {n: np.asarray(v) for n, v in f.metadata.items() if n.startswith("qformat.stats.") and n != FIELDS_KEY}
        assert list(rec) == [stats_key(n) for n in measured]
        for n, (x, qt) in measured.items():
            assert np.array_equal(rec[stats_key(n)], _expected(x, qt)), (n, qt)
    assert verify(d / "a.gguf", against={n: (v[0] if isinstance(v, tuple) else v) for n, v in tensors.items()}).ok


# --- memory: the Writer keeps no tensor data once it is in the temporary file --------------------

def test_writer_drops_the_data_it_was_given(tmp_path):
    x = RNG.standard_normal((8, 256)).astype(np.float32)
    raw = qformat.quantize(x, "Q8_0")
    src = x.copy()
    refs = [weakref.ref(raw), weakref.ref(src), weakref.ref(x)]
    with qformat.Writer(tmp_path / "m.gguf") as w:
        w.add_raw("raw", raw, "Q8_0", x.shape)
        w.add_tensor("enc", (src, "Q4_K"))
        w.add_tensor("bare", x)
        del raw, src, x
        gc.collect()
        assert [r() is None for r in refs] == [True, True, True]
    with qformat.open(tmp_path / "m.gguf") as f:
        assert list(f.tensors) == ["raw", "enc", "bare"] and list(recorded_stats(f.metadata)) == ["enc"]
