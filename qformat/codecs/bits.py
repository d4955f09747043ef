"""Bit-level helpers shared by the block codecs: fp16 fields, nibble planes, k-quant 6-bit scales.

Every function here is a pure re-arrangement of bits (or ggml's exact fp16 conversions), so
codecs built from them stay byte-identical to ggml. Layout rules they implement:

* fp16 fields are IEEE binary16, little-endian. ggml rounds fp32 -> fp16 to nearest, ties to even;
  values past the fp16 range become +-inf and a NaN becomes the quiet NaN ``0x7E00`` with its sign;
  fp16 -> fp32 is exact, except that a signalling NaN comes back quiet. Both directions are
  :mod:`qformat.codecs.floats`'s converters, re-exported here.
* k-quant nibble planes (Q4_K, Q5_K): a super-block's 256 codes are stored in chunks of 64; byte
  ``j`` (0..31) of chunk ``c`` holds code ``64c + j`` in its LOW nibble and ``64c + 32 + j`` in its
  HIGH nibble.
* k-quant 6-bit scale/min packing (``get_scale_min_k4`` in ggml): eight 6-bit scales ``sc[0..7]``
  and eight 6-bit mins ``m[0..7]`` MUST fit 12 bytes as::

      byte  0..3 : [ m/sc hi | sc[j] (6 bits) ]    bits 7-6 = sc[j+4] >> 4,  bits 5-0 = sc[j]
      byte  4..7 : [ m hi    | m[j]  (6 bits) ]    bits 7-6 = m[j+4]  >> 4,  bits 5-0 = m[j]
      byte  8..11: [ m[j+4] & 15 | sc[j+4] & 15 ]  high nibble = m low bits, low nibble = sc low bits
"""
from __future__ import annotations

import numpy as np

from .floats import decode_fp16, fp32_to_fp16_bits  # re-exported: the codecs' one fp16 converter pair

# --- fp16 -----------------------------------------------------------------------------------
# One converter pair serves every codec: ``qformat.codecs.floats`` owns ggml's fp32 <-> fp16
# conversions (round to nearest even, NaN -> sign | 0x7E00; fp16 -> fp32 through a table built
# from ggml's rule, which quiets signalling NaNs where numpy's float16 cast does not).

#: the name the block codecs use for :func:`~qformat.codecs.floats.decode_fp16`
fp16_bits_to_fp32 = decode_fp16


def read_fp16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian fp16 field at byte ``offset`` of each block row, as float32 ``(nblocks,)``."""
    return decode_fp16(np.ascontiguousarray(blocks[:, offset:offset + 2]).view("<u2").reshape(-1))


def write_fp16(out: np.ndarray, offset: int, value_bits: np.ndarray) -> None:
    """Store uint16 fp16 bit patterns little-endian at byte ``offset`` of each block row of ``out``."""
    v = np.asarray(value_bits, dtype=np.uint16)
    out[:, offset] = (v & 0xFF).astype(np.uint8)
    out[:, offset + 1] = (v >> 8).astype(np.uint8)


# --- k-quant nibble planes --------------------------------------------------------------------

def unpack_nibbles_k(qs: np.ndarray) -> np.ndarray:
    """uint8 ``(n, 128)`` nibble bytes -> uint8 codes ``(n, 256)`` in element order (see module doc)."""
    q = qs.reshape(-1, 4, 1, 32)
    out = np.empty((q.shape[0], 4, 2, 32), dtype=np.uint8)
    np.bitwise_and(q[:, :, 0], 0x0F, out=out[:, :, 0])
    np.right_shift(q[:, :, 0], 4, out=out[:, :, 1])
    return out.reshape(-1, 256)


def pack_nibbles_k(codes: np.ndarray) -> np.ndarray:
    """uint8 codes ``(n, 256)`` with values < 16 -> nibble bytes ``(n, 128)`` (inverse of unpack)."""
    c = codes.reshape(-1, 4, 2, 32)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).astype(np.uint8).reshape(-1, 128)


def unpack_high_bits_k(qh: np.ndarray) -> np.ndarray:
    """Q5_K high-bit plane: uint8 ``(n, 32)`` -> bit 4 of each of 256 codes as uint8 ``(n, 256)`` (0 or 16).

    Bit ``2c`` of ``qh[j]`` is the high bit of code ``64c + j``, bit ``2c + 1`` that of ``64c + 32 + j``.
    """
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)  # (chunk c, half h) -> bit 2c + h
    bits = (qh.reshape(-1, 1, 32) >> shifts) & 1
    return (bits << 4).astype(np.uint8).reshape(-1, 256)


def pack_high_bits_k(codes: np.ndarray) -> np.ndarray:
    """Bit 4 of each of 256 codes ``(n, 256)`` -> the Q5_K ``qh`` plane ``(n, 32)``."""
    hi = ((codes.reshape(-1, 8, 32) >> 4) & 1).astype(np.uint8)
    out = np.zeros((hi.shape[0], 32), dtype=np.uint8)
    for bit in range(8):
        out |= hi[:, bit] << bit
    return out


# --- k-quant 6-bit scales and mins --------------------------------------------------------------

_LOW6 = np.uint32(0x3F3F3F3F)
_LOW4 = np.uint32(0x0F0F0F0F)
_BITS45 = np.uint32(0x30303030)


def unpack_scale_min_k4(scales: np.ndarray) -> np.ndarray:
    """12-byte packed fields ``(n, 12)`` -> uint8 ``(n, 2, 8)``: ``[:, 0]`` the 6-bit scales, ``[:, 1]``
    the 6-bit mins.

    Works on the three 4-byte groups as little-endian uint32 words, so each mask or shift handles
    four sub-blocks at once (bytes never carry into each other: every mask keeps bits in-byte).
    """
    words = np.ascontiguousarray(scales).reshape(-1, 12).view("<u4")  # (n, 3)
    lo, mid, hi = words[:, 0], words[:, 1], words[:, 2]
    out = np.empty((words.shape[0], 4), dtype="<u4")
    out[:, 0] = lo & _LOW6  # sc[0..3]
    out[:, 1] = (hi & _LOW4) | ((lo >> 2) & _BITS45)  # sc[4..7]: low nibble, bits 4-5 from byte 7-6
    out[:, 2] = mid & _LOW6  # m[0..3]
    out[:, 3] = ((hi >> 4) & _LOW4) | ((mid >> 2) & _BITS45)  # m[4..7]
    return out.view(np.uint8).reshape(-1, 2, 8)


def pack_scale_min_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """(scales ``(n, 8)``, mins ``(n, 8)``), each value < 64 -> the 12 packed bytes ``(n, 12)``."""
    sc = np.asarray(sc, dtype=np.uint8)
    mn = np.asarray(mn, dtype=np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return out
