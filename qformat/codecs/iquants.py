"""ggml's non-linear "IQ" block types: IQ4_NL and IQ4_XS (encode + decode); IQ2_XXS, IQ2_XS,
IQ2_S, IQ3_XXS, IQ3_S, IQ1_S and IQ1_M (decode only: ggml makes them only with an importance
matrix and a lattice search; their layouts are in spec/codecs/<type>.md, their grids in
``iq_grids.npz`` next to this file, written by tools/gen_iq_tables.py from ggml-common.h).

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

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..types import QType
from . import Codec, register
from ..search.ggml import nearest_int, seqsum
from .bits import fp16_bits_to_fp32, fp32_to_fp16_bits, read_fp16, write_fp16

#: ggml's ``kvalues_iq4nl``: the 16 levels of IQ4_NL and IQ4_XS (sorted ascending).
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_LEVELS = KVALUES_IQ4NL.astype(np.float32)

_F32 = np.float32
#: sub-blocks whose largest magnitude is below this get scale 0 (ggml's GROUP_MAX_EPS)
_GROUP_MAX_EPS = _F32(1e-15)
_NTRY = 7


def nearest_level_by_rule(v: np.ndarray, levels: np.ndarray = _LEVELS) -> np.ndarray:
    """Index of the nearest of the sorted float32 ``levels`` for each float32 ``v``: ggml's
    ``best_index_int8`` step by step (the reference that :func:`nearest_level` is derived from).

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


def _f32_from_key(k: int) -> np.float32:
    """Inverse of the order-preserving map float32 -> int (negative floats count down from 0)."""
    bits = k if k >= 0 else (-k) | 0x80000000
    return np.array([bits], np.uint32).view(_F32)[0]


def _f32_key(v: float) -> int:
    bits = int(np.array([v], _F32).view(np.uint32)[0])
    return bits if bits < 0x80000000 else -(bits & 0x7FFFFFFF)


def _level_thresholds(levels: np.ndarray) -> np.ndarray:
    """For each pair of neighbouring levels, the smallest float32 the rule sends to the upper one.

    The rule compares ``fl(v - a) < fl(b - v)``; float rounding is monotone, so that test is true
    below some float32 and false from it on: bisect for it on the ordered float32 keys.
    """
    out = []
    for k in range(levels.size - 1):
        lo, hi = _f32_key(levels[k]), _f32_key(levels[k + 1])  # rule(lo) = k, rule(hi) = k + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if nearest_level_by_rule(np.array([_f32_from_key(mid)], _F32), levels)[0] > k:
                hi = mid
            else:
                lo = mid
        out.append(_f32_from_key(hi))
    return np.array(out, _F32)


def _bucket_tables(thresholds: np.ndarray):
    """Per unit interval [n, n+1), n = -128..127: thresholds at or below n, and the one inside
    (NaN where there is none: ``v >= NaN`` is false even for v = inf)."""
    n = np.arange(-128, 128, dtype=np.float64)
    base = (thresholds[None, :] <= n[:, None]).sum(axis=1).astype(np.uint8)
    inner = np.full(n.size, np.nan, _F32)
    for t in thresholds:
        f = np.floor(float(t))
        if f != t:
            inner[int(f) + 128] = t
    return base, inner


_THRESHOLDS = _level_thresholds(_LEVELS)
_BUCKET_BASE, _BUCKET_INNER = _bucket_tables(_THRESHOLDS)


def nearest_level(v: np.ndarray) -> np.ndarray:
    """ggml's ``best_index_int8`` over ``KVALUES_IQ4NL`` for float32 ``v``: the number of thresholds
    at or below ``v``, found from its unit interval (levels are 10+ apart, so an interval holds at
    most one threshold). Equal to :func:`nearest_level_by_rule` for every float32, NaN included
    (NaN falls in the last interval and compares false: index 15)."""
    c = np.fmax(np.fmin(np.floor(v), _F32(127)), _F32(-128)).astype(np.intp) + 128
    return _BUCKET_BASE[c] + (v >= _BUCKET_INNER[c])


def _fit(xt: np.ndarray, wt: np.ndarray, inv: np.ndarray):
    """Map ``xt`` (32, m) with inverse scales ``inv`` (m,); return (sumqx, sumq2) of the fit."""
    q = _LEVELS[nearest_level(inv * xt)]
    wq = wt * q
    return seqsum(wq * xt), seqsum(wq * q)


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
    sigma2 = seqsum(np.ascontiguousarray(sq.T)) * _F32(2.0 / x.shape[1])
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


# --- decode-only lattice types: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M ----------
#
# ggml can only produce these with an importance matrix and a lattice search; qformat reads them.
# Their values come from fixed grids (qformat/codecs/iq_grids.npz, extracted from ggml-common.h by
# tools/gen_iq_tables.py); the byte layouts are in spec/codecs/<type>.md.

_GRID_FILE = Path(__file__).resolve().parent / "iq_grids.npz"
_KMASK = (np.uint8(1) << np.arange(8, dtype=np.uint8)).astype(np.uint8)


@lru_cache(maxsize=None)
def grid(name: str) -> np.ndarray:
    """One of ggml's IQ grids as float32 ``(entries, 8 or 4)`` (IQ1's grid holds -1, 0, 1)."""
    with np.load(_GRID_FILE) as z:
        raw = z[name]
    return (raw.view(np.int8) if name == "iq1s_grid" else raw).astype(_F32)


def _ksigns(seven: np.ndarray) -> np.ndarray:
    """ggml's ``ksigns_iq2xs``: 7 stored sign bits plus an 8th making the number of minus signs even."""
    s = np.asarray(seven, dtype=np.uint8)
    parity = s ^ (s >> 4)
    parity ^= parity >> 2
    parity ^= parity >> 1
    return s | ((parity & 1) << 7)


def _signed(v: np.ndarray, sign_bytes: np.ndarray) -> np.ndarray:
    """Negate ``v[..., j]`` (last axis of 8) where bit j of ``sign_bytes[...]`` is set.

    ggml writes ``v * (bit ? -1.f : 1.f)``, which the compiler turns into a sign flip: a NaN
    changes sign too (a real multiply by -1 would keep it), so we negate rather than multiply.
    """
    return np.where((sign_bytes[..., None] & _KMASK) != 0, -v, v)


def _u32(b: np.ndarray) -> np.ndarray:
    """(..., 4k) bytes -> (..., k) little-endian uint32 words."""
    return np.ascontiguousarray(b).view("<u4").astype(np.uint32)


def _u16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<u2").astype(np.uint32)


def _half_step_scale(d: np.ndarray, code: np.ndarray, step: float) -> np.ndarray:
    """IQ2/IQ3_XXS sub-block scale ``d * (0.5 + code) * step`` with ggml's float32 operation order."""
    d = d.reshape(d.shape + (1,) * (code.ndim - 1))
    return (d * (_F32(0.5) + code.astype(_F32))) * _F32(step)


def _iq2xxs_decode(blocks):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 0)
    q = blocks[:, 2:66].reshape(nb, 8, 8)
    aux = _u32(q[:, :, 4:8]).reshape(nb, 8)
    db = _half_step_scale(d, aux >> 28, 0.25)  # (nb, 8)
    signs = _ksigns(((aux[:, :, None] >> (7 * np.arange(4, dtype=np.uint32))) & 127).astype(np.uint8))
    vals = grid("iq2xxs_grid")[q[:, :, :4]]  # (nb, 8, 4, 8)
    return _signed(db[:, :, None, None] * vals, signs).reshape(nb, 256)


def _iq2xs_decode(blocks):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 0)
    qs = _u16(blocks[:, 2:66]).reshape(nb, 8, 4)
    sc = blocks[:, 66:74]
    db = _half_step_scale(d, np.stack([sc & 0xF, sc >> 4], axis=2), 0.25)  # (nb, 8, 2)
    dl = np.repeat(db, 2, axis=2)  # l = 0,1 use the low nibble, l = 2,3 the high one
    vals = grid("iq2xs_grid")[qs & 511]
    signs = _ksigns((qs >> 9).astype(np.uint8))
    return _signed(dl[..., None] * vals, signs).reshape(nb, 256)


def _iq2s_decode(blocks):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 0)
    low = blocks[:, 2:34].reshape(nb, 8, 4).astype(np.uint32)
    signs = blocks[:, 34:66].reshape(nb, 8, 4)
    qh = blocks[:, 66:74].astype(np.uint32)
    sc = blocks[:, 74:82]
    shift = (8 - 2 * np.arange(4, dtype=np.uint32))
    idx = low | ((qh[:, :, None] << shift) & 0x300)
    db = _half_step_scale(d, np.stack([sc & 0xF, sc >> 4], axis=2), 0.25)
    dl = np.repeat(db, 2, axis=2)
    vals = grid("iq2s_grid")[idx]
    return _signed(dl[..., None] * vals, signs).reshape(nb, 256)


def _iq3xxs_decode(blocks):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 0)
    qs = blocks[:, 2:66].reshape(nb, 8, 4, 2)
    aux = _u32(blocks[:, 66:98]).reshape(nb, 8)
    db = _half_step_scale(d, aux >> 28, 0.5)
    signs = _ksigns(((aux[:, :, None] >> (7 * np.arange(4, dtype=np.uint32))) & 127).astype(np.uint8))
    vals = grid("iq3xxs_grid")[qs].reshape(nb, 8, 4, 8)  # two 4-value grid entries per group of 8
    return _signed(db[:, :, None, None] * vals, signs).reshape(nb, 256)


def _iq3s_decode(blocks):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 0)
    qs = blocks[:, 2:66].reshape(nb, 8, 4, 2).astype(np.uint32)
    qh = blocks[:, 66:74].astype(np.uint32)
    signs = blocks[:, 74:106].reshape(nb, 8, 4)
    sc = blocks[:, 106:110]
    nib = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(nb, 8).astype(np.int32)
    db = d[:, None] * (1 + 2 * nib).astype(_F32)
    # the 9th index bit of entry (l, half) is bit 2l+half of qh
    bit = (2 * np.arange(4, dtype=np.uint32))[:, None] + np.arange(2, dtype=np.uint32)
    idx = qs | (((qh[:, :, None, None] >> bit) & 1) << 8)
    vals = grid("iq3s_grid")[idx].reshape(nb, 8, 4, 8)
    return _signed(db[:, :, None, None] * vals, signs).reshape(nb, 256)


_IQ1_DELTA = _F32(0.125)


def _iq1_values(dl: np.ndarray, idx: np.ndarray, negative_delta: np.ndarray) -> np.ndarray:
    """``dl * (grid + delta)`` for IQ1 groups of 8: dl, idx, negative_delta all (nb, 8, 4)."""
    delta = np.where(negative_delta, -_IQ1_DELTA, _IQ1_DELTA)
    return dl[..., None] * (grid("iq1s_grid")[idx] + delta[..., None])


def _iq1s_decode(blocks):
    nb = blocks.shape[0]
    d = read_fp16(blocks, 0)
    qs = blocks[:, 2:34].reshape(nb, 8, 4).astype(np.uint32)
    qh = _u16(blocks[:, 34:50]).reshape(nb, 8)
    dl = d[:, None] * (2 * ((qh >> 12) & 7) + 1).astype(_F32)
    idx = qs | (((qh[:, :, None] >> (3 * np.arange(4, dtype=np.uint32))) & 7) << 8)
    neg = np.broadcast_to(((qh & 0x8000) != 0)[:, :, None], idx.shape)
    return _iq1_values(np.broadcast_to(dl[:, :, None], idx.shape), idx, neg).reshape(nb, 256)


def _iq1m_decode(blocks):
    nb = blocks.shape[0]
    sc = _u16(blocks[:, 48:56])  # (nb, 4)
    # the fp16 super-scale is spread over the top nibbles of the four scale words
    dbits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    d = fp16_bits_to_fp32(dbits.astype(np.uint16))
    qs = blocks[:, 0:32].reshape(nb, 8, 4).astype(np.uint32)
    qh = blocks[:, 32:48].reshape(nb, 8, 2).astype(np.uint32)
    word = sc[:, np.arange(8) // 2] >> (6 * (np.arange(8) % 2)).astype(np.uint32)  # (nb, 8)
    three = np.stack([word & 7, (word >> 3) & 7], axis=2)  # (nb, 8, 2): groups 0-1, groups 2-3
    dl = np.repeat(d[:, None, None] * (2 * three + 1).astype(_F32), 2, axis=2)
    hq = np.repeat(qh, 2, axis=2)  # groups 2l, 2l+1 take their high bits from qh byte l
    low_nibble = (np.arange(4) % 2) == 0
    idx = qs | np.where(low_nibble, (hq << 8) & 0x700, (hq << 4) & 0x700)
    neg = (hq & np.where(low_nibble, 0x08, 0x80)) != 0
    return _iq1_values(dl, idx, neg).reshape(nb, 256)


def _nan_quiet(decode):
    """Random bytes hold NaN/inf scales; ggml computes through them silently, and so do we."""
    def run(blocks):
        with np.errstate(invalid="ignore", over="ignore"):
            return decode(blocks)

    run.__name__ = decode.__name__
    return run


for _qt, _fn in [(QType.IQ2_XXS, _iq2xxs_decode), (QType.IQ2_XS, _iq2xs_decode), (QType.IQ2_S, _iq2s_decode),
                 (QType.IQ3_XXS, _iq3xxs_decode), (QType.IQ3_S, _iq3s_decode), (QType.IQ1_S, _iq1s_decode),
                 (QType.IQ1_M, _iq1m_decode)]:
    register(Codec(_qt, _nan_quiet(_fn), None, doc="lattice (grid) quantization, decode only"))
