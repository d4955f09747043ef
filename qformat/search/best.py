"""Encode mode ``"best"``: lower squared error than ggml's encoder at the same bytes (Q4_K, Q5_K).

A Q4_K / Q5_K super-block holds 256 values in 8 sub-blocks of 32. Sub-block ``j`` decodes as
``(d * sc[j]) * q - (dmin * m[j])``: ``d``, ``dmin`` are fp16, ``sc``, ``m`` are 6-bit integers
(0..63) and ``q`` is a 4-bit (Q4_K, 0..15) or 5-bit (Q5_K, 0..31) code. Rules this module keeps:

* The blocks it writes MUST be ordinary blocks of the type: ggml's unchanged decoder reads them,
  so every field stays in range (``sc``, ``m`` < 64, codes <= nmax, finite fp16 ``d``/``dmin``).
* The error MUST be measured on the values as ggml decodes them (through the registered decoder,
  which is bit-identical to ggml's), weighted per value by the importance weights when given.
* A super-block MUST never come out worse than ggml's own encoding of it: ggml's block (the
  ``"ggml"`` mode of the registered codec, with the same weights) is always a candidate, and the
  search result replaces it only where it is strictly better.

ggml's reference encoder fits each sub-block with a weighted least-squares search whose weights
(``mean|x| + |x|``) are not the squared error, anchors every trial grid at the sub-block minimum,
then rounds the 8 scales and mins to 6 bits against their maxima and never refits them. The search
here (all of it vectorized over sub-blocks, no Python loop over blocks):

1. Per sub-block, a float fit ``x ~= s * q + b`` (``b <= 0``, so it can be stored as ``-dmin*m``) under
   the true objective (plain or importance-weighted squared error): trial grids of inverse scale
   ``(nmax + a) / (max - min)`` *and* rounding shift ``f`` (so the grid is not pinned at the minimum),
   each followed by a closed-form least-squares ``(s, b)`` for its codes; the best trial then gets two
   Lloyd steps (re-round codes, refit ``(s, b)``).
2. Quantize to the super-block: ``d = max(s) / 63`` and ``dmin = max(-b) / 63`` (fp16), tried at a few
   slightly stretched ``dmin`` (the 6-bit grid of offsets lands differently on each sub-block's ideal).
3. For each sub-block, try the rounded ``(sc, m)`` and its 8 integer neighbours with freshly rounded
   codes; keep the lowest error. Then refit ``(d, dmin)`` jointly by least squares given all integer
   scales, mins and codes (a 2x2 system per super-block), round to fp16, and search the neighbours again.
4. Keep, per super-block, the best of all these candidates and of ggml's block.

Arrays in the search are laid out ``(8, 32, n)`` -- sub-block, position, super-block -- so every step
is one numpy operation across all super-blocks of a chunk.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..codecs.bits import (
    fp32_to_fp16_bits,
    pack_high_bits_k,
    pack_nibbles_k,
    pack_scale_min_k4,
    write_fp16,
)
from ..types import QType

_F32 = np.float32

#: Trial grids for the per-sub-block fit: inverse scale (nmax + a)/(max - min), rounding shift f.
#: A 0.2-spaced sweep of ``a`` (as ggml's, but wider) times three shifts; on N(0,1) this reaches the
#: float fit of a dense 2-D search within 0.3% at a third of its cost.
_TRIALS = tuple((round(a, 1), f) for a in np.arange(-2.4, 1.01, 0.2) for f in (-0.4, -0.1, 0.2))

#: Stretch factors for dmin (step 2): each puts the 6-bit offset grid at a different phase.
_DMIN_STRETCH = (1.0, 1.01, 1.02, 1.03)

#: Integer moves of (sc, m) tried around the current ones in step 3.
_NEIGHBOURS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))

#: Per type: code maximum and where the fields sit in a block (see spec/codecs/q4_k.md, q5_k.md).
_LAYOUT = {
    QType.Q4_K: dict(nmax=15, nbytes=144),
    QType.Q5_K: dict(nmax=31, nbytes=176),
}


def _f16(v) -> np.ndarray:
    """Round to the nearest fp16 value (ties to even, as ggml's GGML_FP32_TO_FP16), kept as float32."""
    return np.asarray(v, dtype=_F32).astype(np.float16).astype(_F32)


def _dot32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over the 32 positions of a sub-block: (8, 32, n) x (8, 32, n) -> (8, n)."""
    return np.einsum("ijk,ijk->ik", a, b)


def _solve_scale_min(sw, sx, sq, sqq, sxq):
    """Weighted least squares for ``x ~= s*q + b`` with ``b <= 0``; returns s, b, error - sum(w x^2), ok."""
    det = sw * sqq - sq * sq
    s = (sw * sxq - sx * sq) / det
    b = (sqq * sx - sq * sxq) / det
    positive = b > 0  # an offset above zero cannot be stored as -dmin*m: refit the scale alone
    s = np.where(positive, sxq / sqq, s)
    b = np.where(positive, _F32(0), b)
    err = s * (s * sqq - 2 * sxq) + b * (b * sw - 2 * sx) + 2 * s * b * sq
    ok = (det > 0) & (s > 0) & np.isfinite(err)
    return s, b, err, ok


def _fit_subblocks(x: np.ndarray, w: Optional[np.ndarray], nmax: int):
    """Step 1: float (s, b) per sub-block minimizing sum w (s*q + b - x)^2; x is (8, 32, n)."""
    lo = np.minimum(x.min(axis=1), 0)  # the offset can only lower values: grids start at <= 0
    span = x.max(axis=1) - lo
    span = np.where(span > 0, span, _F32(1))
    if w is None:
        sw, wx = _F32(x.shape[1]), x
    else:
        sw, wx = w.sum(axis=1), w * x
    sx = wx.sum(axis=1)
    best_err = np.full(lo.shape, np.inf, dtype=_F32)
    best_s = np.zeros_like(lo)
    best_b = lo.copy()  # a constant sub-block keeps scale 0 and its value as offset
    q = np.empty_like(x)

    def trial(s_b_err_ok):
        nonlocal best_err, best_s, best_b
        s, b, err, ok = s_b_err_ok
        ok &= err < best_err
        best_err = np.where(ok, err, best_err)
        best_s = np.where(ok, s, best_s)
        best_b = np.where(ok, b, best_b)

    def sums():
        wq = q if w is None else w * q
        return sw, sx, wq.sum(axis=1), _dot32(wq, q), _dot32(wx, q)

    for a, f in _TRIALS:
        inv = _F32(nmax + a) / span
        np.multiply(x, inv[:, None], out=q)
        q += (_F32(f) - lo * inv)[:, None]
        np.rint(q, out=q)  # x >= lo and f > -0.5, so no code rounds below 0
        np.minimum(q, nmax, out=q)
        trial(_solve_scale_min(*sums()))
    for _ in range(2):  # Lloyd: codes for the best (s, b), then the best (s, b) for those codes
        inv = np.where(best_s > 0, _F32(1) / np.where(best_s > 0, best_s, 1), _F32(0))
        np.subtract(x, best_b[:, None], out=q)
        q *= inv[:, None]
        np.rint(q, out=q)
        np.maximum(q, 0, out=q)
        np.minimum(q, nmax, out=q)
        trial(_solve_scale_min(*sums()))
    return best_s, best_b


def _round_codes(x, scale, off, nmax, q):
    """Nearest codes for levels ``scale*q - off`` (scale, off: (8, n)), written into q (8, 32, n)."""
    inv = np.where(scale != 0, _F32(1) / np.where(scale != 0, scale, 1), _F32(0))
    np.add(x, off[:, None], out=q)
    q *= inv[:, None]
    np.rint(q, out=q)
    np.maximum(q, 0, out=q)  # np.clip is slower than the two bounds applied in place
    np.minimum(q, nmax, out=q)
    return q


def _subblock_error(x, w, scale, off, nmax, q):
    """Weighted squared error per sub-block (8, n) with the nearest codes (left in q)."""
    _round_codes(x, scale, off, nmax, q)
    r = q * scale[:, None]
    r -= off[:, None]
    r -= x
    return _dot32(r if w is None else r * w, r)


def _neighbour_search(x, w, nmax, d, dmin, sc, m, q):
    """Step 3a: per sub-block, the best of (sc, m) and its integer neighbours at fixed d, dmin."""
    best = best_sc = best_m = None
    for dsc, dm in _NEIGHBOURS:
        sc2 = np.clip(sc + dsc, 0, 63)
        m2 = np.clip(m + dm, 0, 63)
        err = _subblock_error(x, w, d * sc2, dmin * m2, nmax, q)
        if best is None:
            best, best_sc, best_m = err, sc2, m2
        else:
            better = err < best
            best = np.where(better, err, best)
            best_sc = np.where(better, sc2, best_sc)
            best_m = np.where(better, m2, best_m)
    return best_sc, best_m, best


def _refit_d_dmin(x, w, nmax, d, dmin, sc, m, q):
    """Step 3b: least-squares (d, dmin) for y = d*(sc*q) - dmin*m given integer sc, m and codes."""
    _round_codes(x, d * sc, dmin * m, nmax, q)
    wx = x if w is None else w * x
    wq = q if w is None else w * q
    sw = _F32(x.shape[1]) if w is None else w.sum(axis=1)
    f64 = np.float64
    saa = (sc * sc * _dot32(wq, q)).sum(axis=0, dtype=f64)
    sab = (sc * m * wq.sum(axis=1)).sum(axis=0, dtype=f64)
    sbb = (m * m * sw).sum(axis=0, dtype=f64)
    sax = (sc * _dot32(wx, q)).sum(axis=0, dtype=f64)
    sbx = (m * wx.sum(axis=1)).sum(axis=0, dtype=f64)
    det = saa * sbb - sab * sab
    d_new = np.where(sbb == 0, sax / saa, (sbb * sax - sab * sbx) / det)
    dmin_new = np.where(sbb == 0, 0.0, (sab * sax - saa * sbx) / det)
    d_new, dmin_new = _f16(d_new), _f16(dmin_new)
    usable = np.isfinite(d_new) & np.isfinite(dmin_new) & (d_new > 0) & (dmin_new >= 0)
    return np.where(usable, d_new, d), np.where(usable, dmin_new, dmin)


def search_scale_min(x: np.ndarray, nmax: int, weights: Optional[np.ndarray] = None):
    """Steps 1-3 on super-blocks ``x`` float32 ``(n, 256)``.

    Returns ``(d, dmin, sc, m, codes, err)``: ``d``/``dmin`` float32 ``(n,)`` holding fp16 values,
    ``sc``/``m`` uint8 ``(n, 8)``, codes uint8 ``(n, 256)`` and the (weighted) squared error
    per super-block as the search measured it.
    """
    n = x.shape[0]
    xt = np.ascontiguousarray(x.T, dtype=_F32).reshape(8, 32, n)
    wt = None if weights is None else np.ascontiguousarray(weights.T, dtype=_F32).reshape(8, 32, n)
    with np.errstate(all="ignore"):  # degenerate sub-blocks are masked out, not reported
        s, b = _fit_subblocks(xt, wt, nmax)
        mn = -b
        q = np.empty_like(xt)
        best = None
        for stretch in _DMIN_STRETCH:
            d = _f16(s.max(axis=0) / _F32(63))
            dmin = _f16(mn.max(axis=0) / _F32(63) * _F32(stretch))
            sc = np.clip(np.rint(np.where(d > 0, s / np.where(d > 0, d, 1), 0)), 0, 63).astype(_F32)
            m = np.clip(np.rint(np.where(dmin > 0, mn / np.where(dmin > 0, dmin, 1), 0)), 0, 63).astype(_F32)
            for step in range(2):
                if step:
                    d, dmin = _refit_d_dmin(xt, wt, nmax, d, dmin, sc, m, q)
                sc, m, err = _neighbour_search(xt, wt, nmax, d, dmin, sc, m, q)
                total = err.sum(axis=0)
                cand = (d, dmin, sc, m, total)
                if best is None:
                    best = cand
                else:
                    better = total < best[4]
                    best = tuple(np.where(better, c, bc) for c, bc in zip(cand, best))
        d, dmin, sc, m, total = best
        _round_codes(xt, d * sc, dmin * m, nmax, q)
        q = np.nan_to_num(q)
    codes = q.reshape(256, n).T.astype(np.uint8)
    return d, dmin, sc.T.astype(np.uint8), m.T.astype(np.uint8), codes, total


def pack_blocks(qtype: QType, d, dmin, sc, m, codes) -> np.ndarray:
    """Pack searched fields into ``qtype`` blocks (layout in spec/codecs/q4_k.md and q5_k.md)."""
    n = codes.shape[0]
    out = np.empty((n, _LAYOUT[qtype]["nbytes"]), dtype=np.uint8)
    write_fp16(out, 0, fp32_to_fp16_bits(d))
    write_fp16(out, 2, fp32_to_fp16_bits(dmin))
    out[:, 4:16] = pack_scale_min_k4(sc, m)
    if qtype == QType.Q4_K:
        out[:, 16:] = pack_nibbles_k(codes)
    else:
        out[:, 16:48] = pack_high_bits_k(codes)
        out[:, 48:] = pack_nibbles_k(codes & 0x0F)
    return out


def block_errors(x: np.ndarray, y: np.ndarray, weights: Optional[np.ndarray]) -> np.ndarray:
    """(Weighted) squared error per block row, in float64; non-finite decodes count as infinite."""
    r = y.astype(np.float64) - x.astype(np.float64)
    e = r * r if weights is None else weights.astype(np.float64) * r * r
    e = e.sum(axis=1)
    return np.where(np.isfinite(e), e, np.inf)


def encode_best(qtype: QType, x: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Mode ``"best"`` for Q4_K / Q5_K: ``x`` float32 ``(n, 256)`` -> blocks ``uint8 (n, nbytes)``.

    Each output block is ggml's own block for that super-block or the search's, whichever decodes
    (through the registered, ggml-identical decoder) with the lower (weighted) squared error.
    """
    from ..codecs import REGISTRY  # the codec registry imports this module lazily; avoid a cycle

    qtype = QType(qtype)
    codec = REGISTRY[qtype]
    ggml_blocks = codec.encode(x, mode="ggml", weights=weights)
    d, dmin, sc, m, codes, _ = search_scale_min(x, _LAYOUT[qtype]["nmax"], weights)
    ours = pack_blocks(qtype, d, dmin, sc, m, codes)
    better = block_errors(x, codec.decode(ours), weights) < block_errors(x, codec.decode(ggml_blocks), weights)
    return np.where(better[:, None], ours, ggml_blocks)
