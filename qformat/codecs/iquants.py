"""ggml's non-linear "IQ" block types: IQ4_NL and IQ4_XS (encode + decode).

Both store 4-bit indices into one fixed table of 16 signed levels, ``KVALUES_IQ4NL`` (ggml's
``kvalues_iq4nl``), times a scale; the levels are denser near zero than a uniform grid.

IQ4_NL, 32 values in 18 bytes::

    offset 0   fp16 d         little-endian IEEE binary16 scale
    offset 2   qs[16]         byte j: low nibble = index of x[j], high nibble = index of x[j+16]
    decode:    y[j] = d * KVALUES_IQ4NL[index]   (float32 multiply)

IQ4_XS, 256 values in 136 bytes, eight sub-blocks of 32 with 6-bit signed scales::

    offset 0   fp16 d         super-block scale
    offset 2   u16 scales_h   bits 2*ib..2*ib+1 = high 2 bits of sub-block ib's scale code
    offset 4   scales_l[4]    byte ib/2: low nibble = sub-block 2k, high nibble = 2k+1 (low 4 bits)
    offset 8   qs[128]        16 bytes per sub-block, nibbles as in IQ4_NL
    decode:    dl = d * (code - 32);  y = dl * KVALUES_IQ4NL[index]   (both float32 multiplies)

Encoder (what ``ggml_quantize_chunk`` runs, ``quantize_row_iq4_nl_impl`` with 7 tries; our words):

1. Importance of each value: ``x*x`` without an imatrix; with one, ``qw * sqrt(sigma2 + x*x)`` where
   ``sigma2`` is ``2/N * sum(x*x)`` over the whole (super-)block of N values.
2. Per 32-value sub-block: ``max`` is the first value of largest magnitude. If that magnitude is
   below 1e-15 the sub-block scale is 0. Otherwise start from ``d = max/127``, map each ``x/d`` to
   the nearest level, and take the weighted least-squares scale ``sumqx/sumq2``; then try the 15
   inverse scales ``(t - 127)/max`` for t in -7..7, keeping a candidate only if it strictly
   improves ``sumqx^2/sumq2`` (compared as ``sumqx*sumqx > best*sumq2``).
3. IQ4_NL: store fp16(scale) and re-map every value with ``1/scale`` (the float32 scale, not its
   fp16 rounding). IQ4_XS: ``d = -s/32`` where s is the first sub-block scale of largest magnitude;
   each sub-block's code is ``nearest_int(scale/d)`` clamped to [-32, 31], and its values are
   re-mapped with ``1/(d*code)`` (the float32 d). Codes are stored offset by 32.

"Nearest level" is ggml's ``best_index_int8``: values at or beyond the ends map to the ends;
otherwise, between the two neighbouring levels a and b, the lower wins iff ``x - a < b - x`` in
float32 (ties go up). All arithmetic is float32 and sums run left to right, as in ggml; so the
encoder is byte-identical to ggml and the decoder bit-identical (see tests/test_iquants.py).
"""
from __future__ import annotations

import numpy as np

from ..types import QType
from . import Codec, register
from .bits import fp32_to_fp16_bits, read_fp16, write_fp16

#: ggml's ``kvalues_iq4nl``: the 16 levels of IQ4_NL and IQ4_XS (sorted ascending).
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_LEVELS = KVALUES_IQ4NL.astype(np.float32)

_F32 = np.float32
#: sub-blocks whose largest magnitude is below this get scale 0 (ggml's GROUP_MAX_EPS)
_GROUP_MAX_EPS = _F32(1e-15)
_NTRY = 7


def nearest_level(v: np.ndarray, levels: np.ndarray = _LEVELS) -> np.ndarray:
    """Index of the nearest of the sorted float32 ``levels`` for each float32 ``v`` (ggml's best_index_int8).

    A NaN input (ggml can produce one as ``inf * 0``) maps to the last level, as ggml's binary search does.
    """
    n = levels.size
    # number of levels <= v, so levels[mu-1] <= v < levels[mu] inside the range; NaN sorts last -> n
    mu = np.clip(np.searchsorted(levels, v, side="right"), 1, n - 1)
    lower = (v - levels[mu - 1]) < (levels[mu] - v)
    idx = mu - lower
    idx = np.where(v <= levels[0], 0, idx)
    idx = np.where(v >= levels[-1], n - 1, idx)
    return idx.astype(np.uint8)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: add 1.5*2^23 in float32 and read the low mantissa bits.

    That is round-half-to-even for |v| < 2^22; the bit trick is mirrored exactly so that the
    out-of-range inputs ggml can meet (inf, NaN) give ggml's answers too.
    """
    t = (np.asarray(v, dtype=_F32) + _F32(12582912.0)).view(np.int32)
    return (t & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def _seqsum(rows: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over the leading axis (ggml's loop order; np.sum is pairwise)."""
    acc = rows[0].copy()
    for r in rows[1:]:
        acc += r
    return acc


def _fit(xt: np.ndarray, wt: np.ndarray, inv: np.ndarray):
    """Map ``xt`` (32, m) with inverse scales ``inv`` (m,); return (sumqx, sumq2) of the fit."""
    q = _LEVELS[nearest_level(inv * xt)]
    wq = wt * q
    return _seqsum(wq * xt), _seqsum(wq * q)


def _subblock_scales(xt: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """Best float32 scale of each 32-value sub-block; ``xt``, ``wt`` are (32, m) columns of sub-blocks."""
    ax = np.abs(xt)
    first = np.argmax(ax, axis=0)  # first index of the largest magnitude, as ggml's strict '>' scan
    cols = np.arange(xt.shape[1])
    amax = ax[first, cols]
    vmax = np.where(amax > 0, xt[first, cols], _F32(0))
    d = (-vmax) / _LEVELS[0]
    sumqx, sumq2 = _fit(xt, wt, _F32(1) / d)
    d = np.where(sumq2 > 0, sumqx / sumq2, _F32(0))
    best = d * sumqx
    for itry in range(-_NTRY, _NTRY + 1):
        sumqx, sumq2 = _fit(xt, wt, _F32(itry + int(KVALUES_IQ4NL[0])) / vmax)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / sumq2, d)
        best = np.where(better, d * sumqx, best)
    return np.where(amax < _GROUP_MAX_EPS, _F32(0), d).astype(_F32)


def _importance(x: np.ndarray, weights) -> np.ndarray:
    """Per-value weights, same shape as ``x`` (nblocks, N)."""
    if weights is None:
        return x * x
    sq = x * x
    sigma2 = _seqsum(np.ascontiguousarray(sq.T)) * _F32(2.0 / x.shape[1])
    return np.asarray(weights, dtype=_F32) * np.sqrt(sigma2[:, None] + sq)


def _pack_nibbles(idx: np.ndarray) -> np.ndarray:
    """(nb, 32k) uint8 indices -> (nb, 16k) bytes: x[j] low nibble, x[j+16] high, per 32 values."""
    nb = idx.shape[0]
    g = idx.reshape(nb, -1, 2, 16)
    return (g[:, :, 0, :] | (g[:, :, 1, :] << 4)).reshape(nb, -1)


def _unpack_levels(qs: np.ndarray) -> np.ndarray:
    """Inverse of _pack_nibbles, straight to float32 levels."""
    nb = qs.shape[0]
    g = qs.reshape(nb, -1, 1, 16)
    idx = np.concatenate([g & 0x0F, g >> 4], axis=2)
    return _LEVELS[idx.reshape(nb, -1)]


# --- IQ4_NL ----------------------------------------------------------------------------------

def _iq4nl_encode(x, *, mode="ggml", weights=None):
    x = np.asarray(x, dtype=_F32)
    nb = x.shape[0]
    with np.errstate(all="ignore"):
        w = _importance(x, weights)
        xt = np.ascontiguousarray(x.T)
        scale = _subblock_scales(xt, np.ascontiguousarray(w.T))
        inv = np.where(scale != 0, _F32(1) / scale, _F32(0))
        idx = nearest_level(inv[:, None] * x)
    out = np.empty((nb, 18), np.uint8)
    write_fp16(out, 0, fp32_to_fp16_bits(scale))
    out[:, 2:] = _pack_nibbles(idx)
    return out


def _iq4nl_decode(blocks):
    d = read_fp16(blocks, 0)
    return d[:, None] * _unpack_levels(blocks[:, 2:])


# --- IQ4_XS ----------------------------------------------------------------------------------

def _iq4xs_encode(x, *, mode="ggml", weights=None):
    x = np.asarray(x, dtype=_F32)
    nb = x.shape[0]
    with np.errstate(all="ignore"):
        w = _importance(x, weights)
        xs = x.reshape(nb * 8, 32)
        scales = _subblock_scales(np.ascontiguousarray(xs.T), np.ascontiguousarray(w.reshape(nb * 8, 32).T))
        scales = scales.reshape(nb, 8)
        mag = np.abs(scales)
        mag = np.where(np.isnan(mag), _F32(-1), mag)  # ggml's '>' scan never picks a NaN
        first = np.argmax(mag, axis=1)
        pick = scales[np.arange(nb), first]
        max_scale = np.where(mag[np.arange(nb), first] > 0, pick, _F32(0))
        d = -max_scale / _F32(32)
        inv_d = np.where(d != 0, _F32(1) / d, _F32(0))
        code = np.clip(nearest_int(inv_d[:, None] * scales), -32, 31)
        dl = d[:, None] * code.astype(_F32)
        idl = np.where(dl != 0, _F32(1) / dl, _F32(0))
        idx = nearest_level(idl.reshape(nb * 8, 1) * xs).reshape(nb, 256)
    code = (code + 32).astype(np.uint16)
    lo = (code & 0x0F).astype(np.uint8)
    hi = code >> 4
    scales_h = np.zeros(nb, np.uint16)
    for ib in range(8):
        scales_h |= hi[:, ib] << np.uint16(2 * ib)
    out = np.empty((nb, 136), np.uint8)
    write_fp16(out, 0, fp32_to_fp16_bits(d))
    out[:, 2:4] = scales_h.astype("<u2").view(np.uint8).reshape(nb, 2)
    out[:, 4:8] = lo[:, 0::2] | (lo[:, 1::2] << 4)
    out[:, 8:] = _pack_nibbles(idx)
    return out


def iq4xs_subblock_codes(blocks: np.ndarray) -> np.ndarray:
    """The eight 6-bit scale codes (0..63, stored offset by 32) of each IQ4_XS block: (nb, 8) int32."""
    lo = np.stack([blocks[:, 4:8] & 0x0F, blocks[:, 4:8] >> 4], axis=2).reshape(-1, 8).astype(np.int32)
    sh = np.ascontiguousarray(blocks[:, 2:4]).view("<u2").reshape(-1, 1).astype(np.int32)
    hi = (sh >> (2 * np.arange(8, dtype=np.int32))) & 3
    return lo | (hi << 4)


def _iq4xs_decode(blocks):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 0)
    dl = d[:, None] * (iq4xs_subblock_codes(blocks) - 32).astype(_F32)
    q = _unpack_levels(blocks[:, 8:]).reshape(nb, 8, 32)
    return (dl[:, :, None] * q).reshape(nb, 256)


register(Codec(QType.IQ4_NL, _iq4nl_decode, _iq4nl_encode, weighted=True,
               doc="4-bit non-linear levels, fp16 scale per 32"))
register(Codec(QType.IQ4_XS, _iq4xs_decode, _iq4xs_encode, weighted=True,
               doc="4-bit non-linear levels, 6-bit scales per 32, fp16 per 256"))
