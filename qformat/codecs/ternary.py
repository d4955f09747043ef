"""Ternary block types for BitNet b1.58 / TriLM weights: TQ1_0 and TQ2_0, encode + decode.

Each of the 256 values of a block is ``t * d`` with a trit ``t`` in {-1, 0, 1}, stored as
``t + 1`` in {0, 1, 2}, and one fp16 scale ``d`` at the end of the block.

TQ2_0, 256 values in 66 bytes (2 bits per value)::

    offset 0   qs[64]   two groups of 32 bytes; in group g, byte m holds, at bits 2n..2n+1,
                        the trit of value 128*g + 32*n + m  (n = 0..3)
    offset 64  fp16 d
    decode:    y = float(q - 1) * d

TQ1_0, 256 values in 54 bytes (1.6875 bits per value), five trits packed base 3 per byte::

    offset 0   qs[48]   bytes 0..31:  byte m holds values m + 32n        (n = 0..4), values 0..159
                        bytes 32..47: byte m holds values 160 + m + 16n  (n = 0..4), values 160..239
    offset 48  qh[4]    byte j holds values 240 + j + 4n (n = 0..3) plus a zero fifth trit
    offset 52  fp16 d

A byte holding trits t0..t4 (t0 first, the most significant base-3 digit) stores
``ceil(N * 256 / 243)`` with ``N = sum(t_n * 3^(4-n))`` (N <= 242); it is a fixed-point fraction, so
trit n is read back by multiplying the byte by ``3^n`` modulo 256 and taking the top bits of
``3 * that`` (``(uint8(b * 3^n) * 3) >> 8``).

Encoder (ggml's ``quantize_row_tq{1,2}_0_ref``; ggml_quantize_chunk ignores any importance matrix
for these types), in our own words: ``d`` = the largest magnitude in the block, ``id = 1/d`` (0 when
d is 0), and each trit is ``lroundf(x * id)`` (half away from zero), all float32. When ``1/d``
overflows (d below about 2.9e-39), ``x * id`` is inf or NaN; glibc's ``lroundf`` then returns
LONG_MIN, and ggml's ``(int)(LONG_MIN) + 1`` stores the trit 0, which we reproduce.
Encode is byte-identical and decode bit-identical to ggml (tests/test_ternary.py).
"""
from __future__ import annotations

import numpy as np

from ..types import QType
from . import Codec, register
from .bits import fp32_to_fp16_bits, read_fp16, write_fp16

_F32 = np.float32


def _trits(x: np.ndarray) -> np.ndarray:
    """Stored trits (0, 1, 2) of each block of 256 float32 values, as ggml computes them.

    ``|x * id| <= 1`` up to one rounding (``id`` is the rounded ``1/d``), so ``lroundf`` can only
    give -1, 0 or 1 and reduces to two float32 comparisons against 0.5 (halves go away from zero).
    """
    amax = np.max(np.abs(x), axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(amax != 0, _F32(1) / amax, _F32(0)).astype(_F32)
        v = x * inv[:, None]
    t = np.greater_equal(v, _F32(0.5)).view(np.uint8)
    t += np.uint8(1)
    t -= np.less_equal(v, _F32(-0.5)).view(np.uint8)
    huge = np.flatnonzero(np.isinf(inv))
    if huge.size:  # 1/d overflowed: x * inf is +-inf, which lroundf turns into the trit 0 (stored 1)
        t[huge] = np.where(np.isinf(v[huge]), np.uint8(1), t[huge])
    return t, amax


# --- TQ2_0 -----------------------------------------------------------------------------------

def _tq2_encode(x, *, mode="ggml", weights=None):
    x = np.asarray(x, dtype=_F32)
    nb = x.shape[0]
    t, amax = _trits(x)
    g = t.reshape(nb, 2, 4, 32)  # (block, group, n, m)
    qs = g[:, :, 0] | (g[:, :, 1] << 2) | (g[:, :, 2] << 4) | (g[:, :, 3] << 6)
    out = np.empty((nb, 66), np.uint8)
    out[:, :64] = qs.reshape(nb, 64)
    write_fp16(out, 64, fp32_to_fp16_bits(amax))
    return out


_TWO_BITS = np.uint64(0x0303030303030303)


def _tq2_decode(blocks, out=None):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 64)
    # eight bytes at a time: shifting a 64-bit word by 2n and masking each byte to 2 bits gives the
    # trits n of eight consecutive positions m, already in output order (value 128g + 32n + m)
    qs = np.ascontiguousarray(blocks[:, :64]).view(np.uint64).reshape(nb, 2, 4)
    codes = np.empty((nb, 2, 4, 4), np.uint64)
    for n in range(4):
        np.right_shift(qs, np.uint64(2 * n), out=codes[:, :, n])
    codes &= _TWO_BITS
    trits = codes.view(np.int8).reshape(nb, 256)
    trits -= np.int8(1)
    with np.errstate(invalid="ignore"):  # 0 * inf scale is NaN, as in ggml
        return np.multiply(trits, d[:, None], dtype=_F32, out=out)  # exact int8 -> float32 inside the product


# --- TQ1_0 -----------------------------------------------------------------------------------

_POW3 = np.array([1, 3, 9, 27, 81, 243], np.uint16)


def _pack_base3(trits: np.ndarray) -> np.ndarray:
    """(..., k, m) trits, first axis k most significant -> (..., m) bytes ceil(N*256/243)."""
    k = trits.shape[-2]
    n = np.zeros(trits.shape[:-2] + trits.shape[-1:], np.uint16)
    for i in range(k):
        n = n * 3 + trits[..., i, :]
    n = n * _POW3[5 - k]  # fewer than five trits: shift them up to the most significant places
    return ((n * 256 + 242) // 243).astype(np.uint8)


def _unpack_base3(b: np.ndarray, k: int) -> np.ndarray:
    """(..., m) bytes -> (..., k, m) trits 0..2 (trit n = top of 3 * (b * 3^n mod 256))."""
    q = (b[..., None, :].astype(np.uint16) * _POW3[:k, None]) & 0xFF
    return (q * 3) >> 8


def _tq1_encode(x, *, mode="ggml", weights=None):
    x = np.asarray(x, dtype=_F32)
    nb = x.shape[0]
    t, amax = _trits(x)
    out = np.empty((nb, 54), np.uint8)
    out[:, 0:32] = _pack_base3(t[:, :160].reshape(nb, 5, 32))
    out[:, 32:48] = _pack_base3(t[:, 160:240].reshape(nb, 5, 16))
    out[:, 48:52] = _pack_base3(t[:, 240:].reshape(nb, 4, 4))
    write_fp16(out, 52, fp32_to_fp16_bits(amax))
    return out


#: ``3^n`` for the trit each of the 256 values reads from its byte (see :func:`_tq1_decode`)
_TQ1_POW3 = np.concatenate([np.repeat(_POW3[:5], 32), np.repeat(_POW3[:5], 16),
                            np.repeat(_POW3[:4], 4)]).astype(np.uint8)


def _tq1_decode(blocks, out=None):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 52)
    q = np.empty((nb, 256), np.uint8)  # the byte of each value, in value order
    q[:, :160].reshape(nb, 5, 32)[:] = blocks[:, None, 0:32]
    q[:, 160:240].reshape(nb, 5, 16)[:] = blocks[:, None, 32:48]
    q[:, 240:].reshape(nb, 4, 4)[:] = blocks[:, None, 48:52]
    q *= _TQ1_POW3  # uint8(b * 3^n), wrapping mod 256 as in C
    # the trit is (3 * q) >> 8, i.e. 0 below 86, 1 below 171, else 2; stored minus 1 that is
    # (q >= 86) - (q < 171)
    trits = np.greater_equal(q, np.uint8(86)).view(np.int8)
    trits -= np.less(q, np.uint8(171)).view(np.int8)
    with np.errstate(invalid="ignore"):  # 0 * inf scale is NaN, as in ggml
        return np.multiply(trits, d[:, None], dtype=_F32, out=out)


#: values per decode call: these decoders are a few cheap passes, so per-call overhead matters
_DECODE_CHUNK = 1 << 18

register(Codec(QType.TQ1_0, _tq1_decode, _tq1_encode, decode_chunk_values=_DECODE_CHUNK, decode_into=True,
               doc="ternary, base-3 packed, fp16 scale per 256"))
register(Codec(QType.TQ2_0, _tq2_decode, _tq2_encode, decode_chunk_values=_DECODE_CHUNK, decode_into=True,
               doc="ternary, 2 bits per value, fp16 scale per 256"))
