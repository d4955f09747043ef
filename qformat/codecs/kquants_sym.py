"""The symmetric k-quants Q3_K, Q6_K and Q8_K: a signed scale per block, no minimum.

Why a module of their own: ggml's k-quants come in two families. Q2_K, Q4_K and Q5_K store
``x = d*sc*q - dmin*m`` (a scale *and* a min per sub-block, unsigned codes; ``kquants.py``). The three
types here store ``x = d * sc * q`` with a SIGNED code ``q`` centred on zero and a signed sub-block
scale, so their encoders use different searches (``make_qx_quants``/``make_q3_quants`` instead of
``make_qkx2_quants``) and none of the scale+min packing. Full byte layouts: ``spec/codecs/q3_k.md``,
``q6_k.md``, ``q8_k.md``. All three use super-blocks of 256 values (QK_K).

Format rules (decode; every byte pattern is valid and MUST decode exactly as ggml does):

* Q3_K, 110 bytes: ``hmask[32] | qs[64] | scales[12] | d (fp16)``. 16 sub-blocks of 16 values,
  each with a 6-bit scale ``sc - 32`` in ``[-32, 31]``; value ``e`` has a 2-bit low part in ``qs``
  and a high bit in ``hmask``; ``q = low - (high ? 0 : 4)`` in ``[-4, 3]``;
  ``y = (d * (sc - 32)) * q``.
* Q6_K, 210 bytes: ``ql[128] | qh[64] | scales[16] (int8) | d (fp16)``. 16 sub-blocks of 16 with an
  int8 scale; 6-bit codes (low nibble in ``ql``, two high bits in ``qh``); ``q = code - 32`` in
  ``[-32, 31]``; ``y = (d * sc) * q``.
* Q8_K, 292 bytes: ``d (float32) | qs[256] (int8) | bsums[16] (int16)``; ``y = d * q``. ``bsums``
  (sums of 16 consecutive codes, for ggml's dot products) are not used to decode.

Encoding (mode ``"ggml"``) MUST be byte-identical to ggml: without weights to
``quantize_row_<t>_ref`` (what ``ggml_quantize_chunk`` runs without an imatrix), with weights to the
weighted ``quantize_row_<t>_impl`` paths of ``quantize_q3_K``/``quantize_q6_K``. Q8_K's encoder takes no
weights. Every step is float32 and vectorized over blocks; the per-element loops run over the 16
positions of a sub-block (see ``qformat/search/ggml.py`` for the exactness rules).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..search.ggml import GROUP_MAX_EPS, first_absmax, make_q3_quants, make_qx_quants, nearest_int, seqsum
from ..types import BLOCK, QType
from . import Codec, register
from .bits import decode_fp16, fp32_to_fp16_bits, read_fp16, write_fp16

_F32 = np.float32
QK_K = 256
_SUB = 16  # values per sub-block in Q3_K and Q6_K
_NSUB = QK_K // _SUB

# The decoders unpack eight bytes at a time: a shift of a little-endian 64-bit word moves every byte
# of it alike, and a per-byte mask drops what crossed from the neighbouring byte.
_U64 = np.uint64
#: shifts 2k that bring field k (k = 0..3) of a byte holding four 2-bit fields to bit 0
_SHIFT_2K = (2 * np.arange(4, dtype=_U64)).reshape(1, 1, 4, 1)
#: shifts b that bring bit b (b = 0..7) of a mask byte to bit 0
_BIT_B = np.arange(8, dtype=_U64).reshape(1, 8, 1)
_BYTES_LOW1 = _U64(0x0101010101010101)
_BYTES_LOW2 = _U64(0x0303030303030303)
_BYTES_LOW4 = _U64(0x0F0F0F0F0F0F0F0F)
#: values per decode call (the decoders write into the registry's output; few calls pay)
_DECODE_CHUNK = 1 << 18


def _words(blocks: np.ndarray, stop: int) -> np.ndarray:
    """Bytes ``[0, stop)`` of each block (stop a multiple of 8) as little-endian uint64 words."""
    return np.ascontiguousarray(blocks[:, :stop]).view("<u8").astype(_U64, copy=False)


def _scaled_16(levels: np.ndarray, offset: int, dsub: np.ndarray, out=None) -> np.ndarray:
    """float32 ``dsub * float(level - offset)`` per sub-block of 16, into ``out`` if given.

    ``levels`` uint8 (nb, 256) is consumed (turned into the signed codes in place); ``dsub`` (nb, 16)
    is the float32 factor of each sub-block, repeated to full length so the product is one long pass.
    """
    q = levels.view(np.int8)
    q -= np.int8(offset)  # level - offset is exact in int8 and exact again as a float32
    return np.multiply(q.reshape(-1), np.repeat(dsub.reshape(-1), _SUB), dtype=np.float32,
                       out=None if out is None else out.reshape(-1)).reshape(-1, QK_K)

# byte offsets of the fields inside a block (asserted against the geometry table below)
Q3_HMASK, Q3_QS, Q3_SCALES, Q3_D, Q3_BYTES = 0, 32, 96, 108, 110
Q6_QL, Q6_QH, Q6_SCALES, Q6_D, Q6_BYTES = 0, 128, 192, 208, 210
Q8_D, Q8_QS, Q8_BSUMS, Q8_BYTES = 0, 4, 260, 292
assert BLOCK[QType.Q3_K] == (QK_K, Q3_BYTES)
assert BLOCK[QType.Q6_K] == (QK_K, Q6_BYTES)
assert BLOCK[QType.Q8_K] == (QK_K, Q8_BYTES)


def _subblocks_t(x: np.ndarray) -> np.ndarray:
    """(nb, 256) -> (16 positions, nb*16 sub-blocks), the layout the searches work in."""
    return np.ascontiguousarray(x.reshape(-1, _SUB).T)


def _requantize(xt: np.ndarray, levels_t: np.ndarray, d_sub: np.ndarray, nmax: int) -> np.ndarray:
    """Final pass shared by Q3_K and Q6_K: re-round every value against its stored sub-block scale.

    Works in the search layout: ``xt`` (16, nb*16), ``levels_t`` the search's levels (same shape),
    ``d_sub`` (nb, 16) the decoded ``d * sc``. Where ``d_sub`` is zero ggml skips the sub-block and
    keeps the levels its search produced (so those bytes MUST come from ``levels_t``). Returns the
    final levels as uint8 (nb, 256) in block order.
    """
    nb = d_sub.shape[0]
    d = d_sub.reshape(1, -1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        l = nearest_int(xt / d)  # x/d may be huge or NaN: the exact C rounding trick is kept
    np.clip(l, -nmax, nmax - 1, out=l)
    l += nmax
    l = np.where(d != 0, l, levels_t).astype(np.uint8)
    return np.ascontiguousarray(l.T).reshape(nb, QK_K)


# --- Q3_K -------------------------------------------------------------------------------------

def _q3_unpack_scales(packed: np.ndarray) -> np.ndarray:
    """12 bytes -> the 16 6-bit scale codes (uint8, 0..63): low nibbles in bytes 0..7 (sub-blocks
    0..7 low, 8..15 high nibble), the two high bits of sub-block j in byte ``8 + j%4`` at bit ``2*(j//4)``."""
    lo = np.concatenate([packed[:, 0:8] & 0x0F, packed[:, 0:8] >> 4], axis=1)
    j = np.arange(_NSUB)
    hi = (packed[:, 8 + j % 4] >> (2 * (j // 4)).astype(np.uint8)) & 3
    return (lo | (hi << 4)).astype(np.uint8)


def _q3_pack_scales(codes: np.ndarray) -> np.ndarray:
    """16 6-bit scale codes per block (nb, 16) -> 12 bytes (inverse of :func:`_q3_unpack_scales`)."""
    c = codes.astype(np.uint8)
    out = np.empty((c.shape[0], 12), dtype=np.uint8)
    out[:, 0:8] = (c[:, 0:8] & 0x0F) | ((c[:, 8:16] & 0x0F) << 4)
    hi = c >> 4
    out[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return out


def q3_k_pack(levels: np.ndarray, scale_codes: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """Levels 0..7 (nb, 256), 6-bit scale codes (nb, 16), fp16 d bits (nb,) -> Q3_K blocks (nb, 110).

    Level ``L`` is stored as its high bit ``L >= 4`` in ``hmask[e % 32]`` bit ``e // 32`` and its low
    two bits in ``qs[32*(e//128) + e%32]`` at bit ``2*((e%128)//32)``.
    """
    nb = levels.shape[0]
    L = levels.astype(np.uint8)
    out = np.empty((nb, Q3_BYTES), dtype=np.uint8)
    high = (L >> 2).reshape(nb, 8, 32)
    hm = np.zeros((nb, 32), dtype=np.uint8)
    for bit in range(8):
        hm |= high[:, bit] << bit
    out[:, Q3_HMASK:Q3_QS] = hm
    low = (L & 3).reshape(nb, 2, 4, 32)
    qs = low[:, :, 0] | (low[:, :, 1] << 2) | (low[:, :, 2] << 4) | (low[:, :, 3] << 6)
    out[:, Q3_QS:Q3_SCALES] = qs.reshape(nb, 64)
    out[:, Q3_SCALES:Q3_D] = _q3_pack_scales(scale_codes)
    write_fp16(out, Q3_D, d_bits)
    return out


def q3_k_unpack(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q3_K blocks (nb, 110) -> (levels uint8 (nb, 256) in 0..7, scale codes uint8 (nb, 16) in 0..63,
    d fp16 bits uint16 (nb,)); the exact inverse of :func:`q3_k_pack`. The signed code is ``level - 4``."""
    nb = blocks.shape[0]
    words = _words(blocks, Q3_SCALES)
    levels = words[:, Q3_QS // 8:].reshape(nb, 2, 1, 4) >> _SHIFT_2K  # (nb, half, k, 8-byte group of l)
    levels &= _BYTES_LOW2
    high = words[:, :Q3_QS // 8].reshape(nb, 1, 4) >> _BIT_B  # (nb, bit b = e // 32, group of l)
    high &= _BYTES_LOW1
    high <<= _U64(2)
    levels = levels.reshape(nb, 8, 4)
    levels |= high
    levels = levels.view(np.uint8).reshape(nb, QK_K)
    codes = _q3_unpack_scales(blocks[:, Q3_SCALES:Q3_D])
    d_bits = np.ascontiguousarray(blocks[:, Q3_D:Q3_BYTES]).view("<u2").reshape(nb).astype(np.uint16)
    return levels, codes, d_bits


def q3_k_decode(blocks: np.ndarray, out=None) -> np.ndarray:
    levels, codes, _ = q3_k_unpack(blocks)
    d = read_fp16(blocks, Q3_D)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan d in arbitrary bytes: same IEEE result as C
        dl = d[:, None] * (codes.astype(np.int32) - 32).astype(np.float32)  # d_all * (scale - 32)
        return _scaled_16(levels, 4, dl, out)  # the single product dl * (level - 4), as C


def _q3_finish(xt: np.ndarray, levels_t: np.ndarray, scale_codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Store the scale codes, take d to fp16, re-round against ``fp16(d) * (code - 32)``, pack."""
    d_bits = fp32_to_fp16_bits(d)
    d_sub = decode_fp16(d_bits)[:, None] * (scale_codes.astype(np.int32) - 32).astype(np.float32)
    levels = _requantize(xt, levels_t, d_sub, 4)
    return q3_k_pack(levels, scale_codes, d_bits)


def _q3_k_encode_ref(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q3_K_ref``: make_q3_quants per sub-block, 6-bit scales against the largest one."""
    nb = x.shape[0]
    xt = _subblocks_t(x)
    scales_t, levels_t = make_q3_quants(xt, 4)
    scales = scales_t.reshape(nb, _NSUB)
    max_scale, _ = first_absmax(scales, axis=1)  # a NaN scale (from overflowing x*x) is never picked
    live = max_scale != 0
    safe = np.where(live, max_scale, _F32(1.0))
    iscale = _F32(-32.0) / safe
    codes = np.minimum(np.maximum(nearest_int(iscale[:, None] * scales), -32), 31) + 32
    codes = np.where(live[:, None], codes, 0)  # ggml leaves the scale bytes zeroed
    d = np.where(live, _F32(1.0) / iscale, _F32(0.0)).astype(np.float32)
    return _q3_finish(xt, levels_t, codes, d)


def _q3_k_encode_weighted(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """``quantize_row_q3_K_impl`` with importance weights ``qw`` (same shape as ``x``)."""
    nb = x.shape[0]
    xt_block = np.ascontiguousarray(x.T)  # (256, nb): sum x*x over the block, left to right
    sigma2 = (_F32(2.0) * seqsum(xt_block * xt_block)) / _F32(QK_K)
    xt = _subblocks_t(x)
    sigma_sub = np.repeat(sigma2, _NSUB)[None, :]  # (1, nb*16)
    weight = _subblocks_t(qw) * np.sqrt(sigma_sub + xt * xt)
    sw = seqsum(weight)  # (nb*16,)
    scales_t, levels_t = make_qx_quants(xt, 4, weight)
    # the 16 sub-block scales of a block are themselves quantized with make_qx_quants(nmax=32)
    d_block, codes_t = make_qx_quants(
        np.ascontiguousarray(scales_t.reshape(nb, _NSUB).T), 32, np.ascontiguousarray(sw.reshape(nb, _NSUB).T)
    )
    return _q3_finish(xt, levels_t, codes_t.T, d_block)


def q3_k_encode(x: np.ndarray, *, mode: str = "ggml", weights: Optional[np.ndarray] = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if mode == "best":  # lower-error search, ggml's block kept where it is better (qformat.search.best)
        from ..search.best import encode_best_symmetric
        return encode_best_symmetric(QType.Q3_K, x, weights, lambda: q3_k_encode(x, weights=weights))
    if weights is None:
        return _q3_k_encode_ref(x)
    return _q3_k_encode_weighted(x, np.ascontiguousarray(weights, dtype=np.float32))


# --- Q6_K -------------------------------------------------------------------------------------

def q6_k_unpack(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q6_K blocks (nb, 210) -> (levels uint8 (nb, 256) in 0..63, scales int8 (nb, 16), d fp16 bits
    uint16 (nb,)); the exact inverse of :func:`q6_k_pack`. The signed code is ``level - 32``."""
    nb = blocks.shape[0]
    words = _words(blocks, Q6_SCALES)
    ql = words[:, :Q6_QH // 8].reshape(nb, 2, 2, 4)  # (half, byte group g, 8-byte group of l)
    qh = words[:, Q6_QH // 8:].reshape(nb, 2, 1, 4)
    levels = np.empty((nb, 2, 4, 4), dtype=_U64)  # (half, k, group of l); k = g low nibbles, 2 + g high
    np.bitwise_and(ql, _BYTES_LOW4, out=levels[:, :, 0:2])
    np.right_shift(ql, _U64(4), out=levels[:, :, 2:4])
    levels[:, :, 2:4] &= _BYTES_LOW4
    high = qh >> _SHIFT_2K
    high &= _BYTES_LOW2
    high <<= _U64(4)
    levels |= high
    levels = levels.view(np.uint8).reshape(nb, QK_K)
    sc = blocks[:, Q6_SCALES:Q6_D].view(np.int8).copy()
    d_bits = np.ascontiguousarray(blocks[:, Q6_D:Q6_BYTES]).view("<u2").reshape(nb).astype(np.uint16)
    return levels, sc, d_bits


def q6_k_decode(blocks: np.ndarray, out=None) -> np.ndarray:
    levels, sc, _ = q6_k_unpack(blocks)
    d = read_fp16(blocks, Q6_D)
    with np.errstate(invalid="ignore", over="ignore"):
        dsc = d[:, None] * sc.astype(np.float32)  # (d * sc) first, then times q, as ggml associates it
        return _scaled_16(levels, 32, dsc, out)


def q6_k_pack(levels: np.ndarray, sc: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """Levels 0..63 (nb, 256), int8 scales (nb, 16), fp16 d bits -> Q6_K blocks (nb, 210).

    Within each 128-value half, position ``32k + l`` keeps its low nibble in ``ql[64h + 32*(k%2) + l]``
    (low nibble for k < 2, high nibble for k >= 2) and its two high bits in ``qh[32h + l]`` at bit 2k.
    """
    nb = levels.shape[0]
    L = levels.astype(np.uint8).reshape(nb, 2, 4, 32)
    out = np.empty((nb, Q6_BYTES), dtype=np.uint8)
    lo = L & 0x0F
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    out[:, Q6_QL:Q6_QH] = ql.reshape(nb, 128)
    hi = L >> 4
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    out[:, Q6_QH:Q6_SCALES] = qh.reshape(nb, 64)
    out[:, Q6_SCALES:Q6_D] = sc.astype(np.int8).view(np.uint8)
    write_fp16(out, Q6_D, d_bits)
    return out


def q6_k_encode(x: np.ndarray, *, mode: str = "ggml", weights: Optional[np.ndarray] = None) -> np.ndarray:
    """``quantize_row_q6_K_ref`` (no weights) or ``quantize_row_q6_K_impl`` (importance weights).

    The two differ only in the weights ``make_qx_quants`` gets per sub-block: ``x*x`` or ``qw``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if mode == "best":  # lower-error search, ggml's block kept where it is better (qformat.search.best)
        from ..search.best import encode_best_q6_k
        return encode_best_q6_k(x, weights, lambda: q6_k_encode(x, weights=weights))
    nb = x.shape[0]
    w_t = None if weights is None else _subblocks_t(np.asarray(weights, dtype=np.float32))
    xt = _subblocks_t(x)
    scales_t, levels_t = make_qx_quants(xt, 32, w_t)
    scales = scales_t.reshape(nb, _NSUB)
    max_scale, _ = first_absmax(scales, axis=1)
    live = np.abs(max_scale) >= GROUP_MAX_EPS  # below it ggml writes an all-zero block
    safe = np.where(live, max_scale, _F32(1.0))
    iscale = _F32(-128.0) / safe
    d_bits = fp32_to_fp16_bits(_F32(1.0) / iscale)
    # ggml stores MIN(127, nearest_int(...)) into an int8; the lower end is -128 by construction
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    d_sub = decode_fp16(d_bits)[:, None] * sc.astype(np.float32)
    levels = _requantize(xt, levels_t, d_sub, 32)
    out = q6_k_pack(levels, sc, d_bits)
    out[~live] = 0
    return out


# --- Q8_K -------------------------------------------------------------------------------------

def q8_k_decode(blocks: np.ndarray) -> np.ndarray:
    d = np.ascontiguousarray(blocks[:, Q8_D:Q8_QS]).view("<f4").astype(np.float32)  # (nb, 1)
    q = blocks[:, Q8_QS:Q8_BSUMS].view(np.int8).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # arbitrary float32 d: inf*0 etc. as in C
        q *= d
        return q


def q8_k_encode(x: np.ndarray, *, mode: str = "ggml", weights: Optional[np.ndarray] = None) -> np.ndarray:
    """``quantize_row_q8_K_ref``: the value of largest magnitude maps to -127, ``d = max / -127``.

    An all-zero block (largest magnitude exactly 0) gets ``d = 0``, zero codes and zero ``bsums``
    (ggml leaves its ``bsums`` unwritten; we write zeros).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    nb = x.shape[0]
    vmax, amax = first_absmax(x, axis=1)
    live = amax != 0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        # a denormal max makes iscale overflow to inf; ggml then rounds inf/nan products with
        # nearest_int's bit trick, which nearest_int reproduces
        iscale = _F32(-127.0) / np.where(live, vmax, _F32(1.0))
        q = np.minimum(nearest_int(iscale[:, None] * x), 127).astype(np.int8)  # int -> int8 wraps as in C
        d = (_F32(1.0) / iscale).astype("<f4")
    q = np.where(live[:, None], q, np.int8(0))
    d = np.where(live, d, _F32(0.0)).astype("<f4")
    bsums = q.reshape(nb, _NSUB, _SUB).astype(np.int16).sum(axis=2, dtype=np.int16)
    out = np.empty((nb, Q8_BYTES), dtype=np.uint8)
    out[:, Q8_D:Q8_QS] = d.reshape(nb, 1).view(np.uint8)
    out[:, Q8_QS:Q8_BSUMS] = q.view(np.uint8)
    out[:, Q8_BSUMS:Q8_BYTES] = bsums.astype("<i2").view(np.uint8)
    return out


register(Codec(QType.Q3_K, q3_k_decode, q3_k_encode, modes=("ggml", "best"), weighted=True,
               decode_into=True, decode_chunk_values=_DECODE_CHUNK,
               doc="3-bit k-quant: 16x16 sub-blocks, 6-bit signed scales, fp16 super-scale"))
register(Codec(QType.Q6_K, q6_k_decode, q6_k_encode, modes=("ggml", "best"), weighted=True,
               decode_into=True, decode_chunk_values=_DECODE_CHUNK,
               doc="6-bit k-quant: 16x16 sub-blocks, int8 scales, fp16 super-scale"))
register(Codec(QType.Q8_K, q8_k_decode, q8_k_encode, modes=("ggml",), weighted=False,
               doc="8-bit k-quant intermediate: float32 scale, int8 codes, int16 group sums"))
