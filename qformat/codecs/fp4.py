"""4-bit floating-point block types: MXFP4 (OCP microscaling) and NVFP4, encode + decode.

Both store E2M1 values (sign, 2 exponent bits, 1 mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4, 6). ggml
keeps them doubled as the integer table ``KVALUES_MXFP4`` (ggml's ``kvalues_mxfp4``) and halves the
scale instead, so every decoded value is ``level * scale`` with one float32 multiply. Code 8 is
"-0" and decodes to +0.0 (the table holds the integer 0).

MXFP4, 32 values in 17 bytes::

    offset 0   u8 e       E8M0 shared exponent; scale = 2^(e-128) (= half of 2^(e-127)),
                          e = 0 and 1 give the subnormals 2^-128 and 2^-127; 255 is not special
    offset 1   qs[16]     byte j: low nibble = code of x[j], high nibble = code of x[j+16]

NVFP4, 64 values in 36 bytes, four sub-blocks of 16::

    offset 0   d[4]       UE4M3 scale per sub-block (4 exponent bits, bias 7, 3 mantissa bits,
                          unsigned); scale = value/2; 0x00 and 0x7F (the E4M3 NaN) decode to 0
    offset 4   qs[32]     8 bytes per sub-block s: byte 4+8s+j low nibble = x[16s+j],
                          high nibble = x[16s+8+j]

Encoders (ggml's ``quantize_row_mxfp4_ref`` / ``quantize_row_nvfp4_ref``; ggml_quantize_chunk
takes no importance matrix for them), in our own words:

* MXFP4: ``amax`` = largest magnitude of the 32. ``e = floor(log2f(amax)) - 2 + 127`` (0 when
  amax is 0), converted to a byte the way x86 does ``(uint8_t)float``: truncate to int32, keep the
  low 8 bits (so amax below 2^-125 wraps around; ggml's behaviour, kept for byte-identity).
* NVFP4: per 16-value sub-block, ``ue = to_ue4m3(amax / 6)`` where ``to_ue4m3`` rounds the
  mantissa up on the first dropped bit alone (ties away, no sticky bits), clamps to 448 (code
  0x7E), and below 2^-6 gives the subnormal ``(int)(v*512 + 0.5)`` clamped to 7.
* Both then give each value the code whose ``|level*scale - x|`` is smallest, scanning codes 0..15
  and keeping the first strict minimum (so +0 beats "-0", and a tie goes to the lower code).

All arithmetic mirrors ggml's float32 operations, so encode is byte-identical and decode
bit-identical to ggml (tests/test_fp4.py, spec/vectors/codecs/{MXFP4,NVFP4}.npz).
"""
from __future__ import annotations

import numpy as np

from ..types import QType
from . import Codec, register

_F32 = np.float32

#: ggml's ``kvalues_mxfp4``: E2M1 values doubled, indexed by the 4-bit code.
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)
_LEVELS = KVALUES_MXFP4.astype(_F32)


def e8m0_half_to_fp32(e: np.ndarray) -> np.ndarray:
    """ggml's ``GGML_E8M0_TO_FP32_HALF``: 2^(e-128) built from bits (two subnormals for e < 2)."""
    e = np.asarray(e, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(_F32)


def ue4m3_to_fp32_half(u: np.ndarray) -> np.ndarray:
    """ggml's ``ggml_ue4m3_to_fp32``: the UE4M3 value times 0.5 (0x00 and 0x7F give 0)."""
    u = np.asarray(u, dtype=np.int32)
    exp = (u >> 3) & 0xF
    man = (u & 0x7).astype(_F32)
    # every UE4M3 value is exact in float32, so ldexp here matches ggml's ldexpf bit for bit
    sub = np.ldexp(man, -9).astype(_F32)
    norm = np.ldexp(_F32(1) + man / _F32(8), exp - 7).astype(_F32)
    raw = np.where(exp == 0, sub, norm)
    return np.where((u == 0) | (u == 0x7F), _F32(0), raw * _F32(0.5)).astype(_F32)


def fp32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """ggml's ``ggml_fp32_to_ue4m3`` for float32 ``x`` (rounds on the first dropped bit only)."""
    x = np.asarray(x, dtype=_F32)
    pos = x > 0
    x = np.minimum(np.where(pos, x, _F32(0)), _F32(448))
    bits = x.view(np.uint32).astype(np.int64)
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    man = ((bits >> 20) & 0x7) + ((bits >> 19) & 1)
    carry = man > 7
    exp = np.where(carry, exp + 1, exp)
    man = np.where(carry, 0, man)
    normal = np.where(exp >= 15, 0x7E, (exp << 3) | man)
    sub = np.minimum((x * _F32(512) + _F32(0.5)).astype(np.int64), 7)  # (int) truncation
    sub = np.where(sub < 1, 0, sub)
    out = np.where(exp - carry <= 0, sub, normal)  # the subnormal test uses the exponent before carry
    return np.where(pos, out, 0).astype(np.uint8)


#: the non-negative levels, ascending; codes 0..7 hold them and codes 8..15 their negatives
_MAGNITUDES = _LEVELS[:8]


def _scan_code(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """ggml's scan as written: all 16 codes, first strict minimum of |level*scale - x|."""
    with np.errstate(over="ignore"):
        err = np.abs(_LEVELS[:, None, None] * scale.reshape(1, -1, 1) - x[None])
    return np.argmin(err, axis=0).astype(np.uint8)


def _nearest_code(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Code 0..15 minimising |level*scale - x| (first strict minimum), float32 as ggml.

    ggml scans all 16 codes; we get the same answer from the two neighbouring magnitudes of |x|:
    float32 subtraction is sign-symmetric, so a negative x sees the negative levels exactly as |x|
    sees the positive ones, and codes 0..7 come first in the scan (so 0 beats "-0"). Levels
    further away cannot tie as long as |x| < 16*scale: neighbouring levels are at least ``scale``
    apart, far more than a float32 rounding step of numbers that size. That always holds for
    MXFP4; NVFP4 blocks whose scale saturated at 448 (where huge values make distant levels tie
    after rounding) take ggml's full scan, and so do zero scales (all levels equal: code 0).
    """
    a = np.abs(x)
    scale = scale.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):  # a wrapped exponent can push 12*scale to inf
        lv = (_MAGNITUDES[None, :] * scale[:, None]).astype(_F32)  # (rows, 8)
        k = np.zeros(x.shape, np.uint8)
        for j in range(1, 8):
            k += a >= lv[:, j:j + 1]
        rows = np.arange(x.shape[0])[:, None]
        lo = lv[rows, k]
        hi = lv[rows, np.minimum(k + 1, 7)]
        up = (k < 7) & ((hi - a) < (a - lo))
        code = np.where((x < 0) & ((k + up) != 0), k + up + 8, k + up).astype(np.uint8)
        slow = (scale == 0) | (a.max(axis=1) >= _F32(16) * scale)
    if slow.any():
        code[slow] = _scan_code(x[slow], scale[slow])
    return code


def _pack(codes: np.ndarray, half: int) -> np.ndarray:
    """(nb, k*2*half) codes -> (nb, k*half) bytes: value j low nibble, value j+half high, per group."""
    nb = codes.shape[0]
    g = codes.reshape(nb, -1, 2, half)
    return (g[:, :, 0, :] | (g[:, :, 1, :] << 4)).reshape(nb, -1)


def _unpack(qs: np.ndarray, half: int) -> np.ndarray:
    nb = qs.shape[0]
    g = qs.reshape(nb, -1, 1, half)
    return np.concatenate([g & 0x0F, g >> 4], axis=2).reshape(nb, -1)


def _floor_log2f(a: np.ndarray) -> np.ndarray:
    """floor(log2f(a)) for positive float32 a, with log2f correctly rounded to float32.

    Rounding matters only just below a power of two, where log2f can round up to the integer;
    log2 in float64 rounded once to float32 gives glibc's (correctly rounded) log2f there.
    """
    return np.floor(np.log2(a.astype(np.float64)).astype(_F32))


# --- MXFP4 -----------------------------------------------------------------------------------

def _mxfp4_encode(x, *, mode="ggml", weights=None):
    x = np.asarray(x, dtype=_F32)
    nb = x.shape[0]
    amax = np.max(np.abs(x), axis=1)
    live = amax > 0
    with np.errstate(divide="ignore"):
        expo = _floor_log2f(np.where(live, amax, _F32(1)))
    # (uint8_t) of a float on x86: truncate to int32, keep the low byte
    e = np.where(live, (expo.astype(np.int32) - 2 + 127) & 0xFF, 0).astype(np.uint8)
    d = e8m0_half_to_fp32(e)
    codes = _nearest_code(x, d[:, None])
    out = np.empty((nb, 17), np.uint8)
    out[:, 0] = e
    out[:, 1:] = _pack(codes, 16)
    return out


def _mxfp4_decode(blocks):
    d = e8m0_half_to_fp32(blocks[:, 0])
    return _LEVELS[_unpack(blocks[:, 1:], 16)] * d[:, None]


# --- NVFP4 -----------------------------------------------------------------------------------

def _nvfp4_encode(x, *, mode="ggml", weights=None):
    x = np.asarray(x, dtype=_F32)
    nb = x.shape[0]
    sub = x.reshape(nb * 4, 16)
    amax = np.max(np.abs(sub), axis=1)
    ue = fp32_to_ue4m3(amax / _F32(6))
    d = ue4m3_to_fp32_half(ue)
    codes = _nearest_code(sub, d[:, None])
    out = np.empty((nb, 36), np.uint8)
    out[:, :4] = ue.reshape(nb, 4)
    out[:, 4:] = _pack(codes.reshape(nb, 64), 8)
    return out


def _nvfp4_decode(blocks):
    nb = blocks.shape[0]
    d = ue4m3_to_fp32_half(blocks[:, :4]).reshape(nb, 4, 1)
    q = _LEVELS[_unpack(blocks[:, 4:], 8)].reshape(nb, 4, 16)
    return (q * d).reshape(nb, 64)


register(Codec(QType.MXFP4, _mxfp4_decode, _mxfp4_encode, doc="E2M1 values, E8M0 exponent per 32"))
register(Codec(QType.NVFP4, _nvfp4_decode, _nvfp4_encode, doc="E2M1 values, UE4M3 scale per 16"))
