"""Plain element types: F32/F16/BF16/F64 bit-exact against ggml's converters; I8..I64 decode by value."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qformat
from qformat.codecs import dequantize, quantize
from qformat.errors import CodecError, UnsupportedType

ALL_16BIT = np.arange(1 << 16, dtype=np.uint16)


def _u32(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def _fp32_sample(n=1 << 20, seed=0):
    """Random bit patterns (every class: NaNs, infs, subnormals, zeros) plus the hard boundaries."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    # fp16 rounding boundaries: every half value and the midpoints between neighbours, both signs
    halves = ALL_16BIT.view(np.float16).astype(np.float32)
    finite = halves[np.isfinite(halves)]
    with np.errstate(over="ignore"):  # 65504's upper neighbour is inf
        nxt = np.nextafter(finite.astype(np.float16), np.float16(np.inf)).astype(np.float32)
    mids = finite + (nxt - finite) / np.float32(2)
    mids = mids[np.isfinite(mids)]
    around = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    # bf16 ties: low half exactly 0x8000, and one below/above
    hi = rng.integers(0, 1 << 16, size=4096, dtype=np.uint32) << np.uint32(16)
    ties = np.concatenate([hi | np.uint32(0x8000), hi | np.uint32(0x7FFF), hi | np.uint32(0x8001)])
    specials = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
                         0xFF800001, 0x7FBFFFFF, 0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0xFF7FFFFF,
                         0x477FEFFF, 0x477FF000, 0x33000000, 0x33000001, 0x337FFFFF], dtype=np.uint32)
    return np.concatenate([bits, _u32(halves), _u32(around), ties, specials]).view(np.float32)


# --- against the C reference -----------------------------------------------------------------

@pytest.mark.parametrize("qt", ["F16", "BF16"])
def test_decode_all_65536_patterns_bit_identical(ggml_ref, qt):
    raw = ALL_16BIT.view(np.uint8)
    ours = dequantize(raw, qt)
    ref = ggml_ref.dequantize(raw, qt)
    assert ours.dtype == np.float32 and ours.shape == (1 << 16,)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("qt", ["F16", "BF16", "F32"])
def test_encode_fp32_bit_patterns_byte_identical(ggml_ref, qt):
    x = _fp32_sample()
    ours = quantize(x, qt)
    ref = ggml_ref.quantize(x, qt)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    bad = np.flatnonzero(ours != ref)
    assert bad.size == 0, f"{qt}: {bad.size} bytes differ, first at value {x.view(np.uint32)[bad[0] // (ref.size // x.size)]:#010x}"


def test_f32_decode_is_identity_on_bits(ggml_ref):
    x = _fp32_sample(1 << 16, seed=3)
    raw = x.view(np.uint8)
    np.testing.assert_array_equal(dequantize(raw, "F32").view(np.uint32), x.view(np.uint32))
    np.testing.assert_array_equal(ggml_ref.dequantize(raw, "F32").view(np.uint32), x.view(np.uint32))


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from([(1,), (7,), (3, 5), (2, 3, 64)]), scale=st.sampled_from([1e-30, 1e-6, 1.0, 3e4, 1e6]),
       seed=st.integers(0, 2**32 - 1))
def test_random_scaled_inputs_match_ggml(ggml_ref, shape, scale, seed):
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    for qt in ("F16", "BF16"):
        enc = quantize(x, qt)
        assert enc.shape == shape[:-1] + (shape[-1] * 2,)
        np.testing.assert_array_equal(enc, ggml_ref.quantize(x, qt))
        np.testing.assert_array_equal(dequantize(enc, qt).view(np.uint32), ggml_ref.dequantize(enc, qt).view(np.uint32))


# --- facts from the IEEE formats (independent of any implementation) ---------------------------

@pytest.mark.parametrize("value,bits", [
    (1.0, 0x3C00), (-2.0, 0xC000), (65504.0, 0x7BFF), (65519.99, 0x7BFF), (65520.0, 0x7C00), (1e10, 0x7C00),
    (-1e10, 0xFC00), (2.0**-24, 0x0001), (2.0**-25, 0x0000), (3 * 2.0**-25, 0x0002), (-0.0, 0x8000),
    (float("inf"), 0x7C00), (float("nan"), 0x7E00), (1 + 2.0**-11, 0x3C00), (1 + 3 * 2.0**-11, 0x3C02),
])
def test_f16_known_encodings(value, bits):
    assert quantize(np.array([value], np.float32), "F16").view("<u2")[0] == bits


def test_f16_nan_payload_and_sign_dropped_to_quiet_nan():
    x = np.array([0x7F800001, 0xFFBFFFFF, 0x7FC12345], dtype=np.uint32).view(np.float32)
    assert quantize(x, "F16").view("<u2").tolist() == [0x7E00, 0xFE00, 0x7E00]


@pytest.mark.parametrize("in_bits,out_bits", [
    (0x3F800000, 0x3F80), (0x3F808000, 0x3F80), (0x3F818000, 0x3F82), (0x3F808001, 0x3F81),
    (0x7F7FFFFF, 0x7F80), (0x7F800001, 0x7FC0), (0xFF800001, 0xFFC0), (0x80000000, 0x8000), (0x00000001, 0x0000),
])
def test_bf16_known_encodings(in_bits, out_bits):
    x = np.array([in_bits], dtype=np.uint32).view(np.float32)
    assert quantize(x, "BF16").view("<u2")[0] == out_bits


def test_f16_decode_known_values():
    raw = np.array([0x3C00, 0x0001, 0x7BFF, 0xFC00, 0x8000], dtype="<u2").view(np.uint8)
    got = dequantize(raw, "F16")
    assert got[:4].tolist() == [1.0, 2.0**-24, 65504.0, float("-inf")]
    assert got.view(np.uint32)[4] == 0x80000000


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.uint16, st.integers(1, 300)))
def test_f16_and_bf16_decode_then_encode_is_identity_except_nan(bits):
    for qt in ("F16", "BF16"):
        raw = bits.view(np.uint8)
        vals = dequantize(raw, qt)
        again = quantize(vals, qt).view("<u2")
        keep = ~np.isnan(vals)
        np.testing.assert_array_equal(again[keep], bits[keep])
        assert (np.isnan(dequantize(again[~keep].view(np.uint8), qt))).all()


def test_f64_round_trip_and_range():
    x = np.array([0.1, -3.5, 1e-40, np.inf, -0.0], np.float32)
    enc = quantize(x, "F64")
    assert enc.shape == (40,)
    assert enc.view("<f8").tolist() == x.astype(np.float64).tolist()
    raw = np.frombuffer(struct.pack("<4d", 1e300, -1e300, 0.1, 2.0**-160), dtype=np.uint8)
    dec = dequantize(raw, "F64")
    assert dec.tolist() == [np.inf, -np.inf, float(np.float32(0.1)), 0.0]


@pytest.mark.parametrize("qt,fmt,values", [
    ("I8", "<4b", [-128, -1, 0, 127]),
    ("I16", "<4h", [-32768, -2, 3, 32767]),
    ("I32", "<4i", [-2**31, -7, 16777217, 2**31 - 1]),
    ("I64", "<4q", [-2**63, 5, 2**53 + 1, 2**63 - 1]),
])
def test_integer_types_decode_by_value_and_refuse_encode(qt, fmt, values):
    raw = np.frombuffer(struct.pack(fmt, *values), dtype=np.uint8)
    dec = dequantize(raw, qt)
    assert dec.dtype == np.float32
    assert dec.tolist() == [float(np.float32(v)) for v in values]
    assert qformat.codecs.can_decode(qt) and not qformat.codecs.can_encode(qt)
    with pytest.raises(UnsupportedType):
        quantize(np.zeros(4, np.float32), qt)


@pytest.mark.parametrize("qt,nbytes", [("F16", 3), ("BF16", 5), ("F64", 12), ("I32", 6), ("F32", 2)])
def test_partial_element_is_rejected(qt, nbytes):
    with pytest.raises(CodecError):
        dequantize(np.zeros(nbytes, np.uint8), qt)


def test_float_types_accept_non_finite_input():
    x = np.array([np.inf, -np.inf, np.nan], np.float32)
    for qt in ("F32", "F16", "BF16", "F64"):
        dec = dequantize(quantize(x, qt), qt)
        assert dec[0] == np.inf and dec[1] == -np.inf and np.isnan(dec[2])


def test_f16_arithmetic_rounding_equals_the_cast_path():
    """Large inputs are rounded by float32 arithmetic, small ones by numpy's cast plus the NaN rule:
    both paths must agree on every class of input (NaNs, infs, subnormals, every rounding boundary),
    without ggml. (The arithmetic path was also checked equal on all 2^32 float32 patterns.)"""
    from qformat.codecs import floats

    x = _fp32_sample(1 << 18, seed=5)
    assert x.size >= floats._F16_ARITH_MIN
    with np.errstate(over="ignore", invalid="ignore"):
        cast = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    cast = np.where(nan, (x.view(np.uint32) >> 16).astype(np.uint16) & 0x8000 | 0x7E00, cast)
    assert nan.sum() > 1000 and np.isinf(x).any()
    np.testing.assert_array_equal(floats._fp32_to_fp16_bits_arith(x), cast)
    np.testing.assert_array_equal(floats.fp32_to_fp16_bits(x), cast)
    small = x[:floats._F16_ARITH_MIN - 1]  # the cast path
    np.testing.assert_array_equal(floats.fp32_to_fp16_bits(small), cast[:small.size])
