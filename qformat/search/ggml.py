"""Bit-exact, vectorized ports of the parameter searches in ggml's ``ggml-quants.c``.

Each function handles many groups at once: a group's values run down the leading axis, groups
across the trailing axis (see :mod:`qformat.search`). To reproduce ggml's bytes the ports MUST:

* compute every intermediate in float32, in ggml's operation order (``a*b*c`` is ``(a*b)*c``;
  ``w*d*d`` and ``w*(d*d)`` round differently, and ggml uses both);
* sum a group sequentially from its first value (:func:`seqsum`), never pairwise;
* round with :func:`nearest_int`, ggml's float trick (ties to even), including its behaviour on
  values it was never meant to see (huge, inf, NaN), since the encoders MUST accept any finite input;
* emulate C's integer conversions: a code stored into a ``uint8_t`` wraps modulo 256.

Scales and mins are returned as float32 arrays of shape ``(ngroups,)``, codes as uint8
``(group_len, ngroups)``.
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


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the leading axis one value after another, in float32 (ggml's ``for`` loop order).

    ``np.add.reduce`` over axis 0 of a C-contiguous 2-D array adds row by row (sequential per
    column); numpy only switches to pairwise summation when the reduced axis is the innermost one,
    which happens when there is a single column, so that case is summed explicitly.
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 2 and a.shape[1] >= 2:
        return np.add.reduce(a, axis=0)
    acc = a[0].copy()
    for i in range(1, a.shape[0]):
        acc += a[i]
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
    sum_w = seqsum(w)
    sum_x = seqsum(w * x)
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
