"""Legacy block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q1_0: differential tests against ggml's C code."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qformat
from qformat.codecs import can_decode, dequantize, quantize
from qformat.errors import CodecError, UnsupportedType
from qformat.types import BLOCK, QType

ENCODE_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q1_0"]
DECODE_TYPES = ENCODE_TYPES


def _ggml_encode(ref, x, qt):
    if qt == "Q8_1":  # ggml_quantize_chunk does not take Q8_1; its row quantizer does
        return ref.quantize_row_ref(x, qt).reshape(*x.shape[:-1], -1)
    return ref.quantize(x, qt)


def _inputs(draw_seed: int, rows: int, nblocks: int, elems: int, scale: float, kind: str) -> np.ndarray:
    rng = np.random.default_rng(draw_seed)
    n = nblocks * elems
    if kind == "normal":
        x = rng.standard_normal((rows, n))
    elif kind == "laplace":
        x = rng.laplace(size=(rows, n))
    elif kind == "t2":
        x = rng.standard_t(2, size=(rows, n))
    elif kind == "ints":  # many exact .5 ties after scaling
        x = rng.integers(-20, 21, (rows, n)) / 2.0
    elif kind == "positive":
        x = np.abs(rng.standard_normal((rows, n))) + 3
    else:  # "edges": zero, constant, ±0, outlier-in-zeros and sign-flipped blocks in one row
        x = rng.standard_normal((rows, n))
        blk = x.reshape(rows, nblocks, elems)
        blk[:, 0] = 0.0
        if nblocks > 1:
            blk[:, 1] = -2.5
        if nblocks > 2:
            blk[:, 2] = np.where(rng.random((rows, elems)) < 0.5, -0.0, 0.0)
        if nblocks > 3:
            blk[:, 3] = 0.0
            blk[:, 3, rng.integers(0, elems)] = -9.0
    big = float(np.finfo(np.float32).max)
    return np.clip(x * scale, -big, big).astype(np.float32)  # scale 3e38 reaches the float32 limit


SCALES = [1e-39, 1e-30, 1e-8, 1.0, 6e4, 1e30, 3e38]
KINDS = ["normal", "laplace", "t2", "ints", "positive", "edges"]


@settings(max_examples=40, deadline=None)
@given(qt=st.sampled_from(ENCODE_TYPES + ["Q8_1"]), rows=st.integers(1, 3), nblocks=st.integers(1, 9),
       scale=st.sampled_from(SCALES), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1))
def test_encode_and_decode_match_ggml(ggml_ref, qt, rows, nblocks, scale, kind, seed):
    elems, nbytes = BLOCK[QType[qt]]
    x = _inputs(seed, rows, nblocks, elems, scale, kind)
    ours = quantize(x, qt)
    ref = _ggml_encode(ggml_ref, x, qt)
    assert ours.shape == (rows, nblocks * nbytes)
    bad = np.flatnonzero((ours.reshape(-1, nbytes) != ref.reshape(-1, nbytes)).any(axis=1))
    assert bad.size == 0, f"{qt}: blocks {bad.tolist()} differ"
    if can_decode(qt):
        np.testing.assert_array_equal(dequantize(ours, qt).view(np.uint32), ggml_ref.dequantize(ref, qt).view(np.uint32))


WEIGHTED_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]


@settings(max_examples=40, deadline=None)
@given(qt=st.sampled_from(WEIGHTED_TYPES), rows=st.integers(1, 4), nblocks=st.integers(1, 12),
       scale=st.sampled_from(SCALES), kind=st.sampled_from(KINDS), wkind=st.sampled_from(["dense", "sparse", "zero"]),
       seed=st.integers(0, 2**32 - 1))
def test_importance_weighted_encode_matches_ggml(ggml_ref, qt, rows, nblocks, scale, kind, wkind, seed):
    """With an imatrix: ggml's quantize_<t> (make_qx_quants / make_qkx3_quants, sigma2 over the row)."""
    x = _inputs(seed, rows, nblocks, 32, scale, kind)
    rng = np.random.default_rng(seed ^ 0x5EED)
    imatrix = (rng.random(x.shape[1]) ** 2 * 5).astype(np.float32)
    if wkind == "sparse":
        imatrix[rng.random(x.shape[1]) < 0.7] = 0
    elif wkind == "zero":
        imatrix[:] = 0
    ours = quantize(x, qt, imatrix=imatrix)
    ref = ggml_ref.quantize(x, qt, imatrix=imatrix)
    nbytes = BLOCK[QType[qt]].nbytes
    bad = np.flatnonzero((ours.reshape(-1, nbytes) != ref.reshape(-1, nbytes)).any(axis=1))
    assert bad.size == 0, f"{qt}: blocks {bad.tolist()} differ"


@pytest.mark.parametrize("qt", WEIGHTED_TYPES)
def test_importance_weighted_long_rows_cross_chunks(ggml_ref, qt):
    """Rows longer than one registry chunk and many rows: sigma2 must be taken per whole row."""
    rng = np.random.default_rng(3)
    for shape in [(3, 70016), (300, 512)]:
        x = (rng.standard_normal(shape) * rng.lognormal(0, 2, (shape[0], 1))).astype(np.float32)
        imatrix = rng.random(shape[1]).astype(np.float32)
        np.testing.assert_array_equal(quantize(x, qt, imatrix=imatrix), ggml_ref.quantize(x, qt, imatrix=imatrix))


def test_importance_weights_change_the_encoding():
    """The weighted path is really taken (an imatrix that favours some columns changes the bytes)."""
    x = np.random.default_rng(4).standard_normal((2, 256)).astype(np.float32)
    imatrix = np.where(np.arange(256) % 3 == 0, 10.0, 0.01).astype(np.float32)
    for qt in WEIGHTED_TYPES:
        assert (quantize(x, qt, imatrix=imatrix) != quantize(x, qt)).any()


@pytest.mark.parametrize("qt", ENCODE_TYPES + ["Q8_1"])
def test_large_batch_matches_ggml(ggml_ref, qt):
    """Many blocks at once, across the chunk boundary of the registry wrapper."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((70, 1024)) * np.logspace(-6, 4, 70)[:, None]).astype(np.float32)
    np.testing.assert_array_equal(quantize(x, qt), _ggml_encode(ggml_ref, x, qt))


@pytest.mark.parametrize("qt", DECODE_TYPES)
def test_random_block_bytes_decode_bit_identical(ggml_ref, qt):
    """Arbitrary bytes (fp16 NaN/inf scales, every code) decode exactly as ggml does."""
    nbytes = BLOCK[QType[qt]].nbytes
    raw = np.random.default_rng(11).integers(0, 256, (4000, nbytes), dtype=np.uint8)
    np.testing.assert_array_equal(dequantize(raw, qt).view(np.uint32), ggml_ref.dequantize(raw, qt).view(np.uint32))


# --- properties that do not need the reference ------------------------------------------------

def test_q4_0_extreme_lands_on_minus_8():
    """The signed value of largest magnitude sets d = max / -8, so a negative extreme is code 0 (exact)."""
    x = np.tile(np.arange(-8, 8, dtype=np.float32), 2)  # largest magnitude is -8 -> d = 1
    enc = quantize(x, "Q4_0")
    assert enc[:2].view("<f2")[0] == 1.0
    np.testing.assert_array_equal(dequantize(enc, "Q4_0"), x)
    y = -x  # extreme +8 -> d = -1, codes 16-x clipped: 8 and -7..7 still exact
    np.testing.assert_array_equal(dequantize(quantize(y, "Q4_0"), "Q4_0"), y)


# Q4_0/Q5_0 have no code +8 (+16): a value near minus the extreme is clipped by up to one whole step
@pytest.mark.parametrize("qt,bound", [("Q4_0", 1.0), ("Q5_0", 1.0), ("Q4_1", 0.5), ("Q5_1", 0.5), ("Q8_0", 0.5)])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_round_trip_error_within_a_step(qt, bound, seed, scale):
    """Each value comes back within half a quantization step (a whole one at the clipped end of
    Q4_0/Q5_0), plus the fp16 rounding of d and m."""
    x = (np.random.default_rng(seed).standard_normal((4, 128)) * scale).astype(np.float32)
    y = dequantize(quantize(x, qt), qt)
    enc = quantize(x, qt).reshape(-1, BLOCK[QType[qt]].nbytes)
    d = np.abs(enc[:, :2].copy().view("<f2").astype(np.float32))
    nmax = {"Q4_0": 8, "Q5_0": 16, "Q4_1": 15, "Q5_1": 31, "Q8_0": 127}[qt]
    err = np.abs(y - x).reshape(-1, 32)
    slack = np.abs(x).reshape(-1, 32).max(axis=1, keepdims=True) * 2.0**-10 * (2 + nmax / 8)  # fp16 rounding
    assert (err <= bound * d + slack + 1e-30).all()


def test_q1_0_signs_and_mean_magnitude():
    x = np.linspace(-3, 3, 128, dtype=np.float32)
    x[64] = -0.0  # -0.0 >= 0 holds in C, so it gets the positive sign
    y = dequantize(quantize(x, "Q1_0"), "Q1_0")
    d = float(np.float16(np.abs(x).astype(np.float64).sum() / 128))
    assert np.allclose(np.abs(y), d, rtol=1e-3)
    assert ((y > 0) == (x >= 0)).all()


def test_q8_1_is_encode_only_and_stores_the_code_sum():
    x = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    enc = quantize(x, "Q8_1").reshape(2, 36)
    d = enc[:, 0:2].copy().view("<f2").astype(np.float32).reshape(-1)
    s = enc[:, 2:4].copy().view("<f2").astype(np.float32).reshape(-1)
    q = enc[:, 4:].view(np.int8).astype(np.int64)
    np.testing.assert_allclose(s, q.sum(axis=1) * d, rtol=2e-3)
    assert not can_decode("Q8_1")
    with pytest.raises(UnsupportedType):
        dequantize(enc.reshape(-1), "Q8_1")


# --- input validation -----------------------------------------------------------------------

@pytest.mark.parametrize("qt", ENCODE_TYPES)
def test_bad_inputs_raise_codec_errors(qt):
    elems, nbytes = BLOCK[QType[qt]]
    with pytest.raises(CodecError, match="multiple of the block size"):
        quantize(np.zeros(elems + 1, np.float32), qt)
    bad = np.zeros(elems, np.float32)
    bad[3] = np.nan
    with pytest.raises(CodecError, match="non-finite"):
        quantize(bad, qt)
    with pytest.raises(CodecError, match="not a multiple"):
        dequantize(np.zeros(nbytes + 1, np.uint8), qt)
    with pytest.raises(CodecError, match="uint8"):
        dequantize(np.zeros(nbytes, np.int32), qt)
    with pytest.raises(CodecError):
        quantize(np.zeros(elems, np.int32), qt)


@pytest.mark.parametrize("qt", ["Q8_0", "Q1_0", "Q8_1"])
def test_types_whose_ggml_encoder_ignores_an_imatrix_reject_one(qt):
    elems = BLOCK[QType[qt]].elems
    with pytest.raises(CodecError, match="importance"):
        qformat.codecs.quantize(np.ones(elems, np.float32), qt, imatrix=np.ones(elems, np.float32))


@pytest.mark.parametrize("qt", WEIGHTED_TYPES)
def test_bad_imatrix_is_rejected(qt):
    x = np.ones((2, 64), np.float32)
    for bad in (np.ones(32, np.float32), -np.ones(64, np.float32), np.full(64, np.nan, np.float32)):
        with pytest.raises(CodecError, match="imatrix"):
            quantize(x, qt, imatrix=bad)


def test_shapes_are_kept():
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    enc = quantize(x, "Q5_1")
    assert enc.shape == (2, 3, 48) and enc.dtype == np.uint8
    assert dequantize(enc, "Q5_1").shape == (2, 3, 64)
