"""The codec registry: one table from QType to the functions that encode and decode its blocks.

A codec works on whole blocks and knows nothing of files or shapes:

* ``decode(blocks)``: ``uint8 (nblocks, block_bytes)`` -> ``float32 (nblocks, block_elems)``.
* ``encode(x, *, mode, weights)``: ``float32 (nblocks, block_elems)`` (C-contiguous, finite) ->
  ``uint8 (nblocks, block_bytes)``. ``weights`` is ``None`` or a float32 array of the same shape
  as ``x`` (importance weights, tiled from a per-column imatrix); ``mode`` is one of
  ``codec.modes`` (``"ggml"`` is byte-identical to ggml's reference; ``"best"`` lowers the error).

``quantize``/``dequantize`` below add the shape handling, validation and chunking, so every codec
gets them the same way. Family modules register their codecs by calling :func:`register` when
imported; the imports at the bottom of this module are the explicit list of families.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..errors import CodecError, UnsupportedType
from ..types import BLOCK, QType, QTypeLike, as_qtype

DecodeFn = Callable[[np.ndarray], np.ndarray]
EncodeFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Codec:
    qtype: QType
    decode: Optional[DecodeFn]
    encode: Optional[EncodeFn] = None
    modes: tuple = ("ggml",)
    #: whether ``encode`` uses importance weights (others reject ``imatrix=``)
    weighted: bool = False
    #: float input values that the type cannot hold must raise (plain float types allow inf/nan)
    finite_only: bool = True
    #: with weights, ``encode`` also gets ``row_blocks=`` (blocks per row): its weighting uses
    #: statistics of the whole row (the legacy types' sigma2)
    row_stats: bool = False
    #: values per chunk handed to ``decode`` (0: :data:`CHUNK_VALUES`); a decoder whose cost is mostly
    #: fixed per call (few, cheap passes) is faster on larger chunks
    decode_chunk_values: int = 0
    #: ``decode`` accepts ``out=`` (the float32 ``(nblocks, block_elems)`` slice of the result) and
    #: writes into it: no fresh array and no copy per chunk, which cheap decoders feel
    decode_into: bool = False
    doc: str = field(default="", compare=False)


REGISTRY: dict[QType, Codec] = {}

#: values per chunk handed to a codec; keeps temporaries in cache and memory bounded
CHUNK_VALUES = 1 << 16


def register(codec: Codec) -> Codec:
    if codec.qtype in REGISTRY:
        raise RuntimeError(f"codec for {codec.qtype.name} registered twice")
    REGISTRY[codec.qtype] = codec
    return codec


def get_codec(qtype: QTypeLike) -> Codec:
    qt = _qtype(qtype)
    try:
        return REGISTRY[qt]
    except KeyError:
        raise UnsupportedType(f"no codec for {qt.name}: qformat can store and copy it, not convert it") from None


def can_decode(qtype: QTypeLike) -> bool:
    c = REGISTRY.get(_qtype(qtype))
    return c is not None and c.decode is not None


def can_encode(qtype: QTypeLike) -> bool:
    c = REGISTRY.get(_qtype(qtype))
    return c is not None and c.encode is not None


def _qtype(t: QTypeLike) -> QType:
    try:
        return as_qtype(t)
    except (ValueError, TypeError) as e:
        raise CodecError(str(e)) from None


#: Codecs reproduce ggml's float32 arithmetic, where overflow to inf, inf*0 = NaN and the like are
#: part of the defined result (e.g. a huge input or a NaN fp16 scale in random bytes), not a fault:
#: numpy's RuntimeWarnings for them would only be noise to the caller.
#: (A fresh errstate each time: codecs may call quantize() again, and one errstate cannot nest.)
def _c_float_semantics() -> np.errstate:
    return np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")


def _chunks(total: int, step: int):
    """(start, stop) of consecutive slices of ``step`` blocks covering ``total`` blocks."""
    for s in range(0, total, step):
        yield s, min(total, s + step)


def quantize(x, qtype: QTypeLike, *, mode: str = "ggml", imatrix=None) -> np.ndarray:
    """Encode float values ``(..., n)`` to ``uint8 (..., n // block_elems * block_bytes)``.

    ``n`` must be a multiple of the type's block size. ``imatrix`` is an optional per-column
    importance vector of length ``n`` (as llama.cpp's ``llama-imatrix`` computes) or, for input of
    three or more dimensions, ``(x.shape[-3], n)``: one vector per matrix along axis -3 (the experts
    of a 3-D expert tensor, as llama-quantize applies a per-expert imatrix). The input is
    converted to float32 and checked chunk by chunk, so a float16 or float64 source is never copied
    whole.
    """
    qt = _qtype(qtype)
    codec = get_codec(qt)
    if codec.encode is None:
        raise UnsupportedType(f"qformat can decode {qt.name} but not encode it")
    if mode not in codec.modes:
        raise CodecError(f"{qt.name}: mode {mode!r} not available (choose from {', '.join(codec.modes)})")
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise CodecError(f"{qt.name}: expected floating-point input, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise CodecError(f"{qt.name}: expected an array of at least one dimension")
    elems, nbytes = BLOCK[qt]
    n = arr.shape[-1]
    if n % elems:
        raise CodecError(f"{qt.name}: row length {n} is not a multiple of the block size {elems}")
    wblocks = None
    if imatrix is not None:
        if not codec.weighted:
            raise CodecError(f"{qt.name}: this encoder takes no importance matrix")
        weights = np.ascontiguousarray(imatrix, dtype=np.float32)
        if weights.ndim == 2 and arr.ndim >= 3 and weights.shape == (arr.shape[-3], n):
            # one vector per matrix: encode matrix by matrix, each with its own weights
            mats = arr.reshape(-1, *arr.shape[-3:])
            per = [quantize(mats[:, k], qt, mode=mode, imatrix=weights[k]) for k in range(weights.shape[0])]
            return np.stack(per, axis=1).reshape(*arr.shape[:-1], n // elems * nbytes)
        if weights.shape != (n,):
            raise CodecError(f"{qt.name}: imatrix has shape {weights.shape}, expected ({n},)")
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise CodecError(f"{qt.name}: imatrix values must be finite and non-negative")
        wblocks = weights.reshape(-1, elems)
    lead = arr.shape[:-1]
    blocks = arr.reshape(-1, elems)  # a view for contiguous input; a copy only for strided input
    total = blocks.shape[0]
    out = np.empty((total, nbytes), dtype=np.uint8)
    per_row = n // elems if n else 1
    step = max(1, CHUNK_VALUES // elems)
    if wblocks is not None:
        step = max(per_row, step // per_row * per_row)  # chunks start at a row boundary
    for s, e in _chunks(total, step):
        chunk = np.ascontiguousarray(blocks[s:e], dtype=np.float32)
        if codec.finite_only and not np.isfinite(chunk).all():
            bad = s * elems + int(np.flatnonzero(~np.isfinite(chunk.reshape(-1)))[0])
            raise CodecError(f"{qt.name}: input has a non-finite value (first at flat index {bad})")
        w = None
        if wblocks is not None:
            w = np.tile(wblocks, ((e - s) // per_row, 1))
        extra = {"row_blocks": per_row} if codec.row_stats and w is not None else {}
        with _c_float_semantics():
            out[s:e] = codec.encode(chunk, mode=mode, weights=w, **extra)
    return out.reshape(*lead, n // elems * nbytes)


def dequantize(data, qtype: QTypeLike) -> np.ndarray:
    """Decode ``uint8 (..., nbytes)`` to ``float32 (..., nbytes // block_bytes * block_elems)``."""
    qt = _qtype(qtype)
    codec = get_codec(qt)
    if codec.decode is None:
        raise UnsupportedType(f"qformat cannot decode {qt.name}")
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        raise CodecError(f"{qt.name}: encoded data must be uint8, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise CodecError(f"{qt.name}: encoded data must have at least one dimension")
    elems, nbytes = BLOCK[qt]
    m = arr.shape[-1]
    if m % nbytes:
        raise CodecError(f"{qt.name}: last axis of {m} bytes is not a multiple of the {nbytes}-byte block")
    lead = arr.shape[:-1]
    blocks = np.ascontiguousarray(arr).reshape(-1, nbytes)
    total = blocks.shape[0]
    out = np.empty((total, elems), dtype=np.float32)
    step = max(1, (codec.decode_chunk_values or CHUNK_VALUES) // elems)
    for s, e in _chunks(total, step):
        with _c_float_semantics():
            if codec.decode_into:
                codec.decode(blocks[s:e], out=out[s:e])
            else:
                out[s:e] = codec.decode(blocks[s:e])
    return out.reshape(*lead, m // nbytes * elems)


# The explicit list of codec families. Each module calls register() on import.
from . import floats  # noqa: E402,F401
from . import kquants  # noqa: E402,F401
from . import iquants  # noqa: E402,F401
from . import ternary  # noqa: E402,F401
from . import fp4  # noqa: E402,F401
from . import kquants_sym  # noqa: E402,F401
from . import legacy  # noqa: E402,F401
