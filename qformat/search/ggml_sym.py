"""ggml's scale searches for the *symmetric* k-quants (Q3_K, Q6_K), vectorized over sub-blocks.

These sit beside :mod:`qformat.search.ggml` (the scale+min searches ``make_qkx2_quants``,
``make_qp_quants``) and share its :func:`~qformat.search.ggml.nearest_int`; they are a separate module
only because the two were written in parallel by different people and may be merged later.

A symmetric quantizer stores ``x ~= d * q`` with a signed integer ``q`` in ``[-nmax, nmax-1]`` and
no minimum. ggml picks ``d`` for a group of ``n`` values with one of two searches, both ported here
operation for operation so the result is bit-identical to ggml's C code:

* :func:`make_qx_quants` (``rmse_type == 1``): start from ``d = max / -nmax`` (``max`` = the value of
  largest magnitude, so it maps to ``-nmax``, the one end of the range that has no positive twin),
  round, then least-squares refit ``d = sum(w x l) / sum(w l l)``; try 18 more starting points
  ``-(nmax + 0.1 * is) / max`` for ``is`` in ``-9..9`` (skipping 0) and keep the first one whose
  weighted error is strictly lower (compared as ``sumlx^2 / suml2``, larger is better).
  Weights are ``x*x`` or the caller's importance weights.
* :func:`make_q3_quants` (``do_rmse``): one rounding at ``d = max / -nmax``, then up to 5 passes of
  coordinate descent: for each element in order, re-round it against the refit scale of the others
  and keep the change when the weighted error (weights ``x*x``) strictly drops.

The rules that make the result bit-exact (and that these functions MUST keep):

* every quantity is float32, including the constants (``0.1f``, ``-nmax``);
* sums run left to right over the ``n`` elements, starting at ``+0.0`` (a pairwise ``np.sum`` can
  differ in the last bit, and starting from the first term instead of ``0`` flips ``-0.0``);
* products associate left to right as written in C: ``w*x*l`` is ``(w*x)*l``;
* rounding is :func:`nearest_int`, ggml's float trick, not ``np.rint``: it agrees with
  round-half-to-even for ``|v| < 2**22`` and returns ggml's exact garbage outside that range;
* the largest magnitude is the *first* element reaching it (strict ``>``);
* a group whose largest magnitude is below ``GROUP_MAX_EPS = 1e-15`` gets scale 0 and all-zero
  levels (not the mid level), exactly as ggml writes them.

Arrays are laid out ``(n, m)``: the ``n`` positions of a group on the leading axis, the ``m``
groups on the contiguous axis, so each sequential step is one vectorized operation over all groups.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .ggml import GROUP_MAX_EPS, nearest_int

__all__ = ["GROUP_MAX_EPS", "nearest_int", "sequential_sum", "first_absmax", "make_qx_quants", "make_q3_quants"]

_F32 = np.float32
_MAGIC = _F32(12582912.0)  # 1.5 * 2**23


def sequential_sum(terms: np.ndarray) -> np.ndarray:
    """Sum ``terms`` over axis 0 one element at a time, starting from ``+0.0``, in float32.

    This is C's ``float s = 0; for (...) s += t;`` to the bit. Starting from ``+0.0`` (not from the
    first term) matters: a sum of nothing but ``-0.0`` terms (products that underflowed with a
    negative sign) is ``+0.0`` in C, and that sign can survive into an fp16 scale byte.
    ``np.add.reduce`` over the leading axis of a C-contiguous 2-D array with two or more columns adds
    row after row (numpy sums pairwise only along the innermost axis); other shapes take the loop.
    ``tests/test_kquants_sym.py`` guards this against the explicit loop.
    """
    terms = np.ascontiguousarray(terms, dtype=np.float32)
    if terms.ndim == 2 and terms.shape[1] >= 2:
        return np.add.reduce(terms, axis=0, initial=_F32(0.0))
    acc = np.zeros(terms.shape[1:], dtype=np.float32)
    for t in terms:
        acc = acc + t
    return acc


def first_absmax(a: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(signed value, magnitude) of the first element of largest magnitude along ``axis``, C-style.

    ggml scans ``if (fabsf(v) > amax) { amax = fabsf(v); max = v; }`` from ``amax = max = 0``: the
    first maximum wins, a NaN never wins (every comparison with it is false), and a group with
    nothing above zero reports ``(+0.0, 0.0)``.
    """
    a = np.asarray(a, dtype=np.float32)
    if axis == 0 and a.shape[0] <= 64:
        # the C scan itself, vectorized across the groups (argmax down a strided axis is slower)
        amax = np.zeros(a.shape[1:], dtype=np.float32)
        vmax = np.zeros(a.shape[1:], dtype=np.float32)
        for row in a:
            ax = np.abs(row)
            gt = ax > amax
            amax = np.where(gt, ax, amax)
            vmax = np.where(gt, row, vmax)
        return vmax, amax
    ax = np.abs(a)
    ax = np.where(ax > 0, ax, _F32(0.0))  # NaN and -0.0 lose to everything, as in the C scan
    idx = np.expand_dims(np.argmax(ax, axis=axis), axis)  # argmax returns the first maximum
    mag = np.take_along_axis(ax, idx, axis=axis).squeeze(axis)
    val = np.take_along_axis(a, idx, axis=axis).squeeze(axis)
    return np.where(mag > 0, val, _F32(0.0)).astype(np.float32), mag.astype(np.float32)


def _clamp(l: np.ndarray, nmax: int) -> np.ndarray:
    return np.minimum(np.maximum(l, -nmax), nmax - 1)


def make_qx_quants(xt: np.ndarray, nmax: int, weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`` for every column of ``xt``.

    ``xt``: float32 ``(n, m)``, one group per column; ``weights``: same shape or ``None`` (then
    ``x*x``). Returns ``(scale float32 (m,), levels int32 (n, m))`` with levels in
    ``[0, 2*nmax - 1]`` (stored offset by ``nmax``), or all 0 for a group below ``GROUP_MAX_EPS``.
    """
    xt = np.asarray(xt, dtype=np.float32)
    vmax, amax = first_absmax(xt)
    live = amax >= GROUP_MAX_EPS
    safe_max = np.where(live, vmax, _F32(1.0))  # dead groups get a harmless divisor; masked at the end
    w = xt * xt if weights is None else np.asarray(weights, dtype=np.float32)
    wx = w * xt

    lf = np.empty_like(xt)
    term = np.empty_like(xt)

    # For finite x, |iscale * x| <= nmax + 1 by construction (|x| <= |max|), far below 2**22, so
    # rounding in the float domain, (v + 1.5*2**23) - 1.5*2**23, is exactly nearest_int(v) and
    # saves the round trip through int32. Inputs that are themselves computed (Q3_K quantizes its
    # sub-block scales, which overflowing data can turn into inf/NaN) take the exact C trick.
    float_round = bool(np.isfinite(xt).all())

    def fit(iscale):
        np.multiply(iscale, xt, out=lf)
        if float_round:
            np.add(lf, _MAGIC, out=lf)
            np.subtract(lf, _MAGIC, out=lf)
            np.clip(lf, _F32(-nmax), _F32(nmax - 1), out=lf)
        else:
            lf[...] = _clamp(nearest_int(lf), nmax)
        sumlx = sequential_sum(np.multiply(wx, lf, out=term))
        np.multiply(w, lf, out=term)
        np.multiply(term, lf, out=term)
        return sumlx, sequential_sum(term)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        best_iscale = _F32(-nmax) / safe_max
        sumlx, suml2 = fit(best_iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, _F32(0.0)).astype(np.float32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(_F32(nmax) + _F32(0.1) * _F32(step)) / safe_max
            sumlx, suml2 = fit(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                # remember the winning inverse scale, not its levels: the levels are a pure function
                # of it and are rebuilt once at the end (copying (n, m) levels per step costs more)
                best_iscale = np.where(better, iscale, best_iscale)
                new_scale = sumlx / suml2
                scale = np.where(better, new_scale, scale)
                best = np.where(better, new_scale * sumlx, best)
        fit(best_iscale)
    np.add(lf, _F32(nmax), out=lf)
    levels = lf.astype(np.int32)
    if not live.all():
        levels[:, ~live] = 0
    scale = np.where(live, scale, _F32(0.0)).astype(np.float32)
    return scale, levels


def make_q3_quants(xt: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_q3_quants(n, nmax, x, L, do_rmse=true)`` for every column of ``xt`` (float32 ``(n, m)``).

    Returns ``(scale float32 (m,), levels int32 (n, m))``, levels offset by ``nmax`` into
    ``[0, 2*nmax - 1]`` (all 0 for a group below ``GROUP_MAX_EPS``).
    """
    xt = np.asarray(xt, dtype=np.float32)
    n, m = xt.shape
    vmax, amax = first_absmax(xt)
    live = amax >= GROUP_MAX_EPS
    safe_max = np.where(live, vmax, _F32(1.0))
    iscale = _F32(-nmax) / safe_max
    lv = _clamp(nearest_int(iscale * xt), nmax).astype(np.float32)  # signed levels, as floats
    w = xt * xt
    wx = w * xt
    sumlx = sequential_sum(wx * lv)
    suml2 = sequential_sum(w * lv * lv)
    cols = np.flatnonzero(live)  # groups still descending; a pass without a change retires a group
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(5):
            if cols.size == 0:
                break
            if cols.size == m:  # typically the first pass: work in place, no gather
                x_a, w_a, wx_a, l_a, slx_a, sl2_a = xt, w, wx, lv, sumlx, suml2
            else:  # later passes touch only the few groups that changed in the previous one
                x_a, w_a, wx_a, l_a = xt[:, cols], w[:, cols], wx[:, cols], lv[:, cols]
                slx_a, sl2_a = sumlx[cols], suml2[cols]
            changed = np.zeros(cols.size, dtype=bool)
            for i in range(n):
                li = l_a[i]
                slx = slx_a - wx_a[i] * li
                sl2 = sl2_a - w_a[i] * li * li
                # x*sl2/slx can be huge or NaN here, so the exact C rounding trick is kept
                new_l = _clamp(nearest_int(x_a[i] * sl2 / slx), nmax).astype(np.float32)
                slx_new = slx + wx_a[i] * new_l
                sl2_new = sl2 + w_a[i] * new_l * new_l
                take = (slx > 0) & (new_l != li) & (sl2_new > 0)
                take &= slx_new * slx_new * sl2_a > slx_a * slx_a * sl2_new
                l_a[i] = np.where(take, new_l, li)
                slx_a = np.where(take, slx_new, slx_a)
                sl2_a = np.where(take, sl2_new, sl2_a)
                changed |= take
            lv[:, cols] = l_a
            sumlx[cols] = slx_a
            suml2[cols] = sl2_a
            cols = cols[changed]
        scale = np.where(suml2 > 0, sumlx / suml2, _F32(0.0)).astype(np.float32)
    scale = np.where(live, scale, _F32(0.0)).astype(np.float32)
    levels = np.where(live, lv.astype(np.int32) + nmax, 0)
    return scale, levels
