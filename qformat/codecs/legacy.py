"""The legacy block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 (blocks of 32) and Q1_0 (blocks of 128).

Layouts (all multi-byte fields little-endian; ``d``, ``m``, ``s`` are IEEE binary16)::

    Q4_0  18 B: d | qs[16]                 x[j] = (q[j] - 8) * d
    Q4_1  20 B: d | m | qs[16]             x[j] = q[j] * d + m
    Q5_0  22 B: d | qh[4] | qs[16]         x[j] = (q[j] - 16) * d
    Q5_1  24 B: d | m | qh[4] | qs[16]     x[j] = q[j] * d + m
    Q8_0  34 B: d | qs[32] (int8)          x[j] = q[j] * d
    Q8_1  36 B: d | s | qs[32] (int8)      (s = d * sum(q); no decoder in ggml, see below)
    Q1_0  18 B: d | qs[16] (128 bits)      x[j] = +d if bit j else -d

* 4-bit codes: byte ``qs[j]`` (j < 16) MUST hold code ``j`` in its low nibble and code ``j + 16`` in
  its high nibble.
* 5-bit codes: the low four bits as above; bit ``j`` of the 32-bit word ``qh`` is bit 4 of code ``j``.
* Q1_0: bit ``j % 8`` (LSB first) of byte ``j // 8`` is the sign of value ``j`` (1 = non-negative).
* Decoding MUST compute in float32 in ggml's order: ``float(q) * d`` then ``+ m`` (two roundings,
  never fused).

Reference encoders (byte-identical to ggml's ``quantize_row_<t>_ref``, which llama-quantize uses
without an importance matrix); every step is float32:

* Q4_0/Q5_0: ``max`` = the first value of largest magnitude, *with its sign*; ``d = max / -8``
  (``-16``), so the extreme lands exactly on the code ``-8`` (``-16``), the end of the range that has
  no positive twin; code = ``min(15, trunc(x/d + 8.5))`` (31, 16.5), with ``x/d`` computed as
  ``x * (1/d)`` and ``1/d`` taken as 0 when ``d`` is 0.
* Q4_1/Q5_1: ``d = (max - min) / 15`` (31), ``m = min``; code = ``trunc((x - min) * (1/d) + 0.5)``,
  capped at 15 for Q4_1 (Q5_1 keeps only the low 5 bits).
* Q8_0/Q8_1: ``d = amax / 127``; code = ``roundf(x * (1/d))`` (half away from zero). Q8_1 also
  stores ``s = float(sum of codes) * d``.
* Q1_0: ``d`` = (sequential float32 sum of ``|x|``) / 128; bit = ``x >= 0`` (so -0.0 gives 1).
* Conversions of a float to a C integer follow x86: truncate toward zero, and a NaN, an infinity or
  a value outside int32 becomes INT_MIN (low byte 0); only the low byte of the result is stored.
  This matters only where ``1/d`` overflows (subnormal inputs).

ggml has no ``dequantize_row_q8_1`` (Q8_1 only holds activations for dot products), so there is
nothing to check a Q8_1 decoder against: qformat makes Q8_1 encode-only.

Importance-weighted encoding (ggml's ``quantize_q4_0`` etc. given an imatrix, byte-identical too):
Q4_0/Q5_0 run ``make_qx_quants`` and Q4_1/Q5_1 ``make_qkx3_quants`` (``qformat.search``) under the
weights ``qw * sqrt(sigma2 + x*x)``, where ``sigma2`` is the mean square of the whole ROW; so these
codecs declare ``row_stats`` and the registry tells them where rows start. ggml ignores an imatrix
for Q8_0 and Q1_0; qformat rejects one for them rather than silently ignore it.
"""
from __future__ import annotations

import numpy as np

from ..types import QType
from . import Codec, register
from .floats import decode_fp16, fp32_to_fp16_bits
from ..search.ggml import make_qkx3_quants, make_qx_quants

f32 = np.float32

_INT32_MIN = np.int32(-(2**31))


# --- small helpers: fp16 fields, C conversions, bit planes ----------------------------------

def _get_f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 field at ``offset`` of every block, as float32 ``(nblocks, 1)``."""
    field = blocks[:, offset:offset + 2]
    if field.strides[-1] != 1:  # a view needs contiguous bytes within the field; rows may be strided
        field = np.ascontiguousarray(field)
    return decode_fp16(field.view("<u2"))  # (nblocks, 1)


def _put_f16(out: np.ndarray, offset: int, values: np.ndarray) -> None:
    """Store float32 ``values`` (one per block) as fp16 at byte ``offset`` of every block."""
    bits = fp32_to_fp16_bits(values.reshape(-1))
    out[:, offset:offset + 2] = bits.astype("<u2").view(np.uint8).reshape(-1, 2)


def _c_int8(v: np.ndarray) -> np.ndarray:
    """``(int8_t)v`` for float32 ``v`` as x86 executes it: truncate to int32 (a NaN, an infinity or a
    value outside int32 gives INT_MIN), then keep the low byte. Returns int8."""
    with np.errstate(invalid="ignore"):
        i = v.astype(np.int32)
        bad = ~(np.abs(v) < f32(2.0**31))  # also True for NaN
    if bad.any():  # numpy leaves these platform-defined; pin them to what C gets
        i[bad] = _INT32_MIN
    return i.astype(np.int8)  # integer narrowing keeps the low byte


def _to_int8(v: np.ndarray, in_range: bool) -> np.ndarray:
    """:func:`_c_int8`, taking the direct float -> int8 cast when the caller knows every value is
    finite and within (-129, 128), where truncation is all C does."""
    return v.astype(np.int8) if in_range else _c_int8(v)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C ``roundf``: to nearest, halves away from zero (exact: ``v - trunc(v)`` is exact in float32)."""
    t = np.trunc(v)
    frac = v - t
    t += frac >= f32(0.5)
    t -= frac <= f32(-0.5)
    return t


def _pack_halves(codes_t: np.ndarray) -> np.ndarray:
    """Codes ``(32, n)`` (uint8) -> ``(n, 16)`` bytes ``code[j] | code[j+16] << 4``, kept to 8 bits
    as C's uint8 store keeps them."""
    return (codes_t[:16] | (codes_t[16:] << 4)).T


def _unpack_halves(blocks: np.ndarray, at: int) -> np.ndarray:
    """The 16 nibble bytes at ``at`` of each block -> its 32 codes, uint8 (inverse of :func:`_pack_halves`).

    Masks and shifts whole block rows, header bytes included: two long contiguous passes are cheaper
    than four passes of 16-byte pieces; the wanted halves are then gathered in one copy.
    """
    low = blocks & np.uint8(0x0F)
    high = blocks >> np.uint8(4)
    return np.concatenate([low[:, at:at + 16], high[:, at:at + 16]], axis=1)


_BIT_WEIGHTS = (np.uint8(1) << np.arange(8, dtype=np.uint8)).reshape(1, 8, 1)


def _pack_bit4(codes_t: np.ndarray) -> np.ndarray:
    """Bit 4 of each code ``(32, n)`` -> the 4-byte little-endian ``qh`` words ``(n, 4)`` (bit j = code j).

    Byte k collects codes 8k..8k+7, least significant bit first (a weighted sum of 0/1 values, which
    runs at vector speed on this layout where ``np.packbits`` along the leading axis does not).
    """
    bits = ((codes_t >> 4) & 1).reshape(4, 8, -1)
    return (bits * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint8).T


def _unpack_bit4(qh: np.ndarray) -> np.ndarray:
    """The ``qh`` word -> bit 4 of each of the 32 codes, as 0 or 16."""
    bits = np.unpackbits(qh, axis=1, bitorder="little")
    bits <<= 4
    return bits


def _inverse(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f``."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, f32(1) / np.where(d != 0, d, f32(1)), f32(0)).astype(np.float32)


# Encoders work on the transpose ``xt`` (32, n) of the blocks: reductions over the leading axis of
# a C-contiguous array run at vector speed, where reducing 32 values along the rows would not.

def _first_hit(xt: np.ndarray, mask: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """For the columns ``cols`` only, the value of ``xt`` at the first True of ``mask`` (C's scan
    keeps the first hit). Used on the rare blocks where the first hit decides a sign."""
    sub = mask[:, cols]
    return xt[np.argmax(sub, axis=0), cols]


def _signed_absmax(xt: np.ndarray) -> np.ndarray:
    """Per block, the first value of largest magnitude with its sign (``+0.0`` for an all-zero block)."""
    hi = xt.max(axis=0)
    lo = xt.min(axis=0)
    value = np.where(hi >= -lo, hi, lo)  # the larger magnitude wins; a tie is settled below
    both = np.flatnonzero((hi == -lo) & (hi > 0))  # +a and -a both present: the first one counts
    if both.size:
        value[both] = _first_hit(xt, np.abs(xt) == hi, both)
    return np.where(value != 0, value, f32(0))


def _min_max(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block (min, max) as C's strict scan finds them, signed zeros included.

    The scan keeps the first of equal values, so a block whose minimum is zero stores the sign of
    its first zero in ``m``; and an all-equal block computes ``max - min`` as ``x0 - x0 = +0``.
    """
    lo = xt.min(axis=0)
    hi = xt.max(axis=0)
    zero_min = np.flatnonzero(lo == 0)
    if zero_min.size:
        lo = lo.copy()
        lo[zero_min] = _first_hit(xt, xt == 0, zero_min)
    return lo, np.where(hi == lo, lo, hi)


def _ieee_quiet(fn):
    """Run ``fn`` without numpy warnings: inf and NaN scales (from arbitrary bytes, or overflowing
    sums of huge inputs) propagate by IEEE rules exactly as in C, and that is the intended result."""

    def wrapped(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


# --- Q4_0 / Q5_0: symmetric, scale from the signed extreme --------------------------------

def _symmetric_codes(xt: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """(d (n,), codes (32, n) uint8) of quantize_row_q4_0_ref (half=8) / q5_0 (half=16)."""
    with np.errstate(over="ignore", invalid="ignore"):
        d = (_signed_absmax(xt) / f32(-half)).astype(np.float32)
        inv = _inverse(d)
        v = xt * inv
        v += f32(half + 0.5)  # in place: the same two roundings, one array fewer
    codes = _to_int8(v, np.isfinite(inv).all())
    np.minimum(codes, np.int8(2 * half - 1), out=codes)
    return d, codes.view(np.uint8)


def _store(d: np.ndarray, m, codes: np.ndarray, five_bit: bool) -> np.ndarray:
    """Block bytes of Q4_0 (m None) / Q4_1 / Q5_0 (m None, five_bit) / Q5_1 from float32 d, m and
    uint8 codes ``(32, nblocks)``.

    4-bit codes keep all 8 bits of ``code[j] | code[j+16] << 4`` (C's uint8 store); 5-bit codes are
    split into the ``qh`` word and masked nibbles, as ggml does.
    """
    at = 2 if m is None else 4
    out = np.empty((codes.shape[1], at + 16 + 4 * five_bit), np.uint8)
    _put_f16(out, 0, d)
    if m is not None:
        _put_f16(out, 2, m)
    if five_bit:
        out[:, at:at + 4] = _pack_bit4(codes)
        codes = codes & 0x0F
        at += 4
    out[:, at:] = _pack_halves(codes)
    return out


def _codes(blocks: np.ndarray, has_min: bool, five_bit: bool) -> np.ndarray:
    """The 32 unsigned codes of each block (inverse of :func:`_store`'s packing)."""
    at = 4 if has_min else 2
    if not five_bit:
        return _unpack_halves(blocks, at)
    codes = _unpack_halves(blocks, at + 4)
    codes |= _unpack_bit4(blocks[:, at:at + 4])
    return codes


def _scaled(q: np.ndarray, d: np.ndarray, m=None, out=None) -> np.ndarray:
    """float32 ``float(q) * d`` (then ``+ m``), into ``out`` if given: the int -> float conversion
    happens inside the multiply, so no float copy of the codes is made."""
    y = np.multiply(q, d, dtype=np.float32, out=out)
    if m is not None:
        y += m
    return y


def _centred(codes: np.ndarray, half: int) -> np.ndarray:
    """Unsigned codes (< 2*half) minus ``half``, in place, as int8."""
    signed = codes.view(np.int8)
    signed -= np.int8(half)
    return signed


def _encode_q4_0_ref(x: np.ndarray) -> np.ndarray:
    d, codes = _symmetric_codes(np.ascontiguousarray(x.T), 8)
    return _store(d, None, codes, five_bit=False)


def _encode_q5_0_ref(x: np.ndarray) -> np.ndarray:
    d, codes = _symmetric_codes(np.ascontiguousarray(x.T), 16)
    return _store(d, None, codes, five_bit=True)


@_ieee_quiet
def _decode_q4_0(blocks: np.ndarray, out=None) -> np.ndarray:
    return _scaled(_centred(_codes(blocks, False, False), 8), _get_f16(blocks, 0), out=out)


@_ieee_quiet
def _decode_q5_0(blocks: np.ndarray, out=None) -> np.ndarray:
    return _scaled(_centred(_codes(blocks, False, True), 16), _get_f16(blocks, 0), out=out)


# --- Q4_1 / Q5_1: scale and minimum ----------------------------------------------------

def _affine_codes(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, min, codes int8 (32, n)) of quantize_row_q4_1_ref (nmax=15) / q5_1 (nmax=31), as C computes them."""
    xt = np.ascontiguousarray(x.T)
    lo, hi = _min_max(xt)
    with np.errstate(over="ignore", invalid="ignore"):
        d = ((hi - lo) / f32(nmax)).astype(np.float32)
        inv = _inverse(d)
        v = xt - lo
        v *= inv
        v += f32(0.5)
    # with d and 1/d finite, x - min <= max - min is finite too, so v is in [0.5, nmax + 1)
    return d, lo, _to_int8(v, np.isfinite(d).all() and np.isfinite(inv).all())


def _encode_q4_1_ref(x: np.ndarray) -> np.ndarray:
    d, lo, codes = _affine_codes(x, 15)
    return _store(d, lo, np.minimum(np.int8(15), codes).view(np.uint8), five_bit=False)


def _encode_q5_1_ref(x: np.ndarray) -> np.ndarray:
    d, lo, codes = _affine_codes(x, 31)  # no cap: only the low 5 bits are stored
    return _store(d, lo, codes.view(np.uint8), five_bit=True)


def _decode_affine(blocks: np.ndarray, five_bit: bool, out=None) -> np.ndarray:
    # two roundings, q*d then +m: ggml's reference is compiled without FMA contraction
    return _scaled(_codes(blocks, True, five_bit), _get_f16(blocks, 0), _get_f16(blocks, 2), out=out)


@_ieee_quiet
def _decode_q4_1(blocks: np.ndarray, out=None) -> np.ndarray:
    return _decode_affine(blocks, False, out)


@_ieee_quiet
def _decode_q5_1(blocks: np.ndarray, out=None) -> np.ndarray:
    return _decode_affine(blocks, True, out)


# --- Q8_0 / Q8_1 ---------------------------------------------------------------------------

_JUST_BELOW_HALF = f32(0.49999997)  # the float32 just below 0.5
_SIGN = np.uint32(0x80000000)


def _roundf_to_int8(v: np.ndarray) -> np.ndarray:
    """``(int8_t)roundf(v)`` for finite float32 ``v`` with ``|v| < 128``, in three passes.

    ``trunc(v + copysign(0.49999997, v))`` is ``roundf(v)`` for every float32 with ``|v| < 256``
    (checked on all of them): adding 0.5 itself would round 0.49999997 up to 1, and one ulp less
    still carries every exact half across (the sum rounds to the next integer). The float -> int8
    cast truncates toward zero.
    """
    half = v.view(np.uint32) & _SIGN
    half |= _JUST_BELOW_HALF.view(np.uint32)
    shifted = half.view(np.float32)
    shifted += v
    return shifted.astype(np.int8)


def _q8_codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d (n,), codes int8 (n, 32)) of quantize_row_q8_0_ref / q8_1."""
    amax = np.abs(np.ascontiguousarray(x.T)).max(axis=0)  # reduce over a leading axis: vector speed
    with np.errstate(over="ignore", invalid="ignore"):
        d = (amax / f32(127)).astype(np.float32)
        inv = _inverse(d)
        if np.isinf(inv).any():  # 1/d overflowed (subnormal d): the C conversion rules decide
            return d, _c_int8(_roundf(x * inv[:, None]))
    # |x * (1/d)| <= 127 up to a rounding or two, so the short exact rounding applies
    return d, _roundf_to_int8(x * inv[:, None])


def _encode_q8_0(x: np.ndarray) -> np.ndarray:
    d, codes = _q8_codes(x)
    out = np.empty((x.shape[0], 34), np.uint8)
    _put_f16(out, 0, d)
    out[:, 2:] = codes.view(np.uint8)
    return out


@_ieee_quiet
def _decode_q8_0(blocks: np.ndarray, out=None) -> np.ndarray:
    d = _get_f16(blocks, 0)
    return _scaled(blocks[:, 2:34].view(np.int8), d, out=out)


def _encode_q8_1(x: np.ndarray) -> np.ndarray:
    d, codes = _q8_codes(x)
    out = np.empty((x.shape[0], 36), np.uint8)
    _put_f16(out, 0, d)
    with np.errstate(over="ignore", invalid="ignore"):
        _put_f16(out, 2, codes.sum(axis=1, dtype=np.int32).astype(np.float32) * d)
    out[:, 4:] = codes.view(np.uint8)
    return out


# --- Q1_0 ---------------------------------------------------------------------------------

@_ieee_quiet
def _encode_q1_0(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x).T.copy()  # (128, n): sum the 128 values one after another, as ggml's loop
    total = np.zeros(x.shape[0], np.float32)
    for row in ax:
        total = total + row
    out = np.empty((x.shape[0], 18), np.uint8)
    _put_f16(out, 0, total / f32(128))
    out[:, 2:] = np.packbits(x >= f32(0), axis=1, bitorder="little")
    return out


@_ieee_quiet
def _decode_q1_0(blocks: np.ndarray, out=None) -> np.ndarray:
    d = _get_f16(blocks, 0)
    bits = np.unpackbits(blocks[:, 2:18], axis=1, bitorder="little").view(np.bool_)  # 0/1 bytes
    if out is None:
        return np.where(bits, d, -d)
    np.copyto(out, np.broadcast_to(-d, out.shape))
    np.copyto(out, np.broadcast_to(d, out.shape), where=bits)
    return out


# --- importance-weighted encoders (ggml's quantize_q4_0 / q4_1 / q5_0 / q5_1 with an imatrix) ------

def _importance(x: np.ndarray, qw: np.ndarray, row_blocks: int) -> np.ndarray:
    """ggml's per-value weight ``qw * sqrt(sigma2 + x*x)``, ``sigma2`` = mean of x*x over the ROW.

    The row, not the block: ``sigma2`` is summed one value after another over all ``n_per_row``
    values (``np.add.accumulate`` is that sequential float32 sum) and divided by the row length.
    """
    n_row = row_blocks * x.shape[1]
    sq = (x * x).reshape(-1, n_row)
    sigma2 = np.add.accumulate(sq, axis=1)[:, -1] / f32(n_row)
    sigma2 = np.repeat(sigma2, row_blocks).reshape(-1, 1)
    return (qw * np.sqrt(sigma2 + x * x)).astype(np.float32)


def _weighted_symmetric(x: np.ndarray, weight: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """(d, codes) of ``make_qx_quants(32, half, x, L, rmse_type=1, weight)``: Q4_0 (8) / Q5_0 (16)."""
    scale, levels = make_qx_quants(np.ascontiguousarray(x.T), half, np.ascontiguousarray(weight.T))
    return scale, levels


def _weighted_affine(x: np.ndarray, weight: np.ndarray, nmax: int):
    """(d, m, codes) of ``make_qkx3_quants(32, nmax, x, weight, ..., -0.9, 0.05, 36)``: Q4_1 / Q5_1."""
    codes, scale, the_min = make_qkx3_quants(np.ascontiguousarray(x.T), np.ascontiguousarray(weight.T),
                                             nmax, -0.9, 0.05, 36)
    return scale, -the_min, codes


def _encode_weighted(kind: str):
    """The registry encoder of one of Q4_0/Q4_1/Q5_0/Q5_1: the reference without weights, ggml's
    importance-weighted search with them (``row_blocks`` tells where rows start, for ``sigma2``)."""
    ref = {"q4_0": _encode_q4_0_ref, "q4_1": _encode_q4_1_ref, "q5_0": _encode_q5_0_ref, "q5_1": _encode_q5_1_ref}[kind]
    five_bit = kind.startswith("q5")
    nmax = 31 if five_bit else 15

    def encode(x, *, mode="ggml", weights=None, row_blocks=None):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if mode == "best":  # Q4_1/Q5_1: lower-error search, ggml's block kept where better (qformat.search.best)
            from ..search.best import encode_best_affine
            return encode_best_affine(QType[kind.upper()], x, weights, encode(x, weights=weights, row_blocks=row_blocks))
        if weights is None:
            return ref(x)
        if row_blocks is None or x.shape[0] % row_blocks:
            raise ValueError(f"{kind.upper()}: weighted encoding needs whole rows (row_blocks)")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            w = _importance(x, np.asarray(weights, dtype=np.float32), row_blocks)
            if kind.endswith("_0"):
                d, codes = _weighted_symmetric(x, w, (nmax + 1) // 2)
                return _store(d, None, (codes & 0xFF).astype(np.uint8), five_bit)
            d, m, codes = _weighted_affine(x, w, nmax)
            return _store(d, m, codes.astype(np.uint8), five_bit)

    encode.__name__ = f"_encode_{kind}"
    return encode


# --- registration -------------------------------------------------------------------------

def _reference_only(ref):
    """Wrap a reference encoder in the registry's signature (these codecs take no weights)."""

    def encode(x, *, mode="ggml", weights=None):
        return ref(np.ascontiguousarray(x, dtype=np.float32))

    encode.__name__ = ref.__name__.replace("_ref", "")
    encode.__doc__ = ref.__doc__
    return encode


#: every decoder here writes into the registry's output; they are a few cheap passes, so larger
#: chunks (fewer calls) pay
_DECODE = dict(decode_into=True, decode_chunk_values=1 << 18)
_WEIGHTED = dict(weighted=True, row_stats=True, **_DECODE)
register(Codec(QType.Q4_0, _decode_q4_0, _encode_weighted("q4_0"), **_WEIGHTED, doc="4-bit, scale from signed max"))
register(Codec(QType.Q4_1, _decode_q4_1, _encode_weighted("q4_1"), **_WEIGHTED, modes=("ggml", "best"),
               doc="4-bit, scale and min"))
register(Codec(QType.Q5_0, _decode_q5_0, _encode_weighted("q5_0"), **_WEIGHTED, doc="5-bit, scale from signed max"))
register(Codec(QType.Q5_1, _decode_q5_1, _encode_weighted("q5_1"), **_WEIGHTED, modes=("ggml", "best"),
               doc="5-bit, scale and min"))
register(Codec(QType.Q8_0, _decode_q8_0, _reference_only(_encode_q8_0), **_DECODE, doc="8-bit, absmax scale"))
register(Codec(QType.Q8_1, None, _reference_only(_encode_q8_1), doc="8-bit activations; encode only"))
register(Codec(QType.Q1_0, _decode_q1_0, _reference_only(_encode_q1_0), **_DECODE,
               doc="1-bit signs, mean |x| scale"))
