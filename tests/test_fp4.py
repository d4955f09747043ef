"""MXFP4 / NVFP4 against ggml's C code (encode byte-identical, decode bit-identical), the exponent and
UE4M3 scale rules swept exhaustively where they have edges, and round-trip properties."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qformat
from qformat.codecs import fp4
from qformat.errors import CodecError
from qformat.types import BLOCK, QType

from .test_iquants import assert_random_bytes_decode_like_ggml, float_rows, same_bits

TYPES = [QType.MXFP4, QType.NVFP4]


@pytest.mark.parametrize("qt", TYPES)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_encode_matches_ggml(ggml_ref, qt, data):
    x = data.draw(float_rows(BLOCK[qt].elems, 8))
    assert np.array_equal(qformat.quantize(x, qt), ggml_ref.quantize(x, qt))


@pytest.mark.parametrize("qt", TYPES)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 64))
def test_decode_random_bytes_matches_ggml(ggml_ref, qt, seed, nblocks):
    assert_random_bytes_decode_like_ggml(ggml_ref, qt, seed, nblocks)


def test_every_scale_byte_decodes_like_ggml(ggml_ref):
    """All 256 exponent / UE4M3 bytes with every code: the whole decode table."""
    codes = np.arange(256, dtype=np.uint8)
    mx = np.zeros((256 * 16, 17), np.uint8)
    mx[:, 0] = np.repeat(codes, 16)
    mx[:, 1:] = np.tile(np.arange(16, dtype=np.uint8) * 0x11, 256)[:, None]
    assert same_bits(qformat.dequantize(mx, QType.MXFP4), ggml_ref.dequantize(mx, QType.MXFP4))
    nv = np.zeros((256 * 16, 36), np.uint8)
    nv[:, :4] = np.repeat(codes, 16)[:, None]
    nv[:, 4:] = np.tile(np.arange(16, dtype=np.uint8) * 0x11, 256)[:, None]
    assert same_bits(qformat.dequantize(nv, QType.NVFP4), ggml_ref.dequantize(nv, QType.NVFP4))


def test_mxfp4_exponent_at_every_power_of_two(ggml_ref):
    """floor(log2f(amax)) is the only non-bit operation: check the 40 floats below and 3 above each 2^k,
    including the subnormal amax values whose exponent byte wraps around in ggml."""
    u = np.arange(1, 255, dtype=np.int64) << 23  # every normal power of two
    u = np.concatenate([u, [1 << k for k in range(23)]])  # and the subnormal ones
    bits = (u[:, None] + np.arange(-40, 3)[None]).reshape(-1)
    amax = bits[(bits > 0) & (bits < 0x7F800000)].astype(np.uint32).view(np.float32)
    x = np.zeros((amax.size, 32), np.float32)
    x[:, 0] = amax
    x[:, 9] = -amax * np.float32(0.3)
    x[:, 31] = amax * np.float32(0.55)
    assert np.array_equal(qformat.quantize(x, QType.MXFP4), ggml_ref.quantize(x, QType.MXFP4))


def test_nvfp4_scale_rounding_sweep(ggml_ref):
    """UE4M3 rounding (first dropped bit only, clamp at 448, subnormals) over a dense sweep of amax."""
    u = np.arange(0x30000000, 0x46000000, 4099, dtype=np.uint32)  # ~2^-31 .. 2^13: past the 448 clamp
    amax = u.view(np.float32)
    x = np.zeros((amax.size, 64), np.float32)
    x[:, 3], x[:, 20], x[:, 40], x[:, 63] = amax, -amax, amax * np.float32(0.7), amax * np.float32(0.01)
    assert np.array_equal(qformat.quantize(x, QType.NVFP4), ggml_ref.quantize(x, QType.NVFP4))


def test_nvfp4_saturated_scales_match_ggml(ggml_ref):
    """Past amax = 6*448 the UE4M3 scale saturates; values then dwarf the levels and distant codes
    tie after float32 rounding (ggml keeps the first), which the neighbour shortcut must not decide."""
    rng = np.random.default_rng(4)
    mags = np.float32(10.0) ** rng.uniform(3, 38, 512).astype(np.float32)
    x = (rng.standard_normal((512, 64)) * mags[:, None]).astype(np.float32)
    x[~np.isfinite(x)] = np.float32(1e38)
    assert np.array_equal(qformat.quantize(x, QType.NVFP4), ggml_ref.quantize(x, QType.NVFP4))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), e=st.integers(0, 255), spread=st.floats(0.0, 16.0))
def test_neighbour_shortcut_equals_the_full_scan(seed, e, spread):
    """fp4._nearest_code (two neighbours) against ggml's scan of all 16 codes, written out in numpy."""
    scale = fp4.e8m0_half_to_fp32(np.array([e] * 4, np.uint8))
    with np.errstate(over="ignore"):
        x = (np.random.default_rng(seed).uniform(-spread, spread, (4, 32)).astype(np.float32) * scale[:, None])
    x[~np.isfinite(x)] = 0
    np.testing.assert_array_equal(fp4._nearest_code(x, scale), fp4._scan_code(x, scale))


def test_ue4m3_conversions_round_trip():
    # codes with exponent field 1..14 (and the subnormals) survive value -> code; ggml's encoder sends
    # everything from 2^8 up to the single code 0x7E (448), so 0x78..0x7D are never produced
    codes = np.arange(1, 0x7F, dtype=np.uint8)
    values = fp4.ue4m3_to_fp32_half(codes) * np.float32(2)
    want = np.where(codes >= 0x78, 0x7E, codes)
    np.testing.assert_array_equal(fp4.fp32_to_ue4m3(values), want)
    assert fp4.ue4m3_to_fp32_half(np.array([0x7E]))[0] == 224.0  # 448 / 2
    assert fp4.fp32_to_ue4m3(np.array([1e9, 0.0, -1.0, 1e-30], np.float32)).tolist() == [0x7E, 0, 0, 0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), log2s=st.integers(-100, 100))
def test_mxfp4_reencoding_decoded_values_is_idempotent(seed, log2s):
    """Decoded MXFP4 values lie on the grid of their own exponent, so re-encoding them gives the same
    bytes, except that the code "-0" (8) comes back as +0 (0)."""
    x = (np.random.default_rng(seed).standard_normal((4, 256)) * 2.0**log2s).astype(np.float32)
    enc = qformat.quantize(x, QType.MXFP4).reshape(-1, 17)
    again = qformat.quantize(qformat.dequantize(enc, QType.MXFP4), QType.MXFP4)
    nib = np.stack([enc[:, 1:] & 0x0F, enc[:, 1:] >> 4])
    nib = np.where(nib == 8, 0, nib)
    want = enc.copy()
    want[:, 1:] = nib[0] | (nib[1] << 4)
    np.testing.assert_array_equal(again, want)


@pytest.mark.parametrize("qt", TYPES)
def test_round_trip_error_is_bounded(qt):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    y = qformat.dequantize(qformat.quantize(x, qt), qt)
    rel = np.sqrt(np.mean((x - y) ** 2) / np.mean(x**2))
    assert rel < 0.2  # E2M1 keeps 1 mantissa bit: errors of about 10% are what the format allows
    assert np.all(np.abs(y) <= np.abs(x).max() * 1.5)


@pytest.mark.parametrize("qt", TYPES)
def test_bad_input_raises_codec_error(qt):
    n = BLOCK[qt].elems
    x = np.ones((2, 2 * n), np.float32)
    with pytest.raises(CodecError):
        qformat.quantize(x[:, 1:], qt)
    bad = x.copy()
    bad[0, 5] = np.inf
    with pytest.raises(CodecError, match="non-finite"):
        qformat.quantize(bad, qt)
    with pytest.raises(CodecError, match="importance matrix"):  # ggml's encoders for these take no weights
        qformat.quantize(x, qt, imatrix=np.ones(2 * n, np.float32))
    with pytest.raises(CodecError):
        qformat.dequantize(np.zeros(BLOCK[qt].nbytes - 1, np.uint8), qt)
