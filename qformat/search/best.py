"""Encode mode ``"best"``: lower squared error than ggml's encoder at the same bytes.

Types: Q4_K, Q5_K (below; Q2_K runs the same search on 16 sub-blocks of 16 with 4-bit scales and
mins and 2-bit codes), and Q4_1, Q5_1, Q6_K, Q3_K (see the banners at the end of this module).

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
2. Choose fp16 ``d``, ``dmin`` and the 6-bit ``sc``, ``m`` with a quadratic model of the error: for
   fixed codes, moving a sub-block's (scale, offset) by (ds, db) from its least-squares optimum adds
   ``ds^2 Sqq + 2 ds db Sq + db^2 Sw``. Candidates are 8 x 8 small stretches of ``max(s)/63`` and
   ``max(-b)/63`` over 0-12% (6 x 6 over 0-6% for Q5_K; each lands the 6-bit grids at another phase
   against the sub-blocks' ideal values); each sub-block takes the better of floor/ceil for ``sc``
   and the nearest ``m`` given that, and the pair with the least predicted increase wins.
3. Exact search around it: each sub-block tries its (sc, m) and the 4 unit moves with freshly rounded
   codes and keeps the lowest error (Q4_K only scores its (sc, m), see below); then ``(d, dmin)`` is refit jointly by least squares given all
   integer scales, mins and codes (a 2x2 system per super-block), the fp16 pair nearest the optimum
   and its 8 one-ulp neighbours are scored exactly for those codes and the best kept, and each
   sub-block tries its (sc, m) and all 8 neighbours again. Q4_K runs a second such round (refit,
   then the 5 unit moves): codes and scales alternate once more.
4. Keep, per super-block, the best of these candidates and of ggml's block.

Arrays in the search are laid out ``(8, 32, n)`` -- sub-block, position, super-block -- so every step
is one numpy operation across all super-blocks of a chunk (candidates of one step on a leading axis).
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

#: Trials for the per-sub-block fit: (a, f) = inverse scale (nmax + a)/(max - min), rounding shift f.
#: Chosen greedily from a dense grid (a in -3..1.2, f in -0.5..0.4, steps 0.1), each pick lowering most
#: the mean fitted error over a mixed sample of N(0,1), Laplace, Student-t(4) and MiniLM sub-blocks
#: (4-bit codes); these 30 match ggml's 21-trial sweep widened to a 54-trial 2-D grid.
_TRIALS = ((0.4, -0.2), (0.2, 0.2), (0.3, -0.4), (-0.6, -0.2), (0.3, 0.0), (0.2, -0.2), (0.3, -0.5),
           (-0.7, 0.0), (-0.9, -0.2), (0.7, 0.0), (-0.1, 0.1), (-1.9, 0.0), (0.8, -0.4), (-1.3, 0.1),
           (-0.3, 0.0), (0.2, 0.3), (-1.7, -0.4), (0.6, -0.5), (0.7, -0.2), (0.0, 0.2), (-0.2, -0.2),
           (-0.3, 0.1), (-1.2, 0.2), (0.6, -0.4), (-1.2, -0.2), (-1.7, -0.2), (0.4, 0.3), (-3.0, 0.0),
           (0.7, -0.1), (-1.1, 0.3),
           # six more, greedy from the same grid continuing from the 30 above, picked on a fresh sample
           # (N(0,1), Laplace, Student-t(4), 256k values each, seed 7)
           (-1.8, 0.1), (0.2, -0.5), (-0.3, 0.3), (-0.4, -0.4), (0.3, -0.1), (0.5, -0.5))

#: trials scored together on a leading axis (a (G, 8, 32, n) float32 block; 1.5 MB for a chunk)
_GROUP = 6

#: Stretches of d = max(s)/63 and dmin = max(-b)/63 tried by the model of step 2: ``grid`` values
#: evenly spread over [0, span] for each (grid x grid pairs); 6% unless the type sets ``span``.
_STRETCH_SPAN = 0.06

#: Integer moves of (sc, m) tried in step 3: the first 5 (stay and unit moves), then all 9.
_NEIGHBOURS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))

#: Per type: code maximum and where the fields sit in a block (see spec/codecs/q4_k.md, q5_k.md).
#: ``trials`` (how many of _TRIALS) and ``grid`` set the effort: Q5_K's finer codes leave its error
#: far below the target with less search, so it spends less (tools/bench_quality.py measures both).
#: Q4_K's second refit round makes unit moves before the first refit worthless (no bench figure moved
#: by more than 0.0001), so it only scores the model's pick there (``first_moves=1``).
_LAYOUT = {
    QType.Q4_K: dict(nmax=15, nbytes=144, trials=36, grid=8, refits=2, span=0.12, first_moves=1),
    QType.Q5_K: dict(nmax=31, nbytes=176, trials=12, grid=6),
    QType.Q2_K: dict(nmax=3, nbytes=84, grid=8, groups=16, smax=15,
                     trials=tuple((a, f) for a in (-1.2, -0.9, -0.6, -0.3, 0.0, 0.3, 0.6) for f in (-0.4, -0.1, 0.2))),
}


def _f16(v) -> np.ndarray:
    """Round to the nearest fp16 value (ties to even, as ggml's GGML_FP32_TO_FP16), kept as float32."""
    return np.asarray(v, dtype=_F32).astype(np.float16).astype(_F32)


def _dot32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over the 32 positions of a sub-block: (8, 32, n) x (8, 32, n) -> (8, n)."""
    return np.einsum("ijk,ijk->ik", a, b)


def _solve_scale_min(sw, sx, sq, sqq, sxq, offset_le_0: bool = True):
    """Weighted least squares for ``x ~= s*q + b`` (with ``b <= 0`` if ``offset_le_0``);
    returns s, b, error - sum(w x^2), ok."""
    det = sw * sqq - sq * sq
    s = (sw * sxq - sx * sq) / det
    b = (sqq * sx - sq * sxq) / det
    if offset_le_0:
        positive = b > 0  # an offset above zero cannot be stored as -dmin*m: refit the scale alone
        s = np.where(positive, sxq / sqq, s)
        b = np.where(positive, _F32(0), b)
    err = s * (s * sqq - 2 * sxq) + b * (b * sw - 2 * sx) + 2 * s * b * sq
    ok = (det > 0) & (s > 0) & np.isfinite(err)
    return s, b, err, ok


def _fit_subblocks(x: np.ndarray, w: Optional[np.ndarray], nmax: int, n_trials, offset_le_0: bool = True):
    """Step 1: float (s, b) per sub-block minimizing sum w (s*q + b - x)^2; x is (8, 32, n).

    Returns s, b (8, n) and the sums (Sw, Sq, Sqq) of the winning codes, which give the curvature
    of the error around (s, b) for step 2. Trials run in groups on a leading axis so that the
    per-sub-block bookkeeping is one numpy call per group, not per trial.
    """
    lo = x.min(axis=1)
    if offset_le_0:
        lo = np.minimum(lo, 0)  # the offset can only lower values: grids start at <= 0
    span = x.max(axis=1) - lo
    span = np.where(span > 0, span, _F32(1))
    if w is None:
        sw, wx = np.full(lo.shape, x.shape[1], dtype=_F32), x
    else:
        sw, wx = w.sum(axis=1), w * x
    sx = wx.sum(axis=1)
    best = [np.full(lo.shape, np.inf, dtype=_F32), np.zeros_like(lo), lo.copy(), np.zeros_like(lo), np.zeros_like(lo)]
    # err, s, b (a constant sub-block keeps scale 0 and its value as offset), Sq, Sqq

    def score(q):
        """Least-squares (s, b) for each group member's codes q (G, 8, 32, n); keep the best."""
        wq = q if w is None else w * q
        sq, sqq, sxq = wq.sum(axis=2), np.einsum("gijk,gijk->gik", wq, q), np.einsum("gijk,ijk->gik", q, wx)
        s, b, err, ok = _solve_scale_min(sw, sx, sq, sqq, sxq, offset_le_0)
        err = np.where(ok, err, np.inf)
        k = np.argmin(err, axis=0)[None]
        cand = [np.take_along_axis(v, k, axis=0)[0] for v in (err, s, b, sq, sqq)]
        better = cand[0] < best[0]
        for i, v in enumerate(cand):
            best[i] = np.where(better, v, best[i])

    trials = np.asarray(_TRIALS[:n_trials] if isinstance(n_trials, int) else n_trials, dtype=_F32)
    for g in range(0, len(trials), _GROUP):
        a, f = trials[g:g + _GROUP, 0, None, None], trials[g:g + _GROUP, 1, None, None]
        inv = (nmax + a) / span  # (G, 8, n)
        q = x * inv[:, :, None]
        q += (f - lo * inv)[:, :, None]
        np.rint(q, out=q)
        np.clip(q, 0, nmax, out=q)
        score(q)
    for _ in range(2):  # Lloyd: codes for the best (s, b), then the best (s, b) for those codes
        s, b = best[1], best[2]
        inv = np.where(s > 0, _F32(1) / np.where(s > 0, s, 1), _F32(0))
        q = (x - b[:, None]) * inv[:, None]
        np.rint(q, out=q)
        np.clip(q, 0, nmax, out=q)
        score(q[None])
    return best[1], best[2], (sw, best[3], best[4])


def _round_codes(x, scale, off, nmax, q):
    """Nearest codes for levels ``scale*q - off`` (scale, off: (8, n)), written into q (8, 32, n)."""
    inv = np.where(scale != 0, _F32(1) / np.where(scale != 0, scale, 1), _F32(0))
    np.add(x, off[:, None], out=q)
    q *= inv[:, None]
    np.rint(q, out=q)
    np.clip(q, 0, nmax, out=q)
    return q


def _neighbour_search(x, w, nmax, d, dmin, sc, m, moves, smax: int = 63):
    """Step 3a: per sub-block, the best of (sc, m) and its integer ``moves`` at fixed d, dmin.

    All moves are scored at once on a leading axis, each with the nearest codes for its levels
    ``(d*sc)*q - dmin*m``; ties keep the earlier move (the current (sc, m) comes first).
    """
    mv = np.asarray(moves, dtype=_F32)
    sc2 = np.clip(sc + mv[:, 0, None, None], 0, smax)  # (M, 8, n)
    m2 = np.clip(m + mv[:, 1, None, None], 0, smax)
    k, err = _best_levels(x, w, nmax, d * sc2, dmin * m2)
    pick = [np.take_along_axis(v, k, axis=0)[0] for v in (sc2, m2, err)]
    return pick[0], pick[1], pick[2]


def _best_levels(x, w, nmax, scale, off):
    """Score candidate level sets ``scale*q - off`` (each (M, G, n)) on groups x (G, 32, n) with the
    nearest codes; returns the index (1, G, n) of the best candidate per group and all errors."""
    inv = np.where(scale != 0, _F32(1) / np.where(scale != 0, scale, 1), _F32(0))
    shifted = x + off[:, :, None]  # (M, G, 32, n)
    q = shifted * inv[:, :, None]
    np.rint(q, out=q)
    np.clip(q, 0, nmax, out=q)
    q *= scale[:, :, None]
    q -= shifted  # now the residual scale*q - off - x
    err = np.einsum("gijk,gijk->gik", q if w is None else q * w, q)
    return np.argmin(err, axis=0)[None], err


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
    # Rounding the optimum to fp16 coordinate by coordinate need not give the best fp16 pair (the
    # error is a tilted quadratic): score the rounded pair and its 8 one-ulp neighbours exactly for
    # these codes, err - sum(w x^2) = a^2 Saa + 2 a b Sab + b^2 Sbb - 2 a Sax - 2 b Sbx, b = -dmin.
    h = _f16(d_new).astype(np.float16), _f16(dmin_new).astype(np.float16)
    steps = [(v, np.nextafter(v, np.float16(np.inf)), np.nextafter(v, np.float16(-np.inf))) for v in h]
    cand_d = np.stack([a for a in steps[0] for _ in range(3)]).astype(f64)  # (9, n)
    cand_m = np.stack([b for _ in range(3) for b in steps[1]]).astype(f64)
    cost = cand_d * (cand_d * saa - 2 * sax) + cand_m * (cand_m * sbb + 2 * sbx) - 2 * cand_d * cand_m * sab
    usable = np.isfinite(cost) & (cand_d > 0) & (cand_m >= 0)
    k = np.argmin(np.where(usable, cost, np.inf), axis=0)[None]
    d_new, dmin_new = (np.take_along_axis(v, k, axis=0)[0].astype(_F32) for v in (cand_d, cand_m))
    usable = np.take_along_axis(usable, k, axis=0)[0]
    return np.where(usable, d_new, d), np.where(usable, dmin_new, dmin)


def _model_start(s, mn, curv, grid: int, smax: int = 63, span: float = _STRETCH_SPAN):
    """Step 2: fp16 d, dmin and 6-bit sc, m per super-block from a quadratic error model.

    For fixed codes, moving a sub-block's (scale, offset) by (ds, db) away from its least-squares
    optimum adds ``ds^2 Sqq + 2 ds db Sq + db^2 Sw``. Candidate d and dmin are slight stretches of
    max/63 (each puts the 6-bit grid at another phase against the sub-blocks' ideal values); for every
    pair, each sub-block takes the floor or the ceiling of s/d for sc and, given the scale error ds
    that leaves, the m nearest the offset that absorbs it best (the cost is a parabola in the offset);
    the pair with the least summed increase wins. Candidate pairs run on one leading axis, so the
    arrays are (grid^2, 8, n): cheap next to work on the 256 values.
    """
    f = _F32
    n = s.shape[1]
    sw, sq, sqq = curv
    stretch = 1 + np.linspace(0, span, grid, dtype=f)[:, None]
    d1 = _f16(s.max(axis=0) / f(smax) * stretch)[:, None, :]  # (grid, 1, n)
    m1 = _f16(mn.max(axis=0) / f(smax) * stretch)[:, None, :]
    dmin = np.tile(m1, (grid, 1, 1))  # pair k = (d1[k // grid], m1[k % grid])
    inv_m = np.where(dmin > 0, 1 / np.where(dmin > 0, dmin, 1), 0)
    absorb = np.where(sw > 0, sq / np.where(sw > 0, sw, 1), 0)
    floor_sc = np.floor(s * np.where(d1 > 0, 1 / np.where(d1 > 0, d1, 1), 0))
    options = []
    for dsc in (0, 1):
        sc = np.clip(floor_sc + dsc, 0, smax)  # (grid, 8, n): depends on d only
        ds = d1 * sc - s
        ds_sqq, ds_sq, target = ds * ds * sqq, 2 * ds * sq, mn + ds * absorb
        rep = [np.repeat(v, grid, axis=0) for v in (ds_sqq, ds_sq, target)]  # onto the pair axis
        m = np.rint(rep[2] * inv_m)
        np.clip(m, 0, smax, out=m)
        db = mn - dmin * m  # stored offset is -dmin*m, the fit's is -mn
        options.append((rep[0] + db * (rep[1] + db * sw), sc, m))
    (cost0, sc0, m0), (cost1, sc1, m1_) = options
    ceil_wins = cost1 < cost0
    pick = np.argmin(np.where(ceil_wins, cost1, cost0).sum(axis=1), axis=0)  # (n,)
    cols = np.arange(n)
    ceil_wins = ceil_wins[pick, :, cols].T  # (8, n)
    sc = np.where(ceil_wins, sc1[pick // grid, :, cols].T, sc0[pick // grid, :, cols].T)
    m = np.where(ceil_wins, m1_[pick, :, cols].T, m0[pick, :, cols].T)
    return d1[pick // grid, 0, cols], dmin[pick, 0, cols], sc.astype(f), m.astype(f)


def search_scale_min(x: np.ndarray, nmax: int, weights: Optional[np.ndarray] = None, *,
                     trials=len(_TRIALS), grid: int = 8, groups: int = 8, smax: int = 63, refits: int = 1,
                     span: float = _STRETCH_SPAN, first_moves: int = 5):
    """Steps 1-3 on super-blocks ``x`` float32 ``(n, 256)``.

    Returns ``(d, dmin, sc, m, codes, err)``: ``d``/``dmin`` float32 ``(n,)`` holding fp16 values,
    ``sc``/``m`` uint8 ``(n, groups)`` (at most ``smax``), codes uint8 ``(n, 256)`` and the
    (weighted) squared error per super-block as the search measured it. ``trials`` is a count of
    :data:`_TRIALS` or a sequence of (a, f) trials; Q2_K uses ``groups=16, smax=15``. ``refits``
    rounds of step 3b (refit ``(d, dmin)``, then search the sub-blocks' (sc, m) again) alternate codes
    and scales; each round's result is kept per super-block only where it lowers the error. ``span``:
    the stretches of step 2 cover [0, span]. ``first_moves``: how many of :data:`_NEIGHBOURS` the
    exact pass before the first refit tries (1: only score the model's pick).
    """
    n = x.shape[0]
    shape = (groups, 256 // groups, n)
    xt = np.ascontiguousarray(x.T, dtype=_F32).reshape(shape)
    wt = None if weights is None else np.ascontiguousarray(weights.T, dtype=_F32).reshape(shape)
    with np.errstate(all="ignore"):  # degenerate sub-blocks are masked out, not reported
        s, b, curv = _fit_subblocks(xt, wt, nmax, trials)
        mn = -b
        q = np.empty_like(xt)
        d, dmin, sc, m = _model_start(s, mn, curv, grid, smax, span)
        sc, m, err = _neighbour_search(xt, wt, nmax, d, dmin, sc, m, _NEIGHBOURS[:first_moves], smax)
        best = (d, dmin, sc, m, err.sum(axis=0))
        for moves in (_NEIGHBOURS,) + (_NEIGHBOURS[:5],) * (refits - 1):  # later rounds move less
            d, dmin = _refit_d_dmin(xt, wt, nmax, d, dmin, sc, m, q)
            sc, m, err = _neighbour_search(xt, wt, nmax, d, dmin, sc, m, moves, smax)
            total = err.sum(axis=0)
            better = total < best[4]  # the refit can lose after fp16 rounding: keep the better per super-block
            best = tuple(np.where(better, c, bc) for c, bc in zip((d, dmin, sc, m, total), best))
            d, dmin, sc, m, total = best
        _round_codes(xt, d * sc, dmin * m, nmax, q)
        q, sc, m = np.nan_to_num(q), np.nan_to_num(sc), np.nan_to_num(m)  # overflowed candidates lose anyway
    codes = q.reshape(256, n).T.astype(np.uint8)
    return d, dmin, sc.T.astype(np.uint8), m.T.astype(np.uint8), codes, total


def pack_blocks(qtype: QType, d, dmin, sc, m, codes) -> np.ndarray:
    """Pack searched fields into ``qtype`` blocks (layouts in spec/codecs/q2_k.md, q4_k.md, q5_k.md)."""
    n = codes.shape[0]
    out = np.empty((n, _LAYOUT[qtype]["nbytes"]), dtype=np.uint8)
    if qtype == QType.Q2_K:  # scales[16] @0 (min << 4 | scale) | qs[64] @16 | d @80 | dmin @82
        from ..codecs.kquants import _q2_k_pack_codes

        out[:, :16] = sc | (m << 4)
        out[:, 16:80] = _q2_k_pack_codes(codes)
        write_fp16(out, 80, fp32_to_fp16_bits(d))
        write_fp16(out, 82, fp32_to_fp16_bits(dmin))
        return out
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


def keep_better(qtype: QType, x: np.ndarray, weights: Optional[np.ndarray], ours: np.ndarray,
                ggml_blocks: np.ndarray) -> np.ndarray:
    """Per block, the search's bytes where they decode (through the registered, ggml-identical
    decoder) with strictly lower (weighted) squared error than ggml's own block, else ggml's: so no
    block of mode "best" is ever worse than the reference."""
    from ..codecs import REGISTRY  # the codec registry imports this module lazily; avoid a cycle

    decode = REGISTRY[QType(qtype)].decode
    better = block_errors(x, decode(ours), weights) < block_errors(x, decode(ggml_blocks), weights)
    return np.where(better[:, None], ours, ggml_blocks)


def encode_best(qtype: QType, x: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Mode ``"best"`` for Q4_K / Q5_K / Q2_K: ``x`` float32 ``(n, 256)`` -> blocks ``uint8 (n, nbytes)``.

    Each output block is ggml's own block for that super-block or the search's (:func:`keep_better`).
    """
    from ..codecs import REGISTRY  # the codec registry imports this module lazily; avoid a cycle

    qtype = QType(qtype)
    ggml_blocks = REGISTRY[qtype].encode(x, mode="ggml", weights=weights)
    lay = dict(_LAYOUT[qtype])
    nmax = lay.pop("nmax")
    lay.pop("nbytes")
    d, dmin, sc, m, codes, _ = search_scale_min(x, nmax, weights, **lay)
    return keep_better(qtype, x, weights, pack_blocks(qtype, d, dmin, sc, m, codes), ggml_blocks)


# ==== Q4_1 / Q5_1: one fp16 scale and one fp16 minimum per block of 32 =============================
#
# ``x = d * q + m`` with fp16 ``d``, ``m`` (any sign) and 4-/5-bit codes. ggml's reference takes
# ``d = (max - min) / nmax`` and ``m = min`` with no search at all; its imatrix path searches with
# ``make_qkx3_quants``. Here: step 1's fit (the offset may be positive), both rounded to fp16, then
# every combination of d and m moved by -1, 0, +1 fp16 steps is scored with fresh codes.

_AFFINE = {QType.Q4_1: 15, QType.Q5_1: 31}


def search_affine(x: np.ndarray, nmax: int, weights: Optional[np.ndarray] = None):
    """(d, m) float32 holding fp16 values ``(n,)`` and codes uint8 ``(n, 32)`` for blocks ``x`` (n, 32)."""
    n = x.shape[0]
    xt = np.ascontiguousarray(x.T, dtype=_F32).reshape(1, 32, n)
    wt = None if weights is None else np.ascontiguousarray(weights.T, dtype=_F32).reshape(1, 32, n)
    with np.errstate(all="ignore"):
        s, b, _ = _fit_subblocks(xt, wt, nmax, 30, offset_le_0=False)  # the first 30 trials suffice here
        d16, m16 = s.astype(np.float16), b.astype(np.float16)
        steps = [d16, np.nextafter(d16, np.float16(np.inf)), np.nextafter(d16, np.float16(-np.inf))]
        msteps = [m16, np.nextafter(m16, np.float16(np.inf)), np.nextafter(m16, np.float16(-np.inf))]
        scale = np.stack([dd for dd in steps for _ in msteps]).astype(_F32)  # (9, 1, n)
        off = -np.stack([mm for _ in steps for mm in msteps]).astype(_F32)
        k, _ = _best_levels(xt, wt, nmax, scale, off)
        d = np.take_along_axis(scale, k, axis=0)[0]
        mneg = np.take_along_axis(off, k, axis=0)[0]
        q = np.empty_like(xt)
        _round_codes(xt, d, mneg, nmax, q)
        q = np.nan_to_num(q)
    return d[0], -mneg[0], q[0].T.astype(np.uint8)


def encode_best_affine(qtype: QType, x: np.ndarray, weights: Optional[np.ndarray],
                       ggml_blocks: np.ndarray) -> np.ndarray:
    """Mode ``"best"`` for Q4_1 / Q5_1 given ggml's own blocks for ``x`` (n, 32) (the caller encodes
    them, with the importance weights if any): the search's block where it decodes strictly better."""
    from ..codecs.legacy import _store  # the one Q4_1/Q5_1 block packer

    qtype = QType(qtype)
    d, m, codes = search_affine(x, _AFFINE[qtype], weights)
    ours = _store(d, m, np.ascontiguousarray(codes.T), five_bit=qtype == QType.Q5_1)
    return keep_better(qtype, x, weights, ours, ggml_blocks)


# ==== Q6_K and Q3_K: one fp16 d, sixteen signed sub-block scales, signed codes =====================
#
# ``x = (d * sc[j]) * q`` for 16 sub-blocks of 16 values. Q6_K: ``sc`` int8 (-128..127), ``q`` in
# -32..31; Q3_K: ``sc`` in -32..31 (stored + 32 in 6 bits), ``q`` in -4..3. ggml's references fit each
# sub-block with weights ``x*x`` (not the squared error) and round the 16 scales against their signed
# maximum without refitting. Here: a least-squares scale per sub-block under the true objective
# (trial scales mapping the extreme value to the most negative or the most positive code, stretched,
# then two Lloyd steps); ``d`` picked among 8 stretches of ``max|s| / max_sc`` by the quadratic
# model ``(d*sc - s)^2 Sqq``; the integer scales searched +-1 with fresh codes around a least-squares
# refit of ``d``; ggml's block kept unless strictly worse.

#: per type: code half-range qh (codes -qh..qh-1), scale half-range sh (scales -sh..sh-1) and the
#: trial stretches a (trial scales extreme / -(qh + a) and extreme / (qh - 1 + a))
_SYM = {
    QType.Q6_K: dict(qh=32, sh=128, stretch=tuple(np.arange(-3.0, 2.01, 0.5))),
    QType.Q3_K: dict(qh=4, sh=32, stretch=(-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75)),
}


def _fit_symmetric(x: np.ndarray, w: Optional[np.ndarray], qh: int, stretch):
    """Least-squares scales s (G, n) for ``x ~= s * q``, q in -qh..qh-1, and Sqq of the winning codes."""
    wx = x if w is None else w * x
    at = np.argmax(np.abs(x), axis=1)[:, None]
    extreme = np.take_along_axis(x, at, axis=1)[:, 0]  # signed value of largest magnitude, (G, n)
    best_gain = np.full(extreme.shape, -np.inf, dtype=_F32)
    best_s = np.zeros_like(extreme)
    best_sqq = np.zeros_like(extreme)

    def score(q):  # q (T, G, 16, n)
        sqq = np.einsum("tijk,tijk->tik", q if w is None else w * q, q)
        sxq = np.einsum("tijk,ijk->tik", q, wx)
        ok = sqq > 0
        safe = np.where(ok, sqq, 1)
        gain = np.where(ok, sxq * sxq / safe, -np.inf)  # error = Sxx - Sxq^2 / Sqq at s = Sxq / Sqq
        k = np.argmax(gain, axis=0)[None]
        g, s, qq = (np.take_along_axis(v, k, axis=0)[0] for v in (gain, np.where(ok, sxq / safe, 0), sqq))
        better = g > best_gain
        return np.where(better, g, best_gain), np.where(better, s, best_s), np.where(better, qq, best_sqq)

    a = np.asarray(stretch, dtype=_F32)
    scales = np.concatenate([-(qh + a), qh - 1 + a])[:, None, None]  # (T, 1, 1)
    inv = np.where(extreme != 0, scales / np.where(extreme != 0, extreme, 1), 0)  # 1/s per trial
    q = x * inv[:, :, None]
    np.rint(q, out=q)
    np.clip(q, -qh, qh - 1, out=q)
    best_gain, best_s, best_sqq = score(q)
    for _ in range(2):  # Lloyd steps
        inv = np.where(best_s != 0, _F32(1) / np.where(best_s != 0, best_s, 1), 0)
        q = x * inv[:, None]
        np.rint(q, out=q)
        np.clip(q, -qh, qh - 1, out=q)
        best_gain, best_s, best_sqq = score(q[None])
    return best_s, best_sqq


def _sym_search_sc(x, w, d, sc, qh: int, sh: int):
    """Per sub-block, the best of integer scales sc, sc+1, sc-1 at fixed d (fresh codes each)."""
    cand = np.clip(sc + np.asarray([0, 1, -1], dtype=_F32)[:, None, None], -sh, sh - 1)
    scale = d * cand
    k, err = _best_levels(x, w, 2 * qh - 1, scale, qh * scale)  # levels scale*(l - qh), l = 0..2qh-1
    return np.take_along_axis(cand, k, axis=0)[0], np.take_along_axis(err, k, axis=0)[0]


def search_symmetric(x: np.ndarray, weights: Optional[np.ndarray], qh: int, sh: int, stretch):
    """(d float32 holding fp16 (n,), signed scales int (n, 16), levels uint8 0..2qh-1 (n, 256))."""
    n = x.shape[0]
    xt = np.ascontiguousarray(x.T, dtype=_F32).reshape(16, 16, n)
    wt = None if weights is None else np.ascontiguousarray(weights.T, dtype=_F32).reshape(16, 16, n)
    with np.errstate(all="ignore"):
        s, sqq = _fit_symmetric(xt, wt, qh, stretch)
        grow = 1 + np.linspace(0, 0.06, 8, dtype=_F32)[:, None, None]
        d_all = _f16(np.abs(s).max(axis=0) / _F32(sh - 1) * grow)  # (8, 1, n)
        sc_all = np.clip(np.rint(np.where(d_all > 0, s / np.where(d_all > 0, d_all, 1), 0)), -sh, sh - 1)
        pick = np.argmin(((d_all * sc_all - s) ** 2 * sqq).sum(axis=1), axis=0)  # model of step 2
        cols = np.arange(n)
        d, sc = d_all[pick, 0, cols], sc_all[pick, :, cols].T
        sc, err = _sym_search_sc(xt, wt, d, sc, qh, sh)
        best = (d, sc, err.sum(axis=0))
        # least-squares d for the integer scales and their codes, then search the scales again
        q = np.empty_like(xt)
        _round_codes(xt, d * sc, qh * d * sc, 2 * qh - 1, q)
        q -= qh
        wq = q if wt is None else wt * q
        num = (sc * _dot32(wq, xt)).sum(axis=0, dtype=np.float64)
        den = (sc * sc * _dot32(wq, q)).sum(axis=0, dtype=np.float64)
        d2 = _f16(np.where(den > 0, num / np.where(den > 0, den, 1), 0))
        d2 = np.where(np.isfinite(d2) & (d2 > 0), d2, d)
        sc2, err2 = _sym_search_sc(xt, wt, d2, sc, qh, sh)
        better = err2.sum(axis=0) < best[2]
        d, sc = np.where(better, d2, best[0]), np.where(better, sc2, best[1])
        _round_codes(xt, d * sc, qh * d * sc, 2 * qh - 1, q)
        q, sc = np.nan_to_num(q), np.nan_to_num(sc)  # overflowed candidates lose to ggml's block anyway
    return d, sc.T.astype(np.int16), q.reshape(256, n).T.astype(np.uint8)


def search_q6_k(x: np.ndarray, weights: Optional[np.ndarray] = None):
    """(d float32 holding fp16 (n,), sc int8 (n, 16), levels uint8 0..63 (n, 256)) for x (n, 256)."""
    d, sc, levels = search_symmetric(x, weights, **_SYM[QType.Q6_K])
    return d, sc.astype(np.int8), levels


def encode_best_symmetric(qtype: QType, x: np.ndarray, weights: Optional[np.ndarray], ggml_encode) -> np.ndarray:
    """Mode ``"best"`` for Q6_K / Q3_K; ``ggml_encode()`` returns ggml's own blocks for ``x`` (n, 256)."""
    from ..codecs.kquants_sym import q3_k_pack, q6_k_pack

    qtype = QType(qtype)
    with np.errstate(all="ignore"):  # ggml's search overflows on huge inputs exactly as the C code does
        ggml_blocks = ggml_encode()
    d, sc, levels = search_symmetric(x, weights, **_SYM[qtype])
    if qtype == QType.Q6_K:
        ours = q6_k_pack(levels, sc.astype(np.int8), fp32_to_fp16_bits(d))
    else:  # Q3_K stores each scale + 32 as a 6-bit code
        ours = q3_k_pack(levels, (sc + 32).astype(np.uint8), fp32_to_fp16_bits(d))
    return keep_better(qtype, x, weights, ours, ggml_blocks)


def encode_best_q6_k(x: np.ndarray, weights: Optional[np.ndarray], ggml_encode) -> np.ndarray:
    """Mode ``"best"`` for Q6_K (see :func:`encode_best_symmetric`)."""
    return encode_best_symmetric(QType.Q6_K, x, weights, ggml_encode)
