"""Bit-exact, vectorized ports of the parameter searches in ggml's ``ggml-quants.c``.

Two families of search live here:

* scale + min (``x ~= scale * code - min`` with unsigned codes; Q2_K, Q4_K, Q5_K, Q4_1, Q5_1):
  :func:`make_qkx2_quants`, :func:`make_qkx3_quants`, and :func:`make_qp_quants` for quantizing a
  super-block's sub-scales;
* symmetric (``x ~= d * q`` with a signed ``q``, no min; Q3_K, Q6_K, Q4_0...): :func:`make_qx_quants`
  and :func:`make_q3_quants`.

Each function handles many groups at once: a group's values run down the leading axis, groups
across the trailing axis (see :mod:`qformat.search`), so each sequential step of ggml's loops is
one vectorized operation over all groups. To reproduce ggml's bytes the ports MUST:

* compute every intermediate in float32, constants included (``0.1f``, ``-nmax``), in ggml's
  operation order (``a*b*c`` is ``(a*b)*c``; ``w*d*d`` and ``w*(d*d)`` round differently, and ggml
  uses both);
* sum a group one value after another (:func:`seqsum`), never pairwise, and start where the C loop
  starts: from ``+0.0`` (``float s = 0``; a sum of only ``-0.0`` terms is then ``+0.0``) or, where
  ggml initialises the sum with the first term, from that term (``from_first=True``);
* round with :func:`nearest_int`, ggml's float trick (ties to even), including its behaviour on
  values it was never meant to see (huge, inf, NaN), since the encoders MUST accept any finite input;
* take the *first* extreme value where ggml scans with a strict ``<``/``>``;
* emulate C's integer conversions: a code stored into a ``uint8_t`` wraps modulo 256.

The scale + min searches return scales and mins as float32 ``(ngroups,)`` and codes as uint8
``(group_len, ngroups)``; the symmetric ones return ``(scale, levels int32 (group_len, ngroups))``.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

f32 = np.float32

#: adding 1.5 * 2^23 leaves round(x) in the low mantissa bits (valid for |x| < 2^22)
_ROUND_MAGIC = f32(12582912.0)
#: ggml's threshold below which a group's largest value counts as zero (GROUP_MAX_EPS)
GROUP_MAX_EPS = f32(1e-15)


def quiet(fn):
    """Run ``fn`` with numpy's floating-point warnings off: like ggml's C, the searches meet inf and
    NaN on extreme (finite) inputs and carry them through silently, with well-defined results."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: round float32 ``v`` half to even via the 1.5*2^23 trick -> int32.

    Reproduces the C bit manipulation exactly, so out-of-range, inf and NaN inputs give the same
    (meaningless but deterministic) integers ggml gets.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.add(v, _ROUND_MAGIC, dtype=np.float32)
    i = s.view(np.int32)
    return (i & 0x007FFFFF) - 0x00400000


def seqsum(a: np.ndarray, *, from_first: bool = False) -> np.ndarray:
    """Sum over the leading axis one value after another, in float32 (ggml's ``for`` loop order).

    By default this is C's ``float s = 0; for (...) s += t;`` to the bit; with ``from_first`` it is
    ``float s = t[0]; for (i = 1; ...) s += t[i];``. The two differ only in the sign of a sum of
    nothing but ``-0.0`` terms (``+0.0`` from zero, ``-0.0`` from the first term), a sign that can
    survive into an fp16 scale byte. ``np.add.reduce`` over axis 0 of a C-contiguous 2-D array adds
    row by row from ``+0.0`` (sequential per column); numpy only switches to pairwise summation
    when the reduced axis is the innermost one, which happens with a single column, so that case is
    summed explicitly. ``tests/test_q4_k.py`` and ``tests/test_kquants_sym.py`` check both forms.
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 2 and a.shape[1] >= 2:
        acc = np.add.reduce(a, axis=0, initial=f32(0))
    else:
        acc = np.zeros(a.shape[1:], dtype=np.float32)
        for t in a:
            acc = acc + t
    if from_first:
        # s + t is -0.0 only when both are -0.0, so the two forms differ exactly where every term
        # is -0.0: there the sum from the first term is -0.0, the one from zero +0.0
        zero = acc == 0
        if np.any(zero):
            neg_zero = ((a == 0) & np.signbit(a)).all(axis=0)
            acc = np.where(neg_zero, f32(-0.0), acc).astype(np.float32)
    return acc


def _clamp_codes(v: np.ndarray, nmax: int) -> np.ndarray:
    """``MAX(0, MIN(nmax, nearest_int(v)))``."""
    return np.clip(nearest_int(v), 0, nmax)


#: below this magnitude adding and subtracting 1.5*2^23 rounds exactly as nearest_int does
_FLOAT_ROUND_LIMIT = f32(2.0**22)


def _codes_into(out: np.ndarray, x: np.ndarray, cmin: np.ndarray, iscale: np.ndarray,
                vmin: np.ndarray, vmax: np.ndarray, nmax: int) -> None:
    """``out = MAX(0, MIN(nmax, nearest_int(iscale * (x - cmin))))`` as float32, per column.

    Fast path in float: for |v| < 2^22, ``(v + 1.5*2^23) - 1.5*2^23`` is exactly nearest_int(v).
    Rounding is monotone, so every ``v`` of a column lies between its values at the column's
    ``vmin`` and ``vmax``; only when a column's bound reaches 2^22 (or is inf/NaN) does the C bit
    trick, whose result is then not the rounded value, have to be emulated.
    """
    at_vmin = iscale * (vmin - cmin)
    at_vmax = iscale * (vmax - cmin)
    low = np.minimum(at_vmin, at_vmax)
    high = np.maximum(at_vmin, at_vmax)
    np.subtract(x, cmin, out=out)
    out *= iscale
    if (np.maximum(-low, high) < _FLOAT_ROUND_LIMIT).all():
        out += _ROUND_MAGIC
        out -= _ROUND_MAGIC
        # finite here, and never -0.0 (x + M - M rounds to +0), so max/min equal C's MAX/MIN;
        # np.clip would give the same values but is several times slower on float32. Each clamp
        # is skipped when no column can reach it: -0.5 rounds to 0, nmax + 0.5 (nmax odd) to nmax + 1
        if not (low >= f32(-0.5)).all():
            np.maximum(out, f32(0), out=out)
        if not (high < f32(nmax) + f32(0.5)).all():
            np.minimum(out, f32(nmax), out=out)
    else:
        out[...] = _clamp_codes(out, nmax)


def _weighted_error(tmp: np.ndarray, lf: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                    x: np.ndarray, w: np.ndarray, use_mad: bool) -> np.ndarray:
    """Per column ``sum(w * e)`` with ``d = scale*code + offset - x`` (ggml's order) and ``e = d*d``,
    or ``e = |d|`` when ``use_mad``; ``tmp`` is scratch space."""
    np.multiply(lf, scale, out=tmp)
    tmp += offset
    tmp -= x
    if use_mad:
        np.abs(tmp, out=tmp)
    else:
        tmp *= tmp
    tmp *= w
    return seqsum(tmp)


@quiet
def _make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool = False):
    """The search shared by ggml's ``make_qkx2_quants`` and ``make_qkx3_quants``.

    For each group: start from the codes of the full [min, max] range (min clamped to <= 0), then
    try ``nstep + 1`` candidate inverse scales ``(rmin + rdelta*is + nmax) / (max - min)``; for each,
    round the codes, fit scale and offset by weighted least squares (offset forced to 0 when the
    fit wants it positive) and keep the fit if its weighted error is lower: squared error, or
    absolute error with ``use_mad`` (the fit itself is least squares either way). The running
    ``min`` is replaced by each kept fit's offset, and later candidates are computed from it.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    # the FIRST smallest value, as C's strict '<' scan keeps it: its zero sign reaches a flat group's min
    vmin = x[np.argmin(x, axis=0), np.arange(x.shape[1])]
    vmax = x.max(axis=0)
    sum_w = seqsum(w, from_first=True)  # ggml starts these two from the first value, not from 0
    sum_x = seqsum(w * x, from_first=True)
    vmin = np.where(vmin > 0, f32(0), vmin)
    flat = vmax == vmin
    fmax = f32(nmax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fmax / (vmax - vmin)
        scale = f32(1) / iscale
        lf = np.empty_like(x)  # candidate codes, as float32
        tmp = np.empty_like(x)
        _codes_into(lf, x, vmin, iscale, vmin, vmax, nmax)
        best = _weighted_error(tmp, lf, scale, vmin, x, w, use_mad)
        # the kept candidate is remembered by the (inverse scale, min) that produced its codes, and
        # its codes rebuilt once at the end, instead of copying codes at every improvement
        best_iscale, best_cmin = iscale, vmin
        cur_min = vmin.copy()
        wl = np.empty_like(x)
        for step in range(nstep + 1 if nstep >= 1 else 0):
            num = f32(rmin) + f32(rdelta) * f32(step) + fmax
            iscale = num / (vmax - cur_min)
            _codes_into(lf, x, cur_min, iscale, vmin, vmax, nmax)
            np.multiply(w, lf, out=wl)
            sum_l = seqsum(wl)
            np.multiply(wl, lf, out=tmp)
            sum_l2 = seqsum(tmp)
            np.multiply(wl, x, out=tmp)
            sum_xl = seqsum(tmp)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min = np.where(pos, f32(0), this_min)
                this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            err = _weighted_error(tmp, lf, this_scale, this_min, x, w, use_mad)
            better = (D > 0) & (err < best)
            if better.any():
                best = np.where(better, err, best)
                scale = np.where(better, this_scale, scale)
                best_iscale = np.where(better, iscale, best_iscale)
                best_cmin = np.where(better, cur_min, best_cmin)
                cur_min = np.where(better, this_min, cur_min)
        _codes_into(lf, x, best_cmin, best_iscale, vmin, vmax, nmax)
        L = lf.astype(np.uint8)
    # a flat group (max == min): all codes 0, scale 0, offset the clamped min
    if flat.any():
        L[:, flat] = 0
        scale = np.where(flat, f32(0), scale)
        cur_min = np.where(flat, vmin, cur_min)
    return L, scale.astype(np.float32), (-cur_min).astype(np.float32)


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool = False):
    """ggml ``make_qkx2_quants`` on ``(group_len, ngroups)`` float32 values (Q4_K/Q5_K pass
    ``use_mad=false``, Q2_K ``true``).

    Returns ``(codes uint8 (group_len, ngroups), scale (ngroups,), the_min (ngroups,))``; a group
    decodes as ``scale * code - the_min``.
    """
    return _make_qkx_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad)


def make_qkx3_quants(x: np.ndarray, weights: Optional[np.ndarray], nmax: int, rmin: float, rdelta: float,
                     nstep: int):
    """ggml ``make_qkx3_quants`` (``use_mad=false``): as :func:`make_qkx2_quants`, but without
    weights each value is weighted by its own square."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = x * x if weights is None else weights
    return _make_qkx_quants(x, w, nmax, rmin, rdelta, nstep)


@quiet
def make_qp_quants(x: np.ndarray, nmax: int, quant_weights: np.ndarray):
    """ggml ``make_qp_quants``: quantize non-negative values (a block's sub-scales) to ``0..nmax``
    with one scale and no offset, under importance weights.

    ``x`` and ``quant_weights`` are float32 ``(n, ngroups)``. Steps: scale from the largest value
    (a group whose largest value is below 1e-15 gets codes 0 and scale 0); try 8 nearby inverse
    scales and keep the lowest weighted squared error; then up to 5 passes of coordinate descent that
    move one code at a time while that raises ``sumlx^2 / suml2``; the scale is ``sumlx / suml2``.
    Returns ``(codes uint8 (n, ngroups), scale (ngroups,))``; codes wrap modulo 256 like ggml's.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    qw = np.ascontiguousarray(quant_weights, dtype=np.float32)
    n = x.shape[0]
    fmax = f32(nmax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        vmax = np.zeros(x.shape[1], dtype=np.float32)
        for i in range(n):  # C's MAX(a, b) = a > b ? a : b, in order (matters only for NaN)
            vmax = np.where(vmax > x[i], vmax, x[i])
        zero = vmax < GROUP_MAX_EPS
        iscale = fmax / vmax
        L = (nearest_int(iscale * x) & 0xFF).astype(np.float32)  # stored into uint8_t
        scale = f32(1) / iscale
        diff = x - scale * L
        best = seqsum(qw * diff * diff)
        for k in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_k = (f32(0.1) * f32(k) + fmax) / vmax
            scale_k = f32(1) / iscale_k
            lk = np.minimum(nearest_int(iscale_k * x), nmax).astype(np.float32)
            diff = x - scale_k * lk
            mse = seqsum(qw * diff * diff)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, iscale_k, iscale)
        li = np.minimum(nearest_int(iscale * x), nmax)
        lf = li.astype(np.float32)
        sumlx = seqsum(qw * x * lf)
        suml2 = seqsum(qw * lf * lf)
        Lc = (li & 0xFF).astype(np.float32)  # the stored uint8 codes, as floats
        active = np.ones(x.shape[1], dtype=bool)
        for _ in range(5):
            changed = np.zeros(x.shape[1], dtype=bool)
            for i in range(n):
                wi, xi, li_ = qw[i], x[i], Lc[i]
                slx = sumlx - wi * xi * li_
                sl2 = suml2 - wi * li_ * li_
                ok = active & (slx > 0) & (sl2 > 0)
                new_l = np.minimum(nearest_int(xi * sl2 / slx), nmax)
                new_f = new_l.astype(np.float32)
                ok &= new_f != li_
                slx = slx + wi * xi * new_f
                sl2 = sl2 + wi * new_f * new_f
                ok &= (slx * slx * suml2) > (sumlx * sumlx * sl2)
                if ok.any():
                    Lc[i] = np.where(ok, (new_l & 0xFF).astype(np.float32), li_)
                    sumlx = np.where(ok, slx, sumlx)
                    suml2 = np.where(ok, sl2, suml2)
                    changed |= ok
            active &= changed
            if not active.any():
                break
        result = np.where(suml2 > 0, sumlx / suml2, f32(0)).astype(np.float32)
    codes = Lc.astype(np.uint8)
    if zero.any():
        codes[:, zero] = 0
        result = np.where(zero, f32(0), result)
    return codes, result


# ==== symmetric searches: x ~= d * q, signed q in [-nmax, nmax - 1], no min ===========================
#
# * make_qx_quants (``rmse_type == 1``): start from ``d = max / -nmax`` (``max`` = the value of largest
#   magnitude, so it maps to ``-nmax``, the end of the range without a positive twin), round, refit
#   ``d = sum(w x l) / sum(w l l)``; try 18 more starting points ``-(nmax + 0.1 * is) / max`` for
#   ``is`` in ``-9..9`` (skipping 0) and keep each one whose weighted error is strictly lower
#   (compared as ``sumlx^2 / suml2``, larger is better). Weights ``x*x`` or the caller's.
# * make_q3_quants (``do_rmse``): one rounding at ``d = max / -nmax``, then up to 5 passes of
#   coordinate descent: each element in turn is re-rounded against the refit scale of the others
#   and the change kept when the weighted error (weights ``x*x``) strictly drops.
# A group whose largest magnitude is below GROUP_MAX_EPS gets scale 0 and all-zero levels (not the
# mid level), as ggml writes them.


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
    ax = np.where(ax > 0, ax, f32(0.0))  # NaN and -0.0 lose to everything, as in the C scan
    idx = np.expand_dims(np.argmax(ax, axis=axis), axis)  # argmax returns the first maximum
    mag = np.take_along_axis(ax, idx, axis=axis).squeeze(axis)
    val = np.take_along_axis(a, idx, axis=axis).squeeze(axis)
    return np.where(mag > 0, val, f32(0.0)).astype(np.float32), mag.astype(np.float32)


def _clamp_signed(l: np.ndarray, nmax: int) -> np.ndarray:
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
    safe_max = np.where(live, vmax, f32(1.0))  # dead groups get a harmless divisor; masked at the end
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
            np.add(lf, _ROUND_MAGIC, out=lf)
            np.subtract(lf, _ROUND_MAGIC, out=lf)
            np.clip(lf, f32(-nmax), f32(nmax - 1), out=lf)
        else:
            lf[...] = _clamp_signed(nearest_int(lf), nmax)
        sumlx = seqsum(np.multiply(wx, lf, out=term))
        np.multiply(w, lf, out=term)
        np.multiply(term, lf, out=term)
        return sumlx, seqsum(term)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        best_iscale = f32(-nmax) / safe_max
        sumlx, suml2 = fit(best_iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0.0)).astype(np.float32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(f32(nmax) + f32(0.1) * f32(step)) / safe_max
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
    np.add(lf, f32(nmax), out=lf)
    levels = lf.astype(np.int32)
    if not live.all():
        levels[:, ~live] = 0
    scale = np.where(live, scale, f32(0.0)).astype(np.float32)
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
    safe_max = np.where(live, vmax, f32(1.0))
    iscale = f32(-nmax) / safe_max
    lv = _clamp_signed(nearest_int(iscale * xt), nmax).astype(np.float32)  # signed levels, as floats
    w = xt * xt
    wx = w * xt
    sumlx = seqsum(wx * lv)
    suml2 = seqsum(w * lv * lv)
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
                new_l = _clamp_signed(nearest_int(x_a[i] * sl2 / slx), nmax).astype(np.float32)
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
        scale = np.where(suml2 > 0, sumlx / suml2, f32(0.0)).astype(np.float32)
    scale = np.where(live, scale, f32(0.0)).astype(np.float32)
    levels = np.where(live, lv.astype(np.int32) + nmax, 0)
    return scale, levels
