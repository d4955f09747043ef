"""Q3_K, Q6_K, Q8_K: differential tests against ggml's C code on fresh random inputs, field-level
round trips, and input validation. (The committed golden vectors are checked by test_codec_vectors.py.)
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qformat
from qformat.codecs import kquants_sym as ks
from qformat.errors import CodecError, QFormatError
from qformat.search.ggml import make_q3_quants, make_qx_quants, seqsum
from qformat.types import BLOCK, QType

SYM = [QType.Q3_K, QType.Q6_K, QType.Q8_K]
WEIGHTED = [QType.Q3_K, QType.Q6_K]
QK_K = 256

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: the differential tests against the C code get more examples: they are the bit-exactness proof
DIFF_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _ggml_encode(ref, x, qt, imatrix=None):
    if qt == QType.Q8_K:  # ggml_quantize_chunk has no Q8_K case; its row quantizer is the reference
        assert imatrix is None
        return ref.quantize_row_ref(x, qt).reshape(x.shape[0], -1)
    return ref.quantize(x, qt, imatrix=imatrix)


@st.composite
def float_rows(draw, max_rows=3, max_blocks=3):
    """(rows, n) float32 inputs in many shapes, scales and shapes of distribution, edge cases included."""
    rows = draw(st.integers(1, max_rows))
    nblk = draw(st.integers(1, max_blocks))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (rows, nblk * QK_K)
    kind = draw(st.sampled_from(["normal", "laplace", "uniform", "t2", "ints", "positive", "negative",
                                 "sparse", "subconst", "outlier", "mixed_scales"]))
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "laplace":
        x = rng.laplace(size=shape)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, shape)
    elif kind == "t2":
        x = rng.standard_t(2, size=shape)
    elif kind == "ints":
        x = rng.integers(-40, 40, shape)
    elif kind == "positive":
        x = np.abs(rng.standard_normal(shape))
    elif kind == "negative":
        x = -np.abs(rng.standard_normal(shape))
    elif kind == "sparse":
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.05)
    elif kind == "subconst":
        x = np.repeat(rng.standard_normal((rows, nblk * 16)), 16, axis=1)
    elif kind == "outlier":
        x = rng.standard_normal(shape) * 0.01
        x[rng.integers(0, rows), rng.integers(0, shape[1])] = draw(st.sampled_from([1e3, -1e3, 50.0, -7.0]))
    else:  # every 16-value sub-block at its own magnitude, zeros and ties included
        mags = 10.0 ** rng.uniform(-8, 4, (rows, nblk * 16))
        mags[rng.random(mags.shape) < 0.1] = 0.0
        x = rng.standard_normal(shape) * np.repeat(mags, 16, axis=1)
    scale = draw(st.sampled_from([1.0, 1e-30, 1e-20, 1e-14, 1e-6, 1e-3, 3e2, 6e4, 1e30]))
    x = (x * scale).astype(np.float32)
    if draw(st.booleans()):  # signed zeros and denormals in one sub-block
        j = rng.integers(0, shape[1] // 16)
        x[0, 16 * j:16 * j + 16] = rng.choice(np.array([0.0, -0.0, 1e-40, -3e-39, 1e-45], np.float32), 16)
    return x


@st.composite
def imatrices(draw, n):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["dense", "sparse", "wide", "wide_sparse", "tiny", "ones"]))
    if kind == "dense":
        w = rng.random(n) ** 2 * 4 + 0.01
    elif kind == "sparse":
        w = np.where(rng.random(n) < 0.3, 0.0, rng.random(n) * 10)
    elif kind == "wide":
        w = 10.0 ** rng.uniform(-10, 10, n)
    elif kind == "wide_sparse":  # 0 * inf weights once x*x overflows: NaN sub-block scales
        w = 10.0 ** rng.uniform(-12, 6, n) * (rng.random(n) < 0.8)
    elif kind == "tiny":  # products with x underflow: exercises signed-zero sums
        w = 10.0 ** rng.uniform(-45, -38, n)
    else:
        w = np.ones(n)
    return w.astype(np.float32)


# --- differential tests against the C reference -------------------------------------------------

@pytest.mark.parametrize("qt", SYM, ids=lambda q: q.name)
@DIFF_SETTINGS
@given(x=float_rows())
def test_encode_matches_ggml(ggml_ref, qt, x):
    got = qformat.quantize(x, qt)
    want = _ggml_encode(ggml_ref, x, qt)
    assert got.dtype == np.uint8 and got.shape == want.shape
    bad = np.flatnonzero((got.reshape(-1, BLOCK[qt].nbytes) != want.reshape(-1, BLOCK[qt].nbytes)).any(axis=1))
    assert bad.size == 0, f"{qt.name}: blocks {bad.tolist()} differ from ggml"


@pytest.mark.parametrize("qt", WEIGHTED, ids=lambda q: q.name)
@DIFF_SETTINGS
@given(data=st.data())
def test_weighted_encode_matches_ggml(ggml_ref, qt, data):
    x = data.draw(float_rows())
    imatrix = data.draw(imatrices(x.shape[1]))
    got = qformat.quantize(x, qt, imatrix=imatrix)
    want = ggml_ref.quantize(x, qt, imatrix=imatrix)
    bad = np.flatnonzero((got.reshape(-1, BLOCK[qt].nbytes) != want.reshape(-1, BLOCK[qt].nbytes)).any(axis=1))
    assert bad.size == 0, f"{qt.name} with imatrix: blocks {bad.tolist()} differ from ggml"


@pytest.mark.parametrize("qt", SYM, ids=lambda q: q.name)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 40))
def test_decode_random_bytes_matches_ggml(ggml_ref, qt, seed, nblocks):
    """Every byte pattern decodes, bit for bit as ggml (inf/nan scales included)."""
    raw = np.random.default_rng(seed).integers(0, 256, (nblocks, BLOCK[qt].nbytes), dtype=np.uint8)
    got = qformat.dequantize(raw, qt)
    want = ggml_ref.dequantize(raw, qt)
    assert not (_bits(got) != _bits(want)).any()


@pytest.mark.parametrize("qt", SYM, ids=lambda q: q.name)
def test_large_input_matches_ggml_both_ways(ggml_ref, qt):
    """A multi-chunk tensor (more than the registry's 65536-value chunk) round trips exactly as in C."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((96, 1024)) * rng.uniform(0.01, 10, (96, 1))).astype(np.float32)
    enc = qformat.quantize(x, qt)
    assert np.array_equal(enc, _ggml_encode(ggml_ref, x, qt))
    assert np.array_equal(_bits(qformat.dequantize(enc, qt)), _bits(ggml_ref.dequantize(enc, qt)))


@pytest.mark.parametrize("qt", WEIGHTED, ids=lambda q: q.name)
def test_large_weighted_input_matches_ggml(ggml_ref, qt):
    rng = np.random.default_rng(8)
    x = rng.laplace(size=(80, 1024)).astype(np.float32)
    imatrix = (rng.random(1024) ** 3 * 5).astype(np.float32)
    assert np.array_equal(qformat.quantize(x, qt, imatrix=imatrix), ggml_ref.quantize(x, qt, imatrix=imatrix))


@pytest.mark.parametrize("qt", SYM, ids=lambda q: q.name)
@pytest.mark.parametrize("scale", [1e17, 1e19, 1e25, 1e37])
def test_overflowing_squares_match_ggml(ggml_ref, qt, scale):
    """x*x overflows to inf: weights, sums and scales become inf/NaN, and ggml's comparisons (which a
    NaN always fails) and its rounding trick decide the bytes; with and without importance weights."""
    rng = np.random.default_rng(int(np.log10(scale)))
    x = np.clip(rng.standard_normal((3, 768)) * scale, -3e38, 3e38).astype(np.float32)
    x[1, :256] = np.float32(3e38) * np.sign(rng.standard_normal(256))  # a block of near-max values
    assert np.array_equal(qformat.quantize(x, qt), _ggml_encode(ggml_ref, x, qt))
    if qt in WEIGHTED:
        im = (10.0 ** rng.uniform(-12, 6, 768) * (rng.random(768) < 0.8)).astype(np.float32)
        assert np.array_equal(qformat.quantize(x, qt, imatrix=im), ggml_ref.quantize(x, qt, imatrix=im))


# --- the searches on their own ---------------------------------------------------------------------

def test_sequential_sum_is_c_order_and_positive_zero_start():
    # float32 sums are order dependent: 1e8 + 1 - 1e8 loses the 1 left to right, keeps it pairwise
    t = np.array([[1e8], [1.0], [-1e8], [1.0]], dtype=np.float32)
    assert seqsum(t)[0] == np.float32(1.0)
    # C's `float s = 0; s += -0.0f; ...` is +0.0 (a sum started from its first term would be -0.0)
    for cols in (1, 5):
        assert not np.signbit(seqsum(np.full((4, cols), -0.0, dtype=np.float32))).any()


@pytest.mark.parametrize("cols", [1, 2, 3, 17, 4096])
def test_sequential_sum_fast_path_is_left_to_right(cols):
    """The np.add.reduce fast path must add row after row, exactly like the explicit C loop."""
    rng = np.random.default_rng(cols)
    t = (rng.standard_normal((16, cols)) * 10.0 ** rng.integers(-8, 9, (16, cols))).astype(np.float32)
    acc = np.zeros(cols, dtype=np.float32)
    for row in t:
        acc = acc + row
    assert np.array_equal(seqsum(t).view(np.uint32), acc.view(np.uint32))


def test_make_qx_quants_zero_group_and_levels_range():
    x = np.zeros((16, 3), dtype=np.float32)
    x[:, 1] = 1e-16  # below GROUP_MAX_EPS: treated as zero
    x[:, 2] = np.linspace(-1, 2, 16)
    scale, levels = make_qx_quants(x, 32)
    assert scale[0] == 0 and scale[1] == 0 and (levels[:, :2] == 0).all()
    assert levels[:, 2].min() >= 0 and levels[:, 2].max() <= 63
    # the largest magnitude (2.0, positive) maps to the -nmax end: level 0, scale negative
    assert levels[-1, 2] == 0 and scale[2] < 0
    s3, l3 = make_q3_quants(x, 4)
    assert s3[0] == 0 and (l3[:, 0] == 0).all() and l3[:, 2].max() <= 7


# --- field-level round trips -------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 20))
def test_q3_k_unpack_pack_is_identity(seed, nblocks):
    raw = np.random.default_rng(seed).integers(0, 256, (nblocks, 110), dtype=np.uint8)
    assert np.array_equal(ks.q3_k_pack(*ks.q3_k_unpack(raw)), raw)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 20))
def test_q6_k_unpack_pack_is_identity(seed, nblocks):
    raw = np.random.default_rng(seed).integers(0, 256, (nblocks, 210), dtype=np.uint8)
    assert np.array_equal(ks.q6_k_pack(*ks.q6_k_unpack(raw)), raw)


def test_q3_k_layout_by_hand():
    """One block built field by field from the documented layout (spec/codecs/q3_k.md)."""
    blk = np.zeros((1, 110), dtype=np.uint8)
    blk[0, 108:110] = np.array([0x3C00], dtype="<u2").view(np.uint8)  # d = 1.0
    # sub-block 9's scale code 0b10_0101 = 37 (-> +5): low nibble in byte 1's high half, high bits
    # in byte 8 + 9 % 4 = 9 at bit 2 * (9 // 4) = 4
    blk[0, 96 + 1] = 0x5 << 4
    blk[0, 96 + 9] = 0b10 << 4
    # element 150 = 128 + 22 (sub-block 9): high bit in hmask[150 % 32 = 22] bit 150 // 32 = 4;
    # low bits in qs[32 * 1 + 22] (qs starts at byte 32) at bit 2 * ((150 % 128) // 32) = 0
    blk[0, 22] = 1 << 4
    blk[0, 32 + 32 + 22] = 0b11
    y = qformat.dequantize(blk, "Q3_K")[0]
    assert y[150] == 5.0 * 3  # level 0b111 = 7 -> code +3
    # every other element of sub-block 9 has level 0 -> code -4; other sub-blocks have code -32 scales
    assert y[144] == 5.0 * -4 and y[0] == -32.0 * -4


def test_q6_k_layout_by_hand():
    blk = np.zeros((1, 210), dtype=np.uint8)
    blk[0, 208:210] = np.array([0x3800], dtype="<u2").view(np.uint8)  # d = 0.5
    blk[0, 192 + 13] = np.array([-3], dtype=np.int8).view(np.uint8)[0]  # sub-block 13 scale -3
    # element 213 = 128 + 32*2 + 21: low nibble = HIGH half of ql[64 + 21], high bits qh[32 + 21] bits 4-5
    blk[0, 64 + 21] = 0xA << 4
    blk[0, 128 + 32 + 21] = 0b11 << 4
    y = qformat.dequantize(blk, "Q6_K")[0]
    assert y[213] == (0.5 * -3) * (0x3A - 32)
    assert y[208] == (0.5 * -3) * -32 and y[0] == 0.0


def test_q8_k_layout_and_bsums():
    x = np.zeros((1, 256), dtype=np.float32)
    x[0, :16] = np.arange(16)
    x[0, 100] = -127.0
    enc = qformat.quantize(x, "Q8_K")[0]
    assert enc[:4].view("<f4")[0] == np.float32(1.0)  # d = max / -127 with max = -127
    q = enc[4:260].view(np.int8)
    assert np.array_equal(q[:16], np.arange(16)) and q[100] == -127
    bsums = enc[260:292].view("<i2")  # sums of each run of 16 codes
    assert bsums[0] == 120 and bsums[100 // 16] == -127 and bsums[15] == 0
    assert np.array_equal(qformat.dequantize(enc, "Q8_K"), x[0])


# --- properties of the encoders -------------------------------------------------------------------

@pytest.mark.parametrize("qt", SYM, ids=lambda q: q.name)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(-2, 3))
def test_power_of_two_scaling_commutes(qt, seed, k):
    """Multiplying the input by 2**k multiplies the decoded output by exactly 2**k (all float32
    steps scale exactly while the fp16 super-scale stays normal)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 512)) * rng.uniform(10, 1000)).astype(np.float32)
    f = np.float32(2.0**k)
    y = qformat.dequantize(qformat.quantize(x, qt), qt)
    yk = qformat.dequantize(qformat.quantize(x * f, qt), qt)
    assert np.array_equal(_bits(yk), _bits(y * f))


@SETTINGS
@given(x=float_rows())
def test_q8_k_error_within_half_step(x):
    enc = qformat.quantize(x, "Q8_K").reshape(-1, 292)
    y = qformat.dequantize(enc, "Q8_K").reshape(-1, 256)
    d = np.abs(enc[:, :4].copy().view("<f4").astype(np.float64))
    err = np.abs(x.reshape(-1, 256).astype(np.float64) - y)
    # amax/127 can overflow the float32 iscale for denormal-only blocks; those collapse to zero codes
    finite = np.isfinite(d[:, 0]) & (d[:, 0] > 0) & (np.abs(x.reshape(-1, 256)).max(axis=1) > 1e-36)
    assert (err[finite] <= d[finite] * 0.5 * (1 + 1e-5) + 1e-38).all()


# --- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("qt", SYM, ids=lambda q: q.name)
def test_rejects_bad_input(qt):
    with pytest.raises(CodecError):
        qformat.quantize(np.zeros(100, np.float32), qt)  # not a multiple of 256
    with pytest.raises(CodecError):
        qformat.quantize(np.full(256, np.nan, np.float32), qt)
    with pytest.raises(CodecError):
        qformat.quantize(np.array([np.inf] + [0.0] * 255, np.float32), qt)
    with pytest.raises(CodecError):
        qformat.dequantize(np.zeros(BLOCK[qt].nbytes + 1, np.uint8), qt)
    with pytest.raises(QFormatError):
        qformat.dequantize(np.zeros(BLOCK[qt].nbytes, np.int16), qt)


def test_imatrix_rules():
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(CodecError):
        qformat.quantize(x, "Q8_K", imatrix=np.ones(256, np.float32))  # Q8_K's encoder takes none
    with pytest.raises(CodecError):
        qformat.quantize(x, "Q6_K", imatrix=np.ones(128, np.float32))
    with pytest.raises(CodecError):
        qformat.quantize(x, "Q3_K", imatrix=-np.ones(256, np.float32))


@pytest.mark.parametrize("qt", SYM, ids=lambda q: q.name)
def test_empty_and_batched_shapes(qt):
    nbytes = BLOCK[qt].nbytes
    assert qformat.quantize(np.zeros((0, 256), np.float32), qt).shape == (0, nbytes)
    x = np.random.default_rng(1).standard_normal((2, 3, 512)).astype(np.float32)
    enc = qformat.quantize(x, qt)
    assert enc.shape == (2, 3, 2 * nbytes)
    assert np.array_equal(enc.reshape(6, -1), qformat.quantize(x.reshape(6, 512), qt))
    assert qformat.dequantize(enc, qt).shape == x.shape
