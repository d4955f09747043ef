"""Strict GGUF reader: ``qformat.open(path) -> GGUFFile`` over a read-only mmap.

Everything up to the tensor data (header, every key/value pair, every tensor info) is validated
when the file is opened; nothing is checked lazily later. Each broken rule raises its own
``qformat.errors`` class carrying the absolute byte offset where the rule is broken:

==========================  =====================================================================
BadMagic                    the file MUST start with ``GGUF``
UnsupportedVersion          the version MUST be 2 or 3 (0, 1 and >= 4 rejected in both byte orders)
Truncated                   the file MUST NOT end inside a fixed-width field
CountTooLarge               n_tensors, n_kv, array counts and string lengths MUST fit in the bytes
                            that remain, at the smallest encoding of each item (key/value pair 13
                            bytes, tensor info 24, array element: its fixed width, 8 per string,
                            12 per inner array); checked before anything is allocated or looped
UnknownValueType            value type and array element type ids MUST be 0..12
NestingTooDeep              arrays MUST NOT nest more than 8 levels (an array of arrays is 2)
BadBool                     a BOOL byte MUST be 0 or 1 (scalars and every array element)
BadUTF8                     keys, string values and tensor names MUST be valid UTF-8
EmptyKey / DuplicateKey     keys MUST be non-empty and unique
BadAlignment                ``general.alignment``, if present, MUST be a UINT32 power of two in
                            [1, 2**24]
DuplicateTensor             tensor names MUST be unique
BadTensorName               a tensor name MUST be 1..63 bytes (it fits GGML_MAX_NAME=64 with NUL)
BadDims                     n_dims MUST be 1..4 (a scalar is n_dims=1, ne=[1]); every ne MUST be
                            in [1, 2**63); element count and byte size MUST fit int64
BadTensorType               the ggml type id MUST be known and not removed
BadRowLength                ne[0] MUST be a multiple of the type's block size
BadTensorOffset             offsets MUST be multiples of the alignment, increasing, and no tensor
                            may overlap the previous one or wrap past 2**64
TensorDataTruncated         every tensor's bytes MUST lie inside the file
==========================  =====================================================================

Byte order: the version is read little-endian; if that is not 2 or 3 but its byte swap is, the
file is big-endian (gguf-py can write such files) and every number in it is big-endian -- header,
lengths, values, dims, offsets, and the elements of plain tensor types (F32, F16, BF16, F64,
I8..I64). ``read()`` returns native float32 either way. Quantized blocks are stored as opaque
bytes by gguf-py in either byte order, so they are decoded as they are.

``data_offset`` follows ggml: the end of the tensor infos rounded up to the alignment, or, in a
file without tensors, the end of the tensor infos itself (such files need not be padded).

Speed: the structure is parsed with precompiled ``struct`` unpackers over the mmap (the
declarative ``schema`` describes the same bytes and is what the writer builds with). Numeric
arrays become ``np.frombuffer`` views; string arrays are walked for their lengths only and
validated as UTF-8 in large slices (see :func:`_walk_strings`); ``str`` objects are created only
when a string is accessed.
"""
from __future__ import annotations

import builtins
import mmap
import os
import struct
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Optional, Union

import numpy as np

from .. import errors as E
from ..types import BLOCK, REMOVED_IDS, TYPE_COUNT, QType
from .schema import DEFAULT_ALIGNMENT, MAGIC, align_up
from .values import (
    FIXED_DTYPE, FIXED_SIZE, MAX_NESTING, MIN_ELEM_SIZE, Field, StringArray, TypedValue, ValueType,
)

SUPPORTED_VERSIONS = (2, 3)
MAX_ALIGNMENT = 1 << 24
MAX_NAME_BYTES = 63  # GGML_MAX_NAME (64) including the terminating NUL
MAX_DIMS = 4
KV_MIN_BYTES = 8 + 4 + 1  # key length, value type, smallest value (one byte); the key may be empty
TENSOR_INFO_MIN_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset (dims checked separately)
INT64_MAX = (1 << 63) - 1
_U64_LIMIT = 1 << 64

_VALUE_TYPE_MAX = max(ValueType)


class TensorInfo(NamedTuple):
    """One tensor: ``shape`` in numpy order (reversed ``ne``), ``offset`` absolute in the file."""

    name: str
    shape: tuple
    qtype: QType
    offset: int
    nbytes: int


class _Parser:
    """A cursor over the file bytes that raises the right error class for every rule."""

    def __init__(self, buf, size: int, path: str, byteorder: str):
        self.buf = buf
        self.size = size
        self.path = path
        self.bo = byteorder
        self.pos = 0
        self._u32 = struct.Struct(byteorder + "I").unpack_from
        self._u64 = struct.Struct(byteorder + "Q").unpack_from
        self.u64_unpack_from = self._u64
        self._np = {t: np.dtype(byteorder + d) for t, d in FIXED_DTYPE.items()}

    # -- errors -------------------------------------------------------------------------------
    def err(self, cls, msg: str, offset: int):
        return cls(msg, offset=offset, path=self.path)

    def need(self, n: int, what: str) -> int:
        p = self.pos
        if p + n > self.size:
            raise self.err(E.Truncated, f"file ends inside {what} ({n} bytes needed, {self.size - p} left)", p)
        self.pos = p + n
        return p

    def remaining(self) -> int:
        return self.size - self.pos

    # -- fixed fields -------------------------------------------------------------------------
    def u32(self, what: str) -> int:
        p = self.need(4, what)
        return self._u32(self.buf, p)[0]

    def u64(self, what: str) -> int:
        p = self.need(8, what)
        return self._u64(self.buf, p)[0]

    def count(self, what: str, min_item: int) -> int:
        """A u64 count of items of at least ``min_item`` bytes each, checked against what remains."""
        at = self.pos
        n = self.u64(what)
        if n * min_item > self.size - self.pos:
            raise self.err(E.CountTooLarge, f"{what} is {n}, but only {self.size - self.pos} bytes remain "
                           f"(at least {min_item} per item)", at)
        return n

    def raw_string(self, what: str) -> tuple[int, int]:
        """(start, length) of a string's bytes; the cursor moves past it."""
        at = self.pos
        n = self.u64(f"the length of {what}")
        if n > self.size - self.pos:
            raise self.err(E.CountTooLarge, f"{what} length is {n}, but only {self.size - self.pos} bytes remain", at)
        start = self.pos
        self.pos = start + n
        return start, n

    def decode(self, start: int, n: int, what: str) -> str:
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise self.err(E.BadUTF8, f"{what} is not valid UTF-8 ({e.reason})", start + e.start) from None

    def string(self, what: str) -> str:
        start, n = self.raw_string(what)
        return self.decode(start, n, what)

    # -- values -------------------------------------------------------------------------------
    def value_type(self, what: str) -> ValueType:
        at = self.pos
        t = self.u32(what)
        if t > _VALUE_TYPE_MAX:
            raise self.err(E.UnknownValueType, f"{what} {t} is not a GGUF value type (0..12)", at)
        return ValueType(t)

    def value(self, t: ValueType, key: str, depth: int) -> TypedValue:
        if t is ValueType.STRING:
            return TypedValue(self.string(f"the string value of {key!r}"), t)
        if t is ValueType.ARRAY:
            return self.array(key, depth + 1)
        p = self.need(FIXED_SIZE[t], f"the {t.name} value of {key!r}")
        if t is ValueType.BOOL:
            v = self.buf[p]
            if v > 1:
                raise self.err(E.BadBool, f"BOOL value of {key!r} is {v}, not 0 or 1", p)
            return TypedValue(bool(v), t)
        # through numpy rather than struct so that float NaN payloads keep their exact bits
        v = np.frombuffer(self.buf, dtype=self._np[t], count=1, offset=p)[0]
        return TypedValue(v, t)

    def array(self, key: str, depth: int) -> TypedValue:
        at = self.pos
        if depth > MAX_NESTING:
            raise self.err(E.NestingTooDeep, f"arrays in {key!r} nest deeper than {MAX_NESTING} levels", at)
        elem = self.value_type(f"the array element type of {key!r}")
        n = self.count(f"the element count of the array {key!r}", MIN_ELEM_SIZE[elem])
        if elem is ValueType.STRING:
            start = self.pos
            self.pos = _walk_strings(self, n, key)
            return TypedValue(StringArray(self.buf, start, self.pos, n, self.bo), ValueType.ARRAY, elem)
        if elem is ValueType.ARRAY:
            items = [self.array(key, depth + 1) for _ in range(n)]
            return TypedValue(items, ValueType.ARRAY, elem)
        start = self.pos
        self.pos = start + n * FIXED_SIZE[elem]  # fits: count() checked n * width <= remaining
        if elem is ValueType.BOOL:
            raw = np.frombuffer(self.buf, dtype=np.uint8, count=n, offset=start)
            bad = np.flatnonzero(raw > 1)
            if bad.size:
                i = int(bad[0])
                raise self.err(E.BadBool, f"element {i} of BOOL array {key!r} is {raw[i]}, not 0 or 1", start + i)
            return TypedValue(raw.view(np.bool_), ValueType.ARRAY, elem)
        arr = np.frombuffer(self.buf, dtype=self._np[elem], count=n, offset=start)
        if self.bo != "=" and not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
            arr.flags.writeable = False
        return TypedValue(arr, ValueType.ARRAY, elem)


def _walk_strings(p: _Parser, n: int, key: str) -> int:
    """Walk ``n`` length-prefixed strings from ``p.pos``; validate them; return the end offset.

    Only the u64 lengths are read in the loop (no str objects, no per-item bounds test: reading
    past the end raises ``struct.error``, and an overrun is located by a second, checked pass). UTF-8 validity is
    then checked on the whole region at once: when every length is below 128, each of its 8 bytes
    is ASCII, so no multi-byte sequence can straddle a length field and the region is valid UTF-8
    exactly when every string is. Longer strings split the region into pieces checked separately.
    """
    buf, size, u64 = p.buf, p.size, p._u64
    pos = start = p.pos
    long_at = []  # length fields holding a value >= 128 (they may contain non-ASCII bytes)
    try:
        for _ in range(n):
            m = u64(buf, pos)[0]
            if m >= 128:
                long_at.append(pos)
            pos += 8 + m
    except (struct.error, OverflowError):
        pos = size + 1  # read past the end (or past 2**63 after a huge length): located below
    if pos > size:
        # find the first string whose length field or bytes run past the end
        q = start
        for _ in range(n):
            if q + 8 > size:
                raise p.err(E.Truncated, f"file ends inside a string length in array {key!r}", q)
            m = u64(buf, q)[0]
            if m > size - q - 8:
                raise p.err(E.CountTooLarge, f"string length {m} in array {key!r} exceeds the "
                            f"{size - q - 8} bytes that remain", q)
            q += 8 + m
    piece = start
    for at in long_at + [pos]:
        _check_utf8(p, piece, at, key)
        piece = at + 8
    return pos


def _check_utf8(p: _Parser, a: int, b: int, key: str) -> None:
    """Raise BadUTF8 unless bytes [a, b) are valid UTF-8 (the bytes may include ASCII-only
    length fields, see above).

    A multi-byte sequence consists of bytes >= 0x80 only, so the range is valid exactly when every
    maximal run of such bytes is valid on its own: only those runs (each followed by one ASCII
    separator) are handed to the decoder, which skips most of the bytes of a typical vocabulary.
    """
    if a >= b:
        return
    region = np.frombuffer(p.buf, dtype=np.uint8, count=b - a, offset=a)
    high = region >= 0x80
    if not high.any():
        return  # pure ASCII
    keep = high.copy()
    keep[1:] |= high[:-1]  # the byte after each run (ASCII, or the end) separates runs
    try:
        str(region[keep].tobytes(), "utf-8")
    except UnicodeDecodeError as e:
        # map the position in the compressed bytes back to the file
        at = a + int(np.flatnonzero(keep)[e.start])
        raise p.err(E.BadUTF8, f"a string in array {key!r} is not valid UTF-8 ({e.reason})", at) from None


class GGUFFile:
    """An open, fully validated GGUF file. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        self._fh = builtins.open(self.path, "rb")
        self._mm: Any = None
        try:
            self.file_size = os.fstat(self._fh.fileno()).st_size
            if self.file_size:
                self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
                buf: Any = self._mm
            else:
                buf = b""
            self._parse(buf)
        except BaseException:
            self.close()
            raise

    # -- parsing ------------------------------------------------------------------------------
    def _parse(self, buf) -> None:
        size, path = self.file_size, self.path
        if size < 4 or bytes(buf[:4]) != MAGIC:
            if size < 4 and MAGIC.startswith(bytes(buf[:size])):
                raise E.Truncated(f"file ends inside the magic ({size} of 4 bytes)", offset=0, path=path)
            raise E.BadMagic(f"file starts with {bytes(buf[:4])!r}, not {MAGIC!r}", offset=0, path=path)
        if size < 8:
            raise E.Truncated("file ends inside the version", offset=4, path=path)
        v_le = struct.unpack_from("<I", buf, 4)[0]
        v_be = struct.unpack_from(">I", buf, 4)[0]
        if v_le in SUPPORTED_VERSIONS:
            bo = "<"
        elif v_be in SUPPORTED_VERSIONS:
            bo = ">"
        else:
            raise E.UnsupportedVersion(
                f"version {v_le} (byte-swapped {v_be}) is not supported: only GGUF v2 and v3", offset=4, path=path)
        self.version = v_le if bo == "<" else v_be
        self.byteorder = bo
        p = _Parser(buf, size, path, bo)
        self._p = p
        p.pos = 8
        n_tensors = p.count("the tensor count", TENSOR_INFO_MIN_BYTES)
        n_kv = p.count("the key/value count", KV_MIN_BYTES)

        kvs: dict[str, TypedValue] = {}
        fields: dict[str, Field] = {}
        for _ in range(n_kv):
            at = p.pos
            kstart, klen = p.raw_string("a key")
            if klen == 0:
                raise p.err(E.EmptyKey, "empty metadata key", at)
            key = p.decode(kstart, klen, "a key")
            if key in kvs:
                raise p.err(E.DuplicateKey, f"key {key!r} appears twice (first at byte {fields[key].offset})", at)
            t = p.value_type(f"the value type of {key!r}")
            tv = p.value(t, key, 0)
            kvs[key] = tv
            fields[key] = Field(key, t, tv.elem_type, at, p.pos - at)

        alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in kvs:
            f = fields["general.alignment"]
            if f.type is not ValueType.UINT32:
                raise p.err(E.BadAlignment, f"general.alignment has type {f.type.name}, not UINT32", f.offset)
            alignment = int(kvs["general.alignment"].value)
            if alignment == 0 or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
                raise p.err(E.BadAlignment, f"general.alignment {alignment} is not a power of two in "
                            f"[1, {MAX_ALIGNMENT}]", f.offset + f.nbytes - 4)
        self.alignment = alignment

        at = p.pos
        if n_tensors * TENSOR_INFO_MIN_BYTES > p.remaining():
            raise p.err(E.CountTooLarge, f"the tensor count is {n_tensors}, but only {p.remaining()} bytes "
                        f"remain for tensor infos", 8)
        infos = []  # (name, ne, qtype, rel offset, nbytes, offset field position)
        names: dict[str, int] = {}
        for _ in range(n_tensors):
            at = p.pos
            nstart, nlen = p.raw_string("a tensor name")
            if nlen == 0 or nlen > MAX_NAME_BYTES:
                raise p.err(E.BadTensorName, f"tensor name is {nlen} bytes; it must be 1..{MAX_NAME_BYTES}", at)
            name = p.decode(nstart, nlen, "a tensor name")
            if name in names:
                raise p.err(E.DuplicateTensor, f"tensor {name!r} appears twice (first at byte {names[name]})", at)
            names[name] = at
            dims_at = p.pos
            n_dims = p.u32(f"the n_dims of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise p.err(E.BadDims, f"tensor {name!r} has n_dims {n_dims}; it must be 1..{MAX_DIMS}", dims_at)
            ne = []
            nelem = 1
            for j in range(n_dims):
                d_at = p.pos
                d = p.u64(f"dimension {j} of {name!r}")
                if d == 0 or d > INT64_MAX:
                    raise p.err(E.BadDims, f"dimension {j} of {name!r} is {d}; it must be in [1, 2**63)", d_at)
                ne.append(d)
                nelem *= d
            if nelem > INT64_MAX:
                raise p.err(E.BadDims, f"tensor {name!r} has {nelem} elements, more than int64 holds", dims_at)
            type_at = p.pos
            tid = p.u32(f"the ggml type of {name!r}")
            if tid in REMOVED_IDS or tid >= TYPE_COUNT or tid not in QType._value2member_map_:
                what = f"removed type {REMOVED_IDS[tid]}" if tid in REMOVED_IDS else "unknown"
                raise p.err(E.BadTensorType, f"tensor {name!r} has ggml type id {tid} ({what})", type_at)
            qt = QType(tid)
            elems, bsize = BLOCK[qt]
            if ne[0] % elems:
                raise p.err(E.BadRowLength, f"tensor {name!r}: row length {ne[0]} is not a multiple of "
                            f"{qt.name}'s block size {elems}", dims_at + 4)
            nbytes = nelem // elems * bsize
            if nbytes > INT64_MAX:
                raise p.err(E.BadDims, f"tensor {name!r} takes {nbytes} bytes, more than int64 holds", dims_at)
            off_at = p.pos
            off = p.u64(f"the data offset of {name!r}")
            infos.append((name, ne, qt, off, nbytes, off_at))

        end_infos = p.pos
        self.data_offset = align_up(end_infos, alignment) if n_tensors else end_infos
        tensors: dict[str, TensorInfo] = {}
        prev_end = 0
        for name, ne, qt, off, nbytes, off_at in infos:
            if off % alignment:
                raise p.err(E.BadTensorOffset, f"tensor {name!r} offset {off} is not a multiple of the "
                            f"alignment {alignment}", off_at)
            if off < prev_end:
                raise p.err(E.BadTensorOffset, f"tensor {name!r} at offset {off} overlaps or precedes the "
                            f"previous tensor (which ends at {prev_end})", off_at)
            if off + nbytes >= _U64_LIMIT:
                raise p.err(E.BadTensorOffset, f"tensor {name!r}: offset {off} + {nbytes} bytes wraps past 2**64",
                            off_at)
            if self.data_offset + off + nbytes > size:
                raise p.err(E.TensorDataTruncated, f"tensor {name!r} needs bytes up to "
                            f"{self.data_offset + off + nbytes}, but the file has {size}", off_at)
            prev_end = off + nbytes
            tensors[name] = TensorInfo(name, tuple(int(d) for d in reversed(ne)), qt,
                                       self.data_offset + off, nbytes)

        self._typed = kvs
        self._fields = fields
        self.metadata: Mapping[str, Any] = MappingProxyType({k: v.plain() for k, v in kvs.items()})
        self.tensors: Mapping[str, TensorInfo] = MappingProxyType(tensors)

    # -- access -------------------------------------------------------------------------------
    def field(self, key: str) -> Field:
        return self._fields[key]

    @property
    def fields(self) -> Mapping[str, Field]:
        return MappingProxyType(self._fields)

    def typed_metadata(self) -> dict[str, TypedValue]:
        """Every value with its exact GGUF type; ``qformat.write(..., metadata=f.typed_metadata())``
        reproduces the key/value section byte for byte."""
        return dict(self._typed)

    def _buffer(self):
        if self._mm is None and self.file_size:
            raise ValueError(f"{self.path}: file is closed")
        return self._mm if self._mm is not None else b""

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes: a zero-copy read-only uint8 view into the mmap."""
        t = self.tensors[name]
        return np.frombuffer(self._buffer(), dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def read(self, name: str) -> np.ndarray:
        """The tensor decoded to native float32 of ``shape`` (raises UnsupportedType if qformat has
        no decoder for its type)."""
        from ..codecs import can_decode, dequantize

        t = self.tensors[name]
        if not can_decode(t.qtype):
            raise E.UnsupportedType(f"tensor {name!r}: qformat cannot decode {t.qtype.name}", path=self.path)
        raw = self.raw(name)
        elems, bsize = BLOCK[t.qtype]
        if self.byteorder == ">" and elems == 1 and bsize > 1:
            # plain element types are stored in the file's byte order; codecs expect little-endian
            raw = raw.view(f">u{bsize}").astype(f"<u{bsize}").view(np.uint8)
        rows = raw.reshape(-1, t.shape[-1] // elems * bsize)  # one row of blocks per innermost row
        return dequantize(rows, t.qtype).reshape(t.shape)

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views of it are still alive; the mapping is released with them
        fh, self._fh = getattr(self, "_fh", None), None
        if fh is not None:
            fh.close()

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<GGUFFile {self.path!r} v{self.version} {self.byteorder} {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors>")


def open(path: Union[str, os.PathLike]) -> GGUFFile:  # noqa: A001 (mirrors builtins.open on purpose)
    """Open and validate a GGUF file (see the module docstring for every rule enforced)."""
    return GGUFFile(path)
