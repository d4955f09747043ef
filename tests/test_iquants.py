"""IQ4_NL / IQ4_XS against ggml's C code: encode byte-identical (with and without an imatrix),
decode bit-identical; plus the level search and the 6-bit scale packing on their own.

``float_rows`` (also used by tests/test_fp4.py and tests/test_ternary.py) draws rows of whole blocks
from many shapes, distributions and magnitudes (2^-140 .. 2^100, so subnormals and float32 overflow
inside the encoders are reached), with ties, signed zeros and outliers planted.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qformat
from qformat.codecs import iquants
from qformat.errors import CodecError
from qformat.types import BLOCK, QType

KINDS = ("normal", "laplace", "uniform", "ints", "sparse", "constant", "outlier", "full_range")


@st.composite
def float_rows(draw, block: int, max_blocks: int = 4):
    """float32 (rows, k*block) arrays; see the module docstring."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "full_range":  # any finite float32, element by element (kept small: hypothesis is slow here)
        return draw(hnp.arrays(np.float32, (1, block),
                               elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
    rows, nblk = draw(st.integers(1, 3)), draw(st.integers(1, max_blocks))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = np.float32(2.0 ** draw(st.integers(-140, 100)))
    shape = (rows, nblk * block)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "laplace":
        x = rng.laplace(size=shape)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, shape)
    elif kind == "ints":  # many exact ties between neighbouring levels
        x = rng.integers(-16, 17, shape).astype(np.float64)
    elif kind == "sparse":
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.05)
    elif kind == "constant":
        x = np.repeat(rng.standard_normal((rows, nblk)), block, axis=1)
    else:  # outlier in noise
        x = rng.standard_normal(shape) * 1e-3
        x[:, rng.integers(0, shape[1])] = rng.choice([-1.0, 1.0]) * 50
    with np.errstate(over="ignore", under="ignore"):
        x = (x.astype(np.float32) * scale).astype(np.float32)
    x[~np.isfinite(x)] = np.float32(3e38)
    if draw(st.booleans()):  # plant signed zeros
        x[rng.random(shape) < 0.1] = -0.0
    return x


@st.composite
def imatrix_for(draw, n: int):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = (rng.random(n) ** 3 * 10 ** draw(st.integers(-3, 3))).astype(np.float32)
    w[rng.random(n) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = 0.0
    return w


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def assert_random_bytes_decode_like_ggml(ggml_ref, qt: QType, seed: int, nblocks: int) -> None:
    """Any bytes are a valid block of these types: decode random ones and compare bit for bit."""
    raw = np.random.default_rng(seed).integers(0, 256, (nblocks, BLOCK[qt].nbytes), dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        want = ggml_ref.dequantize(raw, qt)
    assert same_bits(qformat.dequantize(raw, qt), want)


# --- differential against ggml ---------------------------------------------------------------

@pytest.mark.parametrize("qt", [QType.IQ4_NL, QType.IQ4_XS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encode_matches_ggml(ggml_ref, qt, data):
    x = data.draw(float_rows(BLOCK[qt].elems, 4 if qt == QType.IQ4_XS else 16))
    with np.errstate(all="ignore"):
        want = ggml_ref.quantize(x, qt)
    assert np.array_equal(qformat.quantize(x, qt), want)


@pytest.mark.parametrize("qt", [QType.IQ4_NL, QType.IQ4_XS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encode_with_imatrix_matches_ggml(ggml_ref, qt, data):
    x = data.draw(float_rows(BLOCK[qt].elems, 4 if qt == QType.IQ4_XS else 16))
    w = data.draw(imatrix_for(x.shape[1]))
    got = qformat.quantize(x, qt, imatrix=w)
    assert np.array_equal(got, ggml_ref.quantize(x, qt, imatrix=w))


@pytest.mark.parametrize("qt", [QType.IQ4_NL, QType.IQ4_XS])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 64))
def test_decode_random_bytes_matches_ggml(ggml_ref, qt, seed, nblocks):
    assert_random_bytes_decode_like_ggml(ggml_ref, qt, seed, nblocks)


def test_imatrix_changes_the_encoding(ggml_ref):
    """Guards the test above against an encoder that ignores the weights and a ggml that agrees."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    w = (rng.random(512) ** 4).astype(np.float32)
    for qt in (QType.IQ4_NL, QType.IQ4_XS):
        weighted = qformat.quantize(x, qt, imatrix=w)
        assert not np.array_equal(weighted, qformat.quantize(x, qt))
        assert np.array_equal(weighted, ggml_ref.quantize(x, qt, imatrix=w))


# --- pieces on their own ------------------------------------------------------------------------

def _nearest_level_by_scan(v: float) -> int:
    """ggml's best_index_int8 rule spelled out one value at a time (binary search, ties go up)."""
    lv = [float(a) for a in iquants.KVALUES_IQ4NL]
    if v <= lv[0]:
        return 0
    if v >= lv[-1]:
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if v < lv[mid]:
            hi = mid
        else:
            lo = mid
    a, b = np.float32(v) - np.float32(lv[hi - 1]), np.float32(lv[hi]) - np.float32(v)
    return hi - 1 if a < b else hi


@settings(max_examples=200, deadline=None)
@given(st.floats(-200, 200, width=32) | st.sampled_from([-10.0, 1.0, -4.5, 7.0, 19.0, 0.0, -0.0]))
def test_nearest_level_matches_scalar_rule(v):
    got = int(iquants.nearest_level(np.array([v], np.float32))[0])
    assert got == _nearest_level_by_scan(v)


def test_fast_nearest_level_equals_the_rule_around_every_edge():
    """The bucket tables against ggml's rule on the 4001 float32 values centred on every threshold,
    every level and every unit-interval edge, plus specials (a full sweep of all 2.25e9 float32 in
    [-130, 130] was run once while writing it: no difference)."""
    centres = np.concatenate([iquants._THRESHOLDS, iquants.KVALUES_IQ4NL.astype(np.float32),
                              np.arange(-129, 130, dtype=np.float32)])
    keys = np.array([iquants._f32_key(c) for c in centres], np.int64)
    steps = (keys[:, None] + np.arange(-2000, 2001)[None]).reshape(-1)
    bits = np.where(steps >= 0, steps, (-steps) | 0x80000000).astype(np.uint32)
    v = np.concatenate([bits.view(np.float32),
                        np.array([np.nan, -np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0, 1e-45], np.float32)])
    np.testing.assert_array_equal(iquants.nearest_level(v), iquants.nearest_level_by_rule(v))


def test_nearest_level_midpoints_go_up():
    lv = iquants.KVALUES_IQ4NL.astype(np.float32)
    mids = (lv[:-1] + lv[1:]) / np.float32(2)
    exact = mids == np.floor(mids) + np.float32(0.5)  # odd gaps: a true midpoint exists
    idx = iquants.nearest_level(mids)
    np.testing.assert_array_equal(idx[exact], np.arange(1, 16)[exact])
    assert int(iquants.nearest_level(np.array([np.nan], np.float32))[0]) == 15


def test_nearest_int_is_round_half_even_in_range():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 31.5, -32.5, 3.4999998, 1e6 + 0.5], np.float32)
    np.testing.assert_array_equal(iquants.nearest_int(v), np.rint(v.astype(np.float64)).astype(np.int32))


def test_iq4xs_largest_subblock_gets_code_minus_32():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 256)).astype(np.float32) * rng.uniform(0.1, 10, (64, 8)).repeat(32, 1).astype(np.float32)
    blocks = qformat.quantize(x, QType.IQ4_XS)
    codes = iquants.iq4xs_subblock_codes(blocks)
    assert codes.min() >= 0 and codes.max() <= 63
    # the sub-block with the largest scale gets code -32 (stored 0) by construction of d = -max/32
    assert (codes == 0).any(axis=1).all()


# --- quality and properties -------------------------------------------------------------------

@pytest.mark.parametrize("qt", [QType.IQ4_NL, QType.IQ4_XS])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), log2s=st.integers(-2, 12))
def test_round_trip_error_is_small_and_scale_free(qt, seed, log2s):
    x = np.random.default_rng(seed).standard_normal((4, 512)).astype(np.float32)
    y = qformat.dequantize(qformat.quantize(x, qt), qt)
    rel = np.sqrt(np.mean((x - y) ** 2) / np.mean(x**2))
    assert rel < 0.12  # 4-bit non-linear levels on Gaussian data: ~0.09 measured by ggml itself
    # a power-of-two scale changes no decision, only exponents, while the fp16 scales stay normal
    s = np.float32(2.0**log2s)
    ys = qformat.dequantize(qformat.quantize(x * s, qt), qt)
    np.testing.assert_array_equal(ys, y * s)


def test_zero_blocks_decode_to_zero():
    for qt in (QType.IQ4_NL, QType.IQ4_XS):
        x = np.zeros((2, 512), np.float32)
        x[1, 17] = 1e-16  # below ggml's 1e-15 threshold: still a zero block
        assert not qformat.dequantize(qformat.quantize(x, qt), qt).any()


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("qt", [QType.IQ4_NL, QType.IQ4_XS])
def test_bad_input_raises_codec_error(qt):
    n = BLOCK[qt].elems
    x = np.ones((2, 2 * n), np.float32)
    with pytest.raises(CodecError):
        qformat.quantize(x[:, :-1], qt)  # not whole blocks
    bad = x.copy()
    bad[1, 3] = np.nan
    with pytest.raises(CodecError, match="non-finite"):
        qformat.quantize(bad, qt)
    with pytest.raises(CodecError, match="imatrix"):
        qformat.quantize(x, qt, imatrix=np.ones(n, np.float32))  # wrong length
    with pytest.raises(CodecError, match="imatrix"):
        qformat.quantize(x, qt, imatrix=-np.ones(2 * n, np.float32))
    with pytest.raises(CodecError):
        qformat.dequantize(np.zeros((1, BLOCK[qt].nbytes + 1), np.uint8), qt)
    with pytest.raises(CodecError):
        qformat.dequantize(np.zeros((1, BLOCK[qt].nbytes), np.int16), qt)


# --- decode-only lattice types ------------------------------------------------------------------

LATTICE = [QType.IQ2_XXS, QType.IQ2_XS, QType.IQ2_S, QType.IQ3_XXS, QType.IQ3_S, QType.IQ1_S, QType.IQ1_M]


def _with_unit_scale(raw: np.ndarray, qt: QType) -> np.ndarray:
    """Random blocks whose fp16 super-scale is 1.0, so that every value is finite and checked."""
    raw = raw.copy()
    if qt == QType.IQ1_M:  # the fp16 is spread over the top nibbles of the 4 scale words at 48..55
        for k, nib in enumerate((0x0, 0x0, 0xC, 0x3)):  # 0x3C00, least significant nibble first
            raw[:, 49 + 2 * k] = (raw[:, 49 + 2 * k] & 0x0F) | (nib << 4)
    else:
        raw[:, 0:2] = [0x00, 0x3C]
    return raw


@pytest.mark.parametrize("qt", LATTICE)
def test_lattice_grids_match_ggml_entry_by_entry(ggml_ref, qt):
    """4096 random blocks with scale 1: each makes at least 32 grid look-ups, so every entry of the
    largest grid (IQ1's 2048) is hit about 64 times; decoded values are compared bit for bit, which
    checks qformat/codecs/iq_grids.npz, the index bit-fields and the scale formulas together."""
    raw = _with_unit_scale(np.random.default_rng(int(qt)).integers(0, 256, (4096, BLOCK[qt].nbytes), np.uint8), qt)
    got = qformat.dequantize(raw, qt)
    assert np.isfinite(got).all()
    assert same_bits(got, ggml_ref.dequantize(raw, qt))


@pytest.mark.parametrize("qt", LATTICE)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 64))
def test_lattice_random_bytes_match_ggml(ggml_ref, qt, seed, nblocks):
    assert_random_bytes_decode_like_ggml(ggml_ref, qt, seed, nblocks)


@pytest.mark.parametrize("qt", LATTICE[:5])
def test_lattice_signs_flip_nan_like_ggml(ggml_ref, qt):
    """With a NaN scale, ggml's sign step flips the NaN's sign bit (it is compiled as a negation)."""
    raw = np.random.default_rng(9).integers(0, 256, (32, BLOCK[qt].nbytes), np.uint8)
    raw[:16, 0:2] = [0x6C, 0xFC]  # -sNaN
    raw[16:, 0:2] = [0x00, 0x7E]  # +qNaN
    got = qformat.dequantize(raw, qt)
    assert np.isnan(got).all() and (np.signbit(got)).any() and (~np.signbit(got)).any()
    assert same_bits(got, ggml_ref.dequantize(raw, qt))


def test_ksigns_rule():
    s = iquants._ksigns(np.arange(128, dtype=np.uint8))
    assert np.array_equal(s & 127, np.arange(128))
    assert all(bin(int(v)).count("1") % 2 == 0 for v in s)  # an even number of minus signs


def test_grid_tables_have_ggml_shapes_and_values():
    shapes = {"iq2xxs_grid": (256, 8), "iq2xs_grid": (512, 8), "iq2s_grid": (1024, 8), "iq3xxs_grid": (256, 4),
              "iq3s_grid": (512, 4), "iq1s_grid": (2048, 8)}
    for name, shape in shapes.items():
        g = iquants.grid(name)
        assert g.shape == shape and g.dtype == np.float32
        assert len(np.unique(g, axis=0)) == shape[0]  # distinct lattice points
    assert set(np.unique(iquants.grid("iq2xxs_grid"))) == {8.0, 25.0, 43.0}
    assert set(np.unique(iquants.grid("iq1s_grid"))) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("qt", LATTICE)
def test_lattice_types_are_decode_only(qt):
    assert qformat.can_decode(qt) and not qformat.can_encode(qt)
    with pytest.raises(qformat.UnsupportedType):
        qformat.quantize(np.zeros((1, 256), np.float32), qt)
    with pytest.raises(CodecError):
        qformat.dequantize(np.zeros((2, BLOCK[qt].nbytes - 1), np.uint8), qt)
