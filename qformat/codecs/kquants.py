"""The k-quant family: 256-value super-blocks split into sub-blocks with quantized scales.

Common rules (ggml ``ggml-common.h`` / ``ggml-quants.c``):

* A super-block holds ``QK_K = 256`` values; every k-quant block MUST be exactly its
  :data:`qformat.types.BLOCK` size. fp16 fields are little-endian binary16.
* Q4_K and Q5_K split a super-block into 8 sub-blocks of 32 values. Sub-block ``j`` decodes as
  ``(d * sc[j]) * q - (dmin * m[j])`` with ``d``/``dmin`` the fp16 super-block scales, ``sc``/``m``
  the 6-bit sub-block scale and min (packed in 12 bytes, see :mod:`qformat.codecs.bits`) and ``q``
  the 4-bit (Q4_K) or 5-bit (Q5_K) code; each product and the difference are rounded to float32
  in that order (so decoding is bit-identical to ggml's ``dequantize_row_q4_K``/``_q5_K``).
* Q2_K splits a super-block into 16 sub-blocks of 16 values with 4-bit scales and mins (one byte
  per sub-block) and 2-bit codes; it decodes by the same formula (``spec/codecs/q2_k.md``).
* Mode ``"ggml"`` encoders MUST be byte-identical to ggml: without importance weights to
  ``quantize_row_<t>_ref`` (what ``llama-quantize`` does without an imatrix), with them to
  ``quantize_<t>`` (``quantize_row_<t>_impl``). The specs in ``spec/codecs/q2_k.md``, ``q4_k.md``
  and ``q5_k.md`` describe the encoders in words.

Every array here is float32 or uint8; the searches live in :mod:`qformat.search.ggml`. The entry
points run under :func:`~qformat.search.ggml.quiet`: inf/NaN intermediates on extreme finite inputs
are part of ggml's (and so our) defined behaviour, not errors.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import CodecError
from ..search.ggml import make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int, quiet, seqsum
from ..types import BLOCK, QType
from . import Codec, register
from .bits import (
    fp32_to_fp16_bits,
    pack_high_bits_k,
    pack_nibbles_k,
    pack_scale_min_k4,
    unpack_scale_min_k4,
    write_fp16,
)
from .floats import decode_fp16

f32 = np.float32
QK_K = 256
#: values per decode call: the decoders make a handful of broadcast passes whose per-call and
#: per-row overheads dominate at 64K values; 256K values (1 MB of output) measured ~1.25x faster
_DECODE_CHUNK = 1 << 18


# ==== shared helpers: 8 x 32 sub-blocks with 6-bit scales and mins (Q4_K, Q5_K) ====================

def _columns(x: np.ndarray, group: int) -> np.ndarray:
    """``(nblocks, 256)`` -> ``(group, nblocks * 256 // group)``: each sub-block becomes a column."""
    return np.ascontiguousarray(x.reshape(-1, group).T)


def _rows(cols: np.ndarray, group: int) -> np.ndarray:
    """Inverse of :func:`_columns`: ``(group, nsub)`` -> ``(nsub * group // 256, 256)``."""
    return np.ascontiguousarray(cols.T).reshape(-1, QK_K)


def _decode_scale_min(blocks: np.ndarray):
    """Per-sub-block float32 ``(d * sc, dmin * m)``, each ``(nblocks, 8)``, from bytes 0..15."""
    d_dmin = decode_fp16(np.ascontiguousarray(blocks[:, 0:4]).view("<u2"))  # (nblocks, 2)
    sc_m = unpack_scale_min_k4(blocks[:, 4:16]).astype(np.float32)  # (nblocks, 2, 8)
    sc_m *= d_dmin[:, :, None]  # inf * 0 is NaN, as in C
    return sc_m[:, 0], sc_m[:, 1]


@quiet
def _decode_sm(blocks: np.ndarray, planes) -> np.ndarray:
    """``(d * sc) * q - (dmin * m)`` per sub-block of 32.

    ``planes(h)`` returns the codes of the low (h=0) or high (h=1) half of every 64-value chunk as
    ``(nblocks, 4, 32)``; they are converted straight into those halves of the output. The two
    factors are then expanded to one per value, because full-length float passes are several
    times cheaper in numpy than passes broadcasting one factor over each run of 32.
    """
    dsc, dm = _decode_scale_min(blocks)
    n = blocks.shape[0]
    y = np.empty((n, 4, 2, 32), dtype=np.float32)
    for h in (0, 1):
        y[:, :, h] = planes(h)
    flat = y.reshape(-1)
    flat *= np.repeat(dsc.reshape(-1), 32)
    flat -= np.repeat(dm.reshape(-1), 32)
    return y.reshape(n, QK_K)


def _ref_weights(xc: np.ndarray) -> np.ndarray:
    """Reference-encoder weights of each value in a 32-column: ``rms(sub-block) + |x|``."""
    sum_x2 = seqsum(xc * xc)
    av_x = np.sqrt(sum_x2 / f32(32))
    return av_x + np.abs(xc)


def _impl_weights(x: np.ndarray, xc: np.ndarray, qw: Optional[np.ndarray], group: int = 32,
                  sigma_factor: float = 2.0) -> np.ndarray:
    """Weights of the imatrix encoder (``quantize_row_<t>_impl``), laid out like ``xc`` (group, nsub).

    With importance ``qw``: ``qw * sqrt(sigma2 + x^2)`` where ``sigma2 = sigma_factor * sum(x^2) / 256``
    over the super-block (factor 2 for Q4_K/Q5_K, 1 for Q2_K: ``1 * s`` is exactly ``s``);
    without: ``sqrt(sigma2) + |x|``.
    """
    xt = np.ascontiguousarray(x.T)  # (256, nblocks): one super-block per column
    sigma2 = f32(sigma_factor) * seqsum(xt * xt) / f32(QK_K)
    sig_cols = np.repeat(sigma2, QK_K // group)[None, :]  # one value per sub-block column
    if qw is None:
        return np.sqrt(sig_cols) + np.abs(xc)
    return _columns(qw, group) * np.sqrt(sig_cols + xc * xc)


def _scale_max(v: np.ndarray) -> np.ndarray:
    """``max`` over each super-block's 8 sub-block values, counting only values > 0 (ggml's loop)."""
    return np.where(v > 0, v, f32(0)).max(axis=1)


def _quantize_6bit(v: np.ndarray, vmax: np.ndarray) -> np.ndarray:
    """ggml's ``MIN(63, (uint8_t)nearest_int(63/vmax * v))``, 0 where ``vmax`` is not > 0."""
    inv = np.where(vmax > 0, f32(63) / vmax, f32(0))
    return np.minimum(nearest_int(inv[:, None] * v) & 0xFF, 63).astype(np.uint8)


def _final_codes(x: np.ndarray, dsc: np.ndarray, dm: np.ndarray, search_codes: np.ndarray,
                 nmax: int) -> np.ndarray:
    """Re-round every value against its stored scale ``dsc = d*sc`` and min ``dm = dmin*m``.

    ``dsc``/``dm`` are float32 ``(nblocks, nsub)`` as decoded from the block's bytes; each code is
    ``nearest_int((x + dm) / dsc)`` clamped to ``0..nmax``; a sub-block whose ``dsc`` is exactly
    zero keeps the codes the search produced (ggml skips it; a NaN ``dsc`` is not skipped).
    """
    nsub = dsc.shape[1]
    xs = x.reshape(-1, nsub, QK_K // nsub)
    q = np.clip(nearest_int((xs + dm[:, :, None]) / dsc[:, :, None]), 0, nmax)
    keep = (dsc == 0)[:, :, None]
    return np.where(keep, search_codes.reshape(xs.shape), q).astype(np.uint8).reshape(-1, QK_K)


def _head(d_bits: np.ndarray, dmin_bits: np.ndarray, packed_scales: np.ndarray) -> np.ndarray:
    """The first 16 bytes shared by Q4_K and Q5_K: d, dmin (fp16) and the 12 scale/min bytes."""
    head = np.empty((d_bits.shape[0], 16), dtype=np.uint8)
    write_fp16(head, 0, d_bits)
    write_fp16(head, 2, dmin_bits)
    head[:, 4:16] = packed_scales
    return head


def _encode_sm_ref(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """``quantize_row_q4_K_ref`` / ``_q5_K_ref`` up to the codes: returns (16-byte head, codes)."""
    xc = _columns(x, 32)
    codes, scales, mins = make_qkx2_quants(xc, _ref_weights(xc), nmax, rmin, rdelta, nstep)
    scales = scales.reshape(-1, 8)
    mins = mins.reshape(-1, 8)
    max_scale = _scale_max(scales)
    max_min = _scale_max(mins)
    ls = _quantize_6bit(scales, max_scale)
    lm = _quantize_6bit(mins, max_min)
    head = _head(fp32_to_fp16_bits(max_scale / f32(63)), fp32_to_fp16_bits(max_min / f32(63)),
                 pack_scale_min_k4(ls, lm))
    return head, _final_codes(x, *_decode_scale_min(head), _rows(codes, 32), nmax)


def _encode_sm_impl(x: np.ndarray, qw: Optional[np.ndarray], nmax: int, clamp_scales: bool):
    """``quantize_row_q4_K_impl`` / ``_q5_K_impl`` up to the codes: returns (16-byte head, codes)."""
    xc = _columns(x, 32)
    w = _impl_weights(x, xc, qw)
    sw = seqsum(w).reshape(-1, 8)
    codes, scales, mins = make_qkx3_quants(xc, w, nmax, -0.9, 0.05, 36)
    swt = np.ascontiguousarray(sw.T)
    ls, d_block = make_qp_quants(np.ascontiguousarray(scales.reshape(-1, 8).T), 63, swt)
    lm, m_block = make_qp_quants(np.ascontiguousarray(mins.reshape(-1, 8).T), 63, swt)
    ls, lm = ls.T, lm.T
    if clamp_scales:  # Q5_K's impl clamps to 63 before packing; Q4_K's packs the codes as they are
        ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    head = _head(fp32_to_fp16_bits(d_block), fp32_to_fp16_bits(m_block), pack_scale_min_k4(ls, lm))
    return head, _final_codes(x, *_decode_scale_min(head), _rows(codes, 32), nmax)


@quiet
def _encode_sm(x: np.ndarray, mode: str, weights: Optional[np.ndarray], nmax: int, ref_search: tuple,
               clamp_scales: bool):
    """Dispatch between the reference encoder (no weights) and the importance-weighted one."""
    if mode != "ggml":
        raise CodecError(f"unknown k-quant encode mode {mode!r}")
    if weights is None:
        return _encode_sm_ref(x, nmax, *ref_search)
    return _encode_sm_impl(x, weights, nmax, clamp_scales)


# ==== Q4_K: d fp16 @0 | dmin fp16 @2 | scales[12] @4 | qs[128] @16 (144 bytes) =====================

def _q4_k_decode(blocks: np.ndarray) -> np.ndarray:
    qs = blocks[:, 16:144].reshape(-1, 4, 32)
    return _decode_sm(blocks, lambda h: qs >> 4 if h else qs & 0x0F)


def _q4_k_encode(x: np.ndarray, *, mode: str = "ggml", weights: Optional[np.ndarray] = None) -> np.ndarray:
    if mode == "best":  # lower-error search, ggml's block kept where it is better (qformat.search.best)
        from ..search.best import encode_best
        return encode_best(QType.Q4_K, x, weights)
    # search: rmin -1, rdelta 0.1, 20 steps; the impl packs its 6-bit codes unclamped
    head, codes = _encode_sm(x, mode, weights, 15, (-1.0, 0.1, 20), clamp_scales=False)
    out = np.empty((x.shape[0], 144), dtype=np.uint8)
    out[:, :16] = head
    out[:, 16:] = pack_nibbles_k(codes)
    return out


register(Codec(QType.Q4_K, _q4_k_decode, _q4_k_encode, modes=("ggml", "best"), weighted=True,
               decode_chunk_values=_DECODE_CHUNK,
               doc="4.5 bpw: 8 x 32 sub-blocks, 6-bit scales and mins, 4-bit codes"))


# ==== Q5_K: d fp16 @0 | dmin fp16 @2 | scales[12] @4 | qh[32] @16 | qs[128] @48 (176 bytes) =========

#: qh is read as four little-endian 64-bit words per block; shifting a word right by s and keeping
#: bit 0 of every byte extracts bit s of 8 bytes at once
_EVERY_BYTE_BIT0 = np.uint64(0x0101010101010101)


def _q5_k_decode(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    qs = blocks[:, 48:176].reshape(n, 4, 32)
    qh = np.ascontiguousarray(blocks[:, 16:48]).view("<u8")  # (nblocks, 4)
    bit4 = np.empty((8, n, 4), dtype=np.uint64)  # plane p = 2c + h first: long contiguous passes
    for p in range(8):
        np.right_shift(qh, np.uint64(p), out=bit4[p])
    bit4 &= _EVERY_BYTE_BIT0
    bit4 <<= np.uint64(4)
    high = bit4.view(np.uint8).reshape(8, n, 32).transpose(1, 0, 2)  # (nblocks, plane, 32): 0 or 16

    def planes(h):
        low = qs >> 4 if h else qs & 0x0F
        return low | high[:, h::2]

    return _decode_sm(blocks, planes)


def _q5_k_encode(x: np.ndarray, *, mode: str = "ggml", weights: Optional[np.ndarray] = None) -> np.ndarray:
    if mode == "best":  # lower-error search, ggml's block kept where it is better (qformat.search.best)
        from ..search.best import encode_best
        return encode_best(QType.Q5_K, x, weights)
    # search: rmin -0.5, rdelta 0.1, 15 steps; the impl clamps its 6-bit codes to 63
    head, codes = _encode_sm(x, mode, weights, 31, (-0.5, 0.1, 15), clamp_scales=True)
    out = np.empty((x.shape[0], 176), dtype=np.uint8)
    out[:, :16] = head
    out[:, 16:48] = pack_high_bits_k(codes)
    out[:, 48:] = pack_nibbles_k(codes & 0x0F)
    return out


register(Codec(QType.Q5_K, _q5_k_decode, _q5_k_encode, modes=("ggml", "best"), weighted=True,
               decode_chunk_values=_DECODE_CHUNK,
               doc="5.5 bpw: 8 x 32 sub-blocks, 6-bit scales and mins, 5-bit codes"))


# ==== Q2_K: scales[16] @0 | qs[64] @16 | d fp16 @80 | dmin fp16 @82 (84 bytes) =====================
#
# 16 sub-blocks of 16 values. Byte j of ``scales`` holds sub-block j's 4-bit scale (low nibble) and
# 4-bit min (high nibble); value e = 128h + 32k + l (h = 0..1, k = 0..3, l = 0..31) has its 2-bit
# code in ``qs[32h + l]`` at bits 2k..2k+1. Sub-block j decodes as ``(d * sc[j]) * q - (dmin * m[j])``.

Q2_SCALES, Q2_QS, Q2_D, Q2_DMIN, Q2_BYTES = 0, 16, 80, 82, 84
assert BLOCK[QType.Q2_K] == (QK_K, Q2_BYTES)
#: shifts 2k that bring field k of a qs byte to bit 0, laid out (1, 1, k, 1) against (n, h, 1, l)
_Q2_SHIFTS = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)


def _q2_k_factors(d_bits: np.ndarray, dmin_bits: np.ndarray, scales: np.ndarray):
    """Per-sub-block float32 ``(d * sc, dmin * m)``, each ``(nblocks, 16)``, from the stored fields."""
    d = decode_fp16(d_bits)[:, None]
    dmin = decode_fp16(dmin_bits)[:, None]
    return d * (scales & 0x0F).astype(np.float32), dmin * (scales >> 4).astype(np.float32)


def _q2_k_codes(qs: np.ndarray) -> np.ndarray:
    """``qs`` bytes ``(nblocks, 64)`` -> 2-bit codes ``(nblocks, 256)`` in value order."""
    return ((qs.reshape(-1, 2, 1, 32) >> _Q2_SHIFTS) & 3).reshape(-1, QK_K)


def _q2_k_pack_codes(codes: np.ndarray) -> np.ndarray:
    """2-bit codes ``(nblocks, 256)`` -> ``qs`` bytes ``(nblocks, 64)`` (inverse of :func:`_q2_k_codes`)."""
    c = codes.reshape(-1, 2, 4, 32)
    return (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(-1, 64)


def _fp16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[:, offset:offset + 2]).view("<u2").reshape(-1)


@quiet
def _q2_k_decode(blocks: np.ndarray) -> np.ndarray:
    dl, ml = _q2_k_factors(_fp16_field(blocks, Q2_D), _fp16_field(blocks, Q2_DMIN), blocks[:, :Q2_QS])
    y = _q2_k_codes(blocks[:, Q2_QS:Q2_D]).astype(np.float32).reshape(-1)
    # factors expanded to one per value: full-length passes beat broadcasting over runs of 16
    y *= np.repeat(dl.reshape(-1), 16)
    y -= np.repeat(ml.reshape(-1), 16)
    return y.reshape(-1, QK_K)


def _q2_k_finish(x: np.ndarray, search_codes: np.ndarray, scales: np.ndarray, d_bits: np.ndarray,
                 dmin_bits: np.ndarray) -> np.ndarray:
    """Re-round against the stored fields (what ggml does in both encoders) and pack the block."""
    dl, ml = _q2_k_factors(d_bits, dmin_bits, scales)
    codes = _final_codes(x, dl, ml, _rows(search_codes, 16), 3)
    out = np.empty((x.shape[0], Q2_BYTES), dtype=np.uint8)
    out[:, Q2_SCALES:Q2_QS] = scales
    out[:, Q2_QS:Q2_D] = _q2_k_pack_codes(codes)
    write_fp16(out, Q2_D, d_bits)
    write_fp16(out, Q2_DMIN, dmin_bits)
    return out


def _q2_k_encode_ref(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q2_K_ref``: a weighted-MAD scale+min search per sub-block (weights ``|x|``),
    then the 16 scales and the 16 mins each quantized to 4 bits against their largest (positive) one."""
    xc = _columns(x, 16)
    codes, scales, mins = make_qkx2_quants(xc, np.abs(xc), 3, -0.5, 0.1, 15, use_mad=True)
    scales = scales.reshape(-1, 16)
    mins = mins.reshape(-1, 16)
    max_scale = _scale_max(scales)
    max_min = _scale_max(mins)
    has_scale = max_scale > 0
    has_min = max_min > 0
    # ggml stores nearest_int(15/max * v) into a uint8 (no clamp) and ORs the min's code, shifted
    # left by 4, into the same byte: both wrap modulo 256 on the garbage a NaN scale rounds to
    ls = np.where(has_scale[:, None], nearest_int((f32(15) / max_scale)[:, None] * scales), 0)
    lm = np.where(has_min[:, None], nearest_int((f32(15) / max_min)[:, None] * mins) << 4, 0)
    packed = ((ls | lm) & 0xFF).astype(np.uint8)
    d_bits = fp32_to_fp16_bits(np.where(has_scale, max_scale / f32(15), f32(0)))
    dmin_bits = fp32_to_fp16_bits(np.where(has_min, max_min / f32(15), f32(0)))
    return _q2_k_finish(x, codes, packed, d_bits, dmin_bits)


def _q2_k_encode_impl(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """``quantize_row_q2_K_impl``: importance-weighted squared-error search per sub-block (37 trial
    scales), then the scales and mins each quantized to 4 bits by ``make_qp_quants`` under the
    sub-blocks' summed weights."""
    xc = _columns(x, 16)
    w = _impl_weights(x, xc, qw, group=16, sigma_factor=1.0)
    swt = np.ascontiguousarray(seqsum(w).reshape(-1, 16).T)  # (16, nblocks)
    codes, scales, mins = make_qkx3_quants(xc, w, 3, -0.9, 0.05, 36)
    ls, d_block = make_qp_quants(np.ascontiguousarray(scales.reshape(-1, 16).T), 15, swt)
    lm, m_block = make_qp_quants(np.ascontiguousarray(mins.reshape(-1, 16).T), 15, swt)
    packed = np.ascontiguousarray((ls | (lm << 4)).T)  # uint8: the shifted min wraps as in C
    return _q2_k_finish(x, codes, packed, fp32_to_fp16_bits(d_block), fp32_to_fp16_bits(m_block))


@quiet
def _q2_k_encode(x: np.ndarray, *, mode: str = "ggml", weights: Optional[np.ndarray] = None) -> np.ndarray:
    if mode == "best":  # lower-error search, ggml's block kept where it is better (qformat.search.best)
        from ..search.best import encode_best
        return encode_best(QType.Q2_K, x, weights)
    if mode != "ggml":
        raise CodecError(f"unknown Q2_K encode mode {mode!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if weights is None:
        return _q2_k_encode_ref(x)
    return _q2_k_encode_impl(x, np.ascontiguousarray(weights, dtype=np.float32))


register(Codec(QType.Q2_K, _q2_k_decode, _q2_k_encode, modes=("ggml", "best"), weighted=True,
               decode_chunk_values=_DECODE_CHUNK,
               doc="2.625 bpw: 16 x 16 sub-blocks, 4-bit scales and mins, 2-bit codes"))
