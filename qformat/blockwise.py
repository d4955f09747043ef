"""Blockwise quantization as a family: any bit width, any block size, first or second order.

This is the general scheme of which ggml's fixed formats are members (see
``spec/codecs/blockwise.md``): a tensor's rows are cut into blocks of ``block_size`` values, and each
block is stored as ``n_bits``-bit integer codes plus one or two float parameters.

First order (one scale, optionally one minimum, per block; float64 arithmetic):

* absmax (``use_min=False``): ``s = v / -2^(n-1)`` where ``v`` is the block's value of largest
  magnitude WITH ITS SIGN (the first one, if several tie), so ``v`` itself is code ``-2^(n-1)`` and
  is reproduced exactly; codes ``q = clip(round(x / s), -2^(n-1), 2^(n-1) - 1)``; ``x' = q * s``.
  (Dividing by ``|v|`` instead, as the notebook this module grew from did, makes ``s`` negative and
  sends a negative ``v`` to ``+2^(n-1)``, which is clipped: the block's largest value is always off by
  a whole step. ggml's Q4_0 uses the signed rule, ``d = max / -8``.)
* min/scale (``use_min=True``): ``m = min(x)``, ``s = (max(x) - m) / (2^n - 1)``; codes
  ``q = clip(round((x - m) / s), 0, 2^n - 1)``; ``x' = q * s + m`` (ggml's Q4_1 with 4 bits).
* A block whose scale is 0 (all zero, or constant with ``use_min``) gets codes 0 and decodes to 0
  (or to its constant) exactly; nothing is ever divided by zero.

Second order (``s_bits`` given): the per-block scales, and the mins, are themselves quantized to
``s_bits``-bit signed codes with ONE absmax scale per tensor each, by the same signed rule
(``step = v / -2^(s_bits-1)``), so only the codes and two floats per tensor are stored. The block
codes are then computed against the scales and mins as they will be decoded (``codes_from="stored"``,
the default: each value goes to the nearest point of the grid it will really be decoded on, so the
error is never higher than the alternative) or against the unrounded ones (``codes_from="exact"``,
the order of the notebook, kept to reproduce its figures).

Rounding is ``numpy.round`` (half to even). Codes are int8 (absmax) or uint8 (min/scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import CodecError

__all__ = ["BlockwiseParams", "BlockwiseQuantized", "quantize", "dequantize"]


@dataclass(frozen=True)
class BlockwiseParams:
    """How a tensor was quantized, and the per-block parameters its codes decode with."""

    n_bits: int
    block_size: int
    use_min: bool
    #: per-block scale as decoding uses it (after second-order quantization), float64 ``(nblocks,)``
    scales: np.ndarray
    #: per-block minimum as decoding uses it, or None for absmax
    mins: Optional[np.ndarray]
    #: second order: bits of the scale/min codes, the codes (int8), and the per-tensor steps
    s_bits: Optional[int] = None
    scale_codes: Optional[np.ndarray] = None
    min_codes: Optional[np.ndarray] = None
    scale_step: Optional[float] = None
    min_step: Optional[float] = None

    @property
    def second_order(self) -> bool:
        return self.s_bits is not None


@dataclass(frozen=True)
class BlockwiseQuantized:
    """Codes (same shape as the input) and the parameters to decode them."""

    codes: np.ndarray
    params: BlockwiseParams

    def dequantize(self) -> np.ndarray:
        return dequantize(self)

    @property
    def shape(self) -> tuple:
        return self.codes.shape


def _signed_absmax(v: np.ndarray, axis: int = -1) -> np.ndarray:
    """The first value of largest magnitude along ``axis``, with its sign."""
    idx = np.expand_dims(np.argmax(np.abs(v), axis=axis), axis)
    return np.take_along_axis(v, idx, axis).squeeze(axis)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den != 0``, else 0 (a zero scale means every code is 0)."""
    den = np.broadcast_to(den, np.broadcast_shapes(np.shape(num), np.shape(den)))
    return np.divide(num, den, out=np.zeros(den.shape), where=den != 0)


def _absmax_quantize(v: np.ndarray, bits: int) -> tuple[np.ndarray, float]:
    """One tensor-wide signed absmax step for the 1-D ``v`` -> (int8 codes, step)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    step = float(_signed_absmax(v) / lo) if v.size else 0.0
    codes = np.clip(np.round(_safe_div(v, np.float64(step))), lo, hi)
    return codes.astype(np.int8), step


def _check(x: np.ndarray, n_bits: int, block_size: int, s_bits: Optional[int], codes_from: str) -> None:
    if not (isinstance(n_bits, (int, np.integer)) and 2 <= n_bits <= 8):
        raise CodecError(f"blockwise: n_bits must be an integer from 2 to 8, got {n_bits!r}")
    if not (isinstance(block_size, (int, np.integer)) and block_size >= 1):
        raise CodecError(f"blockwise: block_size must be a positive integer, got {block_size!r}")
    if s_bits is not None and not (isinstance(s_bits, (int, np.integer)) and 2 <= s_bits <= 8):
        raise CodecError(f"blockwise: s_bits must be None or an integer from 2 to 8, got {s_bits!r}")
    if codes_from not in ("stored", "exact"):
        raise CodecError(f"blockwise: codes_from must be 'stored' or 'exact', got {codes_from!r}")
    if x.ndim == 0 or x.shape[-1] % block_size:
        raise CodecError(f"blockwise: row length {x.shape[-1] if x.ndim else 0} is not a multiple of "
                         f"the block size {block_size}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
        raise CodecError(f"blockwise: input has a non-finite value (first at flat index {bad})")


def quantize(x, n_bits: int = 4, block_size: int = 32, *, use_min: bool = False, s_bits: Optional[int] = None,
             codes_from: str = "stored") -> BlockwiseQuantized:
    """Quantize ``x`` (any shape; blocks run along the last axis) blockwise. See the module doc."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise CodecError(f"blockwise: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    _check(arr, n_bits, block_size, s_bits, codes_from)
    blocks = arr.reshape(-1, block_size)

    if use_min:
        lo_code, hi_code = 0, (1 << n_bits) - 1
        mins = blocks.min(axis=1)
        scales = (blocks.max(axis=1) - mins) / hi_code
    else:
        lo_code, hi_code = -(1 << (n_bits - 1)), (1 << (n_bits - 1)) - 1
        mins = None
        scales = _signed_absmax(blocks) / lo_code

    extra = {}
    used_scales, used_mins = scales, mins
    if s_bits is not None:
        sc_codes, sc_step = _absmax_quantize(scales, s_bits)
        used_scales = sc_codes * sc_step
        extra = dict(s_bits=int(s_bits), scale_codes=sc_codes, scale_step=sc_step)
        if use_min:
            mn_codes, mn_step = _absmax_quantize(mins, s_bits)
            used_mins = mn_codes * mn_step
            extra.update(min_codes=mn_codes, min_step=mn_step)

    fit_s, fit_m = (used_scales, used_mins) if codes_from == "stored" else (scales, mins)
    shifted = blocks - fit_m[:, None] if use_min else blocks
    codes = np.clip(np.round(_safe_div(shifted, fit_s[:, None])), lo_code, hi_code)
    codes = codes.astype(np.uint8 if use_min else np.int8).reshape(arr.shape)
    params = BlockwiseParams(int(n_bits), int(block_size), bool(use_min), used_scales, used_mins, **extra)
    return BlockwiseQuantized(codes, params)


def dequantize(q: BlockwiseQuantized) -> np.ndarray:
    """float64 values ``codes * scale (+ min)``, in the shape of the quantized input."""
    p = q.params
    blocks = q.codes.reshape(-1, p.block_size).astype(np.float64) * p.scales[:, None]
    if p.use_min:
        blocks = blocks + p.mins[:, None]
    return blocks.reshape(q.codes.shape)
