"""Round-trip statistics, their record in GGUF metadata, and qformat.verify."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qformat
from qformat.convert import encode_file
from qformat.stats import FIELDS, FIELDS_KEY, recorded_stats, roundtrip_stats, stats_key, verify


def _naive(x, y):
    """The definitions written out directly (float64, no chunking) as the independent reference."""
    x = np.asarray(x, dtype=np.float64).ravel()
    e = np.asarray(y, dtype=np.float64).ravel() - x
    sx, se = float(np.sum(x * x)), float(np.sum(e * e))
    mse = se / x.size
    return dict(mse=mse, rmse=math.sqrt(mse), max_abs=float(np.max(np.abs(e))),
                snr_db=10 * math.log10(sx / se) if se else math.inf, nmse=(mse / (sx / x.size)) if se else 0.0)


finite32 = st.floats(-1e6, 1e6, width=32, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 3000), elements=finite32),
       hnp.arrays(np.float32, 1, elements=st.floats(-10, 10, width=32)))
def test_stats_match_the_definitions(x, shift):
    y = (x + shift[0]).astype(np.float32)
    if not np.any(x) or np.array_equal(x, y):
        return  # degenerate signal: covered by the exact/zero-signal tests below
    got = roundtrip_stats(x, y)
    want = _naive(x, y)
    for k, v in want.items():
        assert math.isclose(getattr(got, k), v, rel_tol=1e-9, abs_tol=1e-300), k


def test_chunked_accumulation_equals_one_pass():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1_000_003).astype(np.float32)  # several chunks, ragged end
    y = x + rng.standard_normal(x.size).astype(np.float32) * 1e-2
    got, want = roundtrip_stats(x, y), _naive(x, y)
    for k, v in want.items():
        assert math.isclose(getattr(got, k), v, rel_tol=1e-9), k


def test_exact_round_trip_is_infinite_snr():
    x = np.linspace(-3, 3, 97, dtype=np.float32)
    s = roundtrip_stats(x, x.copy())
    assert (s.mse, s.max_abs, s.nmse) == (0.0, 0.0, 0.0) and s.snr_db == math.inf


def test_zero_signal_with_error():
    s = roundtrip_stats(np.zeros(8, np.float32), np.full(8, 0.5, np.float32))
    assert s.mse == 0.25 and s.snr_db == -math.inf and s.nmse == math.inf


def test_shape_mismatch_raises():
    with pytest.raises(qformat.QFormatError):
        roundtrip_stats(np.zeros(4), np.zeros(5))


def test_stats_of_a_real_codec_error():
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    y = qformat.dequantize(qformat.quantize(x, "Q4_K"), "Q4_K")
    s = roundtrip_stats(x, y)
    assert 0 < s.nmse < 0.05 and math.isclose(s.snr_db, -10 * math.log10(s.nmse), rel_tol=1e-12)


# --- the record in the file, and verify ------------------------------------------------------------

@pytest.fixture
def encoded(tmp_path):
    rng = np.random.default_rng(3)
    src = {"blk.0.w": rng.standard_normal((16, 512)).astype(np.float32),
           "blk.0.v": rng.standard_normal((8, 96)).astype(np.float32),   # 96: falls back from Q4_K
           "norm": rng.standard_normal(96).astype(np.float32)}
    path = tmp_path / "src.npz"
    np.savez(path, **src)
    out = tmp_path / "out.gguf"
    encode_file(path, out, "Q4_K")
    return path, out, src


def test_recorded_stats_equal_an_independent_recomputation(encoded):
    path, out, src = encoded
    with qformat.open(out) as f:
        assert list(f.metadata[FIELDS_KEY]) == list(FIELDS)
        assert f.typed_metadata()[stats_key("blk.0.w")].elem_type.name == "FLOAT64"
        rec = recorded_stats(f.metadata)
        assert set(rec) == set(src)
        for name, x in src.items():
            want = _naive(x, f.read(name))
            for k in ("mse", "max_abs", "snr_db", "nmse"):
                assert math.isclose(rec[name][k], want[k], rel_tol=1e-9, abs_tol=1e-300), (name, k)
            assert math.isclose(rec[name]["source_mean_sq"], float(np.mean(x.astype(np.float64) ** 2)), rel_tol=1e-9)


def test_verify_passes_with_and_without_source(encoded):
    path, out, src = encoded
    for against in (None, path, src):
        rep = verify(out, against=against)
        assert rep.ok and [t.status for t in rep.tensors] == ["pass"] * 3, rep.as_dict()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.sampled_from([32, 64, 256, 288, 512])), min_size=1, max_size=4),
       st.sampled_from(["Q4_K", "Q8_0", "Q5_K_M", "F16", "Q4_0"]), st.integers(0, 2**32 - 1))
def test_encode_then_verify_round_trip(tmp_path_factory, shapes, target, seed):
    rng = np.random.default_rng(seed)
    src = {f"blk.{i}.w": (rng.standard_normal(s) * rng.uniform(1e-3, 10)).astype(np.float32)
           for i, s in enumerate(shapes)}
    d = tmp_path_factory.mktemp("rt")
    np.savez(d / "s.npz", **src)
    res = encode_file(d / "s.npz", d / "o.gguf", target)
    assert verify(d / "o.gguf", against=d / "s.npz").ok and verify(d / "o.gguf").ok
    with qformat.open(d / "o.gguf") as f:
        rec = recorded_stats(f.metadata)
        for t in res.tensors:
            assert f.tensors[t.name].qtype == t.qtype and f.read(t.name).shape == src[t.name].shape
            assert math.isclose(rec[t.name]["mse"], _naive(src[t.name], f.read(t.name))["mse"],
                                rel_tol=1e-9, abs_tol=1e-300)


def _corrupt_tensor(out, dst, name, how):
    shutil.copy(out, dst)
    with qformat.open(dst) as f:
        t = f.tensors[name]
    with open(dst, "r+b") as fh:
        fh.seek(t.offset)
        data = bytearray(fh.read(t.nbytes))
        how(data)
        fh.seek(t.offset)
        fh.write(bytes(data))


def test_verify_fails_when_data_no_longer_reproduces_the_record(encoded, tmp_path):
    path, out, src = encoded
    bad = tmp_path / "bad.gguf"

    def nudge(d):  # change one quant nibble in the middle of the tensor
        d[len(d) // 2] ^= 0x11
    _corrupt_tensor(out, bad, "blk.0.w", nudge)
    rep = verify(bad, against=path)
    assert not rep.ok and [t.name for t in rep.failures] == ["blk.0.w"]
    assert any("recorded" in p for p in rep.failures[0].problems)


def test_verify_without_source_catches_a_zeroed_tensor(encoded, tmp_path):
    path, out, src = encoded
    bad = tmp_path / "zero.gguf"

    def zero(d):
        d[:] = bytes(len(d))
    _corrupt_tensor(out, bad, "blk.0.v", zero)
    rep = verify(bad)
    assert not rep.ok and [t.name for t in rep.failures] == ["blk.0.v"]


def test_verify_max_nmse_bound(encoded):
    path, out, src = encoded
    rep = verify(out, against=path, max_nmse=1e-12)
    # the F32 norm is exact and passes; the quantized tensors exceed the bound
    assert {t.name for t in rep.failures} == {"blk.0.w", "blk.0.v"}
    assert verify(out, max_nmse=1e-12).failures and verify(out, max_nmse=1.0).ok


def test_verify_reports_missing_source_tensor(encoded):
    path, out, src = encoded
    partial = {k: v for k, v in src.items() if k != "norm"}
    rep = verify(out, against=partial)
    assert [t.name for t in rep.failures] == ["norm"]


def test_verify_detects_tampered_record(encoded, tmp_path):
    path, out, src = encoded
    bad = tmp_path / "rec.gguf"
    shutil.copy(out, bad)
    with qformat.open(bad) as f:
        fld = f.field(stats_key("blk.0.w"))
        mse = float(f.metadata[stats_key("blk.0.w")][0])
    with open(bad, "r+b") as fh:  # the first float64 of the record is the mse
        fh.seek(fld.offset + fld.nbytes - 8 * len(FIELDS))
        fh.write(np.float64(mse * 1.5).tobytes())
    assert not verify(bad, against=path).ok
    assert not verify(bad).ok  # nmse no longer equals mse / source_mean_sq
