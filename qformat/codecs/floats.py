"""Plain element types: F32, F16, BF16, F64 and the integer types I8, I16, I32, I64.

Each of these stores one value per "block", little-endian, with no scale. Rules:

* F32: the IEEE binary32 bits, stored as they are. Encode and decode MUST be the identity on all
  2^32 bit patterns (NaN payloads included).
* F16: IEEE binary16. Encoding MUST round to nearest, ties to even, produce subnormals, overflow to
  +-inf from 65520 up, and turn every NaN into the quiet NaN ``sign | 0x7E00`` (ggml's
  ``ggml_compute_fp32_to_fp16`` drops the payload). Decoding is exact for every finite value and
  infinity; a NaN decodes to a quiet binary32 NaN whose top mantissa bits are the half's mantissa
  (ggml's ``ggml_compute_fp16_to_fp32`` computes NaNs through a float multiply, which quiets a
  signalling NaN on x86).
* BF16: the top 16 bits of binary32. Encoding MUST round to nearest, ties to even, computed on the
  bits (so large finite values round up to infinity) and MUST keep a NaN's sign and top payload bits
  while setting the quiet bit (``bits >> 16 | 0x40``). Decoding shifts the 16 bits back up: exact.
* F64: IEEE binary64. qformat's codec contract is float32 in and out, so encoding widens float32
  exactly and decoding rounds to the nearest float32 (values past float32's range become +-inf).
* I8, I16, I32, I64: two's-complement integers. ggml has no converter for them; qformat decodes them
  to float32 by value (rounded to nearest where |v| > 2^24) and does not encode them: no rule says
  how a float should become an integer tensor, so qformat refuses rather than guess.

F32/F16/BF16/F64 accept inf and NaN input (``finite_only=False``).
"""
from __future__ import annotations

import numpy as np

from ..types import QType
from . import Codec, register


def _column(values: np.ndarray) -> np.ndarray:
    """A flat float32 array as the registry's ``(nblocks, 1)`` output."""
    return values.astype(np.float32, copy=False).reshape(-1, 1)


def _bytes_of(words: np.ndarray, dtype: str) -> np.ndarray:
    """Little-endian bytes of one value per row: ``(n, itemsize)`` uint8."""
    le = np.ascontiguousarray(words, dtype=dtype)
    return le.view(np.uint8).reshape(le.shape[0], np.dtype(dtype).itemsize)


def _words(blocks: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(blocks).view(dtype).reshape(-1)


# --- F32 -------------------------------------------------------------------------------------

def _f32_encode(x, *, mode="ggml", weights=None):
    return _bytes_of(np.asarray(x, dtype=np.float32).reshape(-1).view(np.uint32), "<u4")


def _f32_decode(blocks):
    # go through the integer bits so that no float operation can touch a NaN payload
    return _words(blocks, "<u4").astype(np.uint32).view(np.float32).reshape(-1, 1)


# --- F16 -------------------------------------------------------------------------------------

_F16_QUIET_NAN = np.uint16(0x7E00)


#: from this many values up, :func:`fp32_to_fp16_bits` rounds with float32 arithmetic (about 1.6x
#: numpy's float16 cast, which is a scalar loop, on 65536 values); below it the cast's fewer calls win
_F16_ARITH_MIN = 16384
_U32 = np.uint32


def _fp32_to_fp16_bits_arith(x: np.ndarray) -> np.ndarray:
    """The same conversion as :func:`fp32_to_fp16_bits`, as a few vectorized float32/uint32 passes.

    The rounding is done by the FPU: ``|x| * 2^112 * 2^-110`` is ``4|x|``, except that values from
    65520 up overflow to inf on the way. Adding ``bias``, a power of two 2^13 times the exponent
    of ``4|x|`` (at least 2.0, the subnormal half range), leaves exactly the fp16 mantissa in the
    low 12 bits of the sum, rounded to nearest even by the addition itself, while the sum's
    exponent field, taken mod 32, is the half's exponent (a mantissa carry spills into it as it
    must). NaNs are patched afterwards to ``sign | 0x7E00``.
    """
    w = x.view(_U32)
    mag = w & _U32(0x7FFFFFFF)
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow to inf is the point
        base = np.multiply(mag.view(np.float32), np.float32(2.0**112))
        base *= np.float32(2.0**-110)
    # one scratch array reused in place: fresh temporaries of this size cost page faults
    scratch = np.bitwise_and(mag, _U32(0x7F800000))  # the exponent of |x| ...
    np.maximum(scratch, _U32(0x38800000), out=scratch)  # ... at least that of 2^-14 ...
    scratch += _U32(0x07800000)  # ... times 2^15: the bias
    base += scratch.view(np.float32)
    summed = base.view(_U32)
    np.right_shift(summed, _U32(13), out=scratch)
    scratch &= _U32(0x7C00)  # exponent field, mod 32
    summed &= _U32(0xFFF)  # mantissa (a rounding carry in bits 10-11 lands in the exponent)
    scratch += summed
    np.right_shift(w, _U32(16), out=summed)
    summed &= _U32(0x8000)  # sign
    scratch |= summed
    bits = scratch.astype(np.uint16)
    if mag.max() > 0x7F800000:  # some NaN
        nan = mag > _U32(0x7F800000)
        bits[nan] = ((w[nan] >> _U32(16)).astype(np.uint16) & np.uint16(0x8000)) | _F16_QUIET_NAN
    return bits


def fp32_to_fp16_bits(x: np.ndarray) -> np.ndarray:
    """ggml's fp32 -> fp16 conversion as uint16 bits (round to nearest even; NaN -> sign|0x7E00)."""
    x = np.asarray(x, dtype=np.float32)
    if x.size >= _F16_ARITH_MIN:
        return _fp32_to_fp16_bits_arith(np.ascontiguousarray(x)).reshape(x.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        bits = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
        bits = np.where(nan, sign | _F16_QUIET_NAN, bits)
    return bits


def fp16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    """ggml's fp16 -> fp32 conversion of uint16 bits (exact; NaNs come out quiet)."""
    bits = np.asarray(bits, dtype=np.uint16)
    out = bits.view(np.float16).astype(np.float32)
    if bits.size and (bits & np.uint16(0x7FFF)).max() > 0x7C00:  # some NaN: only then build the mask
        nan = (bits & np.uint16(0x7FFF)) > np.uint16(0x7C00)
        wide = bits.astype(np.uint32)
        quiet = ((wide & np.uint32(0x8000)) << np.uint32(16)) | np.uint32(0x7FC00000)
        quiet |= (wide & np.uint32(0x03FF)) << np.uint32(13)
        out = np.where(nan, quiet.view(np.float32), out)
    return out


#: every fp16 bit pattern's float32 value; a table lookup is about twice as fast as numpy's cast
_F16_TABLE = fp16_bits_to_fp32(np.arange(1 << 16, dtype=np.uint16))
_F16_TABLE.flags.writeable = False


def decode_fp16(bits: np.ndarray) -> np.ndarray:
    """uint16 fp16 bit patterns -> float32, exactly as ggml converts them (NaNs included)."""
    return np.take(_F16_TABLE, np.asarray(bits, dtype=np.uint16))


def _f16_encode(x, *, mode="ggml", weights=None):
    return _bytes_of(fp32_to_fp16_bits(np.asarray(x).reshape(-1)), "<u2")


def _f16_decode(blocks, out=None):
    if out is None:
        return _column(decode_fp16(_words(blocks, "<u2")))
    # every uint16 is a valid index: 'clip' skips the bounds check and writes straight into out
    return np.take(_F16_TABLE, _words(blocks, "<u2"), out=out.reshape(-1), mode="clip").reshape(-1, 1)


# --- BF16 ------------------------------------------------------------------------------------

def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml's ``ggml_compute_fp32_to_bf16`` as uint16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # round to nearest even on the bits: add 0x7FFF plus the lowest kept bit, then truncate
    rounded = u >> np.uint32(16)
    rounded &= np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += u
    rounded >>= np.uint32(16)
    bits = rounded.astype(np.uint16)
    if u.size and (u & np.uint32(0x7FFFFFFF)).max() > 0x7F800000:  # some NaN: keep it, quieted
        nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        bits[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return bits.reshape(np.shape(x))


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _bf16_encode(x, *, mode="ggml", weights=None):
    return _bytes_of(fp32_to_bf16_bits(np.asarray(x).reshape(-1)), "<u2")


def _bf16_decode(blocks, out=None):
    if out is None:
        return _column(bf16_bits_to_fp32(_words(blocks, "<u2")))
    np.left_shift(_words(blocks, "<u2"), np.uint32(16), out=out.reshape(-1).view(np.uint32), dtype=np.uint32)
    return out


# --- F64 -------------------------------------------------------------------------------------

def _f64_encode(x, *, mode="ggml", weights=None):
    return _bytes_of(np.asarray(x, dtype=np.float32).reshape(-1).astype(np.float64), "<f8")


def _f64_decode(blocks):
    with np.errstate(over="ignore"):
        return _column(_words(blocks, "<f8").astype(np.float32))


# --- integers --------------------------------------------------------------------------------

def _int_decoder(dtype: str):
    def decode(blocks):
        return _column(_words(blocks, dtype).astype(np.float32))

    decode.__name__ = f"_{np.dtype(dtype).name}_decode"
    return decode


register(Codec(QType.F32, _f32_decode, _f32_encode, finite_only=False, doc="IEEE binary32, identity"))
#: the 16-bit float decoders are one pass each: they write into the registry's output, in large chunks
_DECODE = dict(decode_into=True, decode_chunk_values=1 << 18)
register(Codec(QType.F16, _f16_decode, _f16_encode, finite_only=False, **_DECODE,
               doc="IEEE binary16, ggml rounding"))
register(Codec(QType.I8, _int_decoder("<i1"), None, doc="int8, decode only"))
register(Codec(QType.I16, _int_decoder("<i2"), None, doc="int16, decode only"))
register(Codec(QType.I32, _int_decoder("<i4"), None, doc="int32, decode only"))
register(Codec(QType.I64, _int_decoder("<i8"), None, doc="int64, decode only"))
register(Codec(QType.F64, _f64_decode, _f64_encode, finite_only=False, doc="IEEE binary64 <-> float32"))
register(Codec(QType.BF16, _bf16_decode, _bf16_encode, finite_only=False, **_DECODE,
               doc="bfloat16, ggml rounding"))
