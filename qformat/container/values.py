"""GGUF metadata values: the 13 value types, typed values, and the lazy string array.

Format rules (GGUF v2/v3):

* A value type is a u32 id: 0 UINT8, 1 INT8, 2 UINT16, 3 INT16, 4 UINT32, 5 INT32, 6 FLOAT32,
  7 BOOL, 8 STRING, 9 ARRAY, 10 UINT64, 11 INT64, 12 FLOAT64. Any other id MUST be rejected.
* BOOL is one byte that MUST be 0 or 1. STRING is a u64 byte length followed by that many bytes of
  UTF-8 (no terminating NUL); the bytes MUST be valid UTF-8. ARRAY is a u32 element type, a u64
  count, then the elements back to back; arrays MAY nest (qformat accepts up to 8 levels, where
  an array of arrays is 2 levels; ggml's own reader accepts no nesting at all).

Python mapping used by the reader (``GGUFFile.metadata``) and accepted by the writer:

* numeric scalars are numpy scalars of the exact width (``np.uint8`` ... ``np.float64``); BOOL is a
  Python ``bool``; STRING is ``str``;
* numeric arrays are 1-D numpy arrays of the exact dtype in native byte order, BOOL arrays numpy
  ``bool`` arrays, STRING arrays a :class:`StringArray` (decoded on access), nested arrays lists.

Because a Python value does not always say which GGUF type it came from (an empty list, a nested
list, a plain ``int``), :class:`TypedValue` carries the type explicitly; ``GGUFFile.typed_metadata()``
returns every value wrapped so that writing it back reproduces the header byte for byte.

Writer type choice for untyped Python values (documented, never silently narrowed):

* ``bool`` -> BOOL; ``str`` -> STRING; numpy scalars and arrays -> their exact type;
* plain ``int`` -> INT64 and plain ``float`` -> FLOAT64, so no value ever loses range or precision;
  except the standard keys in :data:`STANDARD_KEY_TYPES`, which always get their spec type
  (``general.alignment`` UINT32, ``split.count`` UINT16, ...);
* a list of ``str`` -> ARRAY of STRING; of ``bool`` -> ARRAY of BOOL; of ``int`` -> ARRAY of INT64;
  of ``float`` (ints allowed among them) -> ARRAY of FLOAT64; of lists/arrays -> nested ARRAY;
* an empty plain list has no element type and is refused: pass an empty numpy array or a
  ``TypedValue([], ValueType.ARRAY, elem_type)``.

A value that does not fit the type it must be written as raises ``ValueOutOfRange``.
"""
from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from ..errors import ValueOutOfRange, WriteError


class ValueType(enum.IntEnum):
    """GGUF metadata value type ids (``enum gguf_type``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


#: numpy dtype (without byte order) of every fixed-width type; BOOL is stored as one byte.
FIXED_DTYPE: dict[ValueType, str] = {
    ValueType.UINT8: "u1", ValueType.INT8: "i1", ValueType.UINT16: "u2", ValueType.INT16: "i2",
    ValueType.UINT32: "u4", ValueType.INT32: "i4", ValueType.FLOAT32: "f4", ValueType.BOOL: "u1",
    ValueType.UINT64: "u8", ValueType.INT64: "i8", ValueType.FLOAT64: "f8",
}

#: bytes taken by one element of each fixed-width type
FIXED_SIZE: dict[ValueType, int] = {t: np.dtype(d).itemsize for t, d in FIXED_DTYPE.items()}

#: the smallest encoding of one array element of each type (STRING: its length; ARRAY: its
#: element type and count) -- used to refuse impossible counts before looping over them
MIN_ELEM_SIZE: dict[ValueType, int] = {**FIXED_SIZE, ValueType.STRING: 8, ValueType.ARRAY: 12}

_NUMPY_TO_TYPE: dict[np.dtype, ValueType] = {
    np.dtype(d): t for t, d in FIXED_DTYPE.items() if t is not ValueType.BOOL
}

#: Keys whose type the GGUF spec fixes; the writer gives plain ints these types (and checks range).
STANDARD_KEY_TYPES: dict[str, ValueType] = {
    "general.alignment": ValueType.UINT32,
    "general.quantization_version": ValueType.UINT32,
    "general.file_type": ValueType.UINT32,
    "split.no": ValueType.UINT16,
    "split.count": ValueType.UINT16,
    "split.tensors.count": ValueType.INT32,
}

MAX_NESTING = 8


@dataclass(frozen=True)
class TypedValue:
    """A metadata value together with the GGUF type it is (to be) stored as.

    ``elem_type`` is set for ``ARRAY`` only. For an array of arrays, ``value`` is a list of
    ``TypedValue`` (so every inner element type is kept); otherwise it is the plain value.
    """

    value: Any
    type: ValueType
    elem_type: Optional[ValueType] = None

    def plain(self) -> Any:
        """The value as ``GGUFFile.metadata`` shows it (inner TypedValues unwrapped)."""
        if self.type is ValueType.ARRAY and self.elem_type is ValueType.ARRAY:
            return [v.plain() for v in self.value]
        return self.value


@dataclass(frozen=True)
class Field:
    """Where a metadata key lives: ``offset`` is the absolute offset of the key/value pair (its key
    length field) and ``nbytes`` the size of the whole pair."""

    key: str
    type: ValueType
    elem_type: Optional[ValueType]
    offset: int
    nbytes: int


class StringArray(Sequence):
    """A read-only ``Sequence[str]`` over a GGUF string array, decoded on access.

    Opening a file validates every string (lengths and UTF-8) without creating ``str`` objects;
    this class creates them only when indexed or iterated. The per-string offsets are found on
    the first indexed access (one pass over the lengths) and kept as a numpy array.
    """

    __slots__ = ("_buf", "_start", "_end", "_n", "_u64", "_byteorder", "_offsets")

    def __init__(self, buf, start: int, end: int, n: int, byteorder: str = "<"):
        self._buf = buf  # the mmap (or bytes); strings are decoded from it on access
        self._start = start  # offset of the first string's length field
        self._end = end  # one past the last string's bytes
        self._n = n
        self._byteorder = byteorder
        self._u64 = struct.Struct(byteorder + "Q").unpack_from
        self._offsets: Optional[np.ndarray] = None

    def encoded_le(self) -> Optional[bytes]:
        """The array body exactly as stored (lengths and bytes), if stored little-endian."""
        return bytes(self._buf[self._start:self._end]) if self._byteorder == "<" else None

    def __len__(self) -> int:
        return self._n

    def _offs(self) -> np.ndarray:
        if self._offsets is None:
            offs = np.empty(self._n + 1, dtype=np.int64)
            u64, buf, pos = self._u64, self._buf, self._start
            for i in range(self._n):
                offs[i] = pos
                pos += 8 + u64(buf, pos)[0]
            offs[self._n] = pos
            self._offsets = offs
        return self._offsets

    def _get(self, i: int) -> str:
        offs = self._offs()
        a, b = int(offs[i]) + 8, int(offs[i + 1])
        return str(self._buf[a:b], "utf-8")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self._n))]
        i = int(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("string array index out of range")
        return self._get(i)

    def __iter__(self) -> Iterator[str]:
        # sequential walk: no offsets table needed
        u64, buf, pos = self._u64, self._buf, self._start
        for _ in range(self._n):
            n = u64(buf, pos)[0]
            yield str(buf[pos + 8:pos + 8 + n], "utf-8")
            pos += 8 + n

    def tolist(self) -> list[str]:
        return list(self)

    def __eq__(self, other) -> bool:
        if isinstance(other, (StringArray, list, tuple)):
            return len(other) == self._n and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StringArray([{head}{', ...' if self._n > 3 else ''}], len={self._n})"


# --- writer side: Python value -> TypedValue ----------------------------------------------------

def _int_bounds(t: ValueType) -> tuple[int, int]:
    info = np.iinfo(np.dtype(FIXED_DTYPE[t]))
    return int(info.min), int(info.max)


def _check_utf8(key: str, s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: a str that is not Unicode text
        raise WriteError(f"key {key!r}: string {s!r} cannot be encoded as UTF-8 ({e.reason})") from None


def _check_scalar(key: str, value: Any, t: ValueType) -> Any:
    """Return ``value`` as the numpy scalar (or bool/str) of type ``t``, or raise ValueOutOfRange."""
    if t is ValueType.STRING:
        if not isinstance(value, str):
            raise WriteError(f"key {key!r}: STRING value must be str, got {type(value).__name__}")
        _check_utf8(key, value)
        return value
    if t is ValueType.BOOL:
        if not isinstance(value, (bool, np.bool_)):
            raise WriteError(f"key {key!r}: BOOL value must be bool, got {type(value).__name__}")
        return bool(value)
    dt = np.dtype(FIXED_DTYPE[t])
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise WriteError(f"key {key!r}: {t.name} value must be a number, got {type(value).__name__}")
    if dt.kind in "iu":
        if isinstance(value, (float, np.floating)):
            if not float(value).is_integer():
                raise ValueOutOfRange(f"key {key!r}: {value!r} is not an integer, cannot store as {t.name}")
            value = int(value)
        lo, hi = _int_bounds(t)
        if not lo <= int(value) <= hi:
            raise ValueOutOfRange(f"key {key!r}: {int(value)} does not fit {t.name} [{lo}, {hi}]")
        return dt.type(int(value))
    with np.errstate(over="ignore"):
        out = dt.type(value)
    if np.isinf(out) and not np.isinf(value):
        raise ValueOutOfRange(f"key {key!r}: {value!r} overflows {t.name}")
    return out


def _check_array(key: str, value: Any, elem: ValueType, depth: int) -> Any:
    """Normalise an array body of element type ``elem``: numpy array / list[str] / list[TypedValue]."""
    if elem is ValueType.STRING:
        if isinstance(value, StringArray):
            return value  # already validated UTF-8 when its file was opened
        items = list(value)
        for s in items:
            if not isinstance(s, str):
                raise WriteError(f"key {key!r}: ARRAY of STRING holds a {type(s).__name__}")
            _check_utf8(key, s)
        return items
    if elem is ValueType.ARRAY:
        out = []
        for v in value:
            tv = v if isinstance(v, TypedValue) else to_typed(key, v, _depth=depth + 1)
            if tv.type is not ValueType.ARRAY:
                raise WriteError(f"key {key!r}: ARRAY of ARRAY holds a {tv.type.name}")
            out.append(validate_typed(key, tv, _depth=depth + 1))
        return out
    dt = np.dtype(FIXED_DTYPE[elem])
    if elem is ValueType.BOOL:
        arr = np.asarray(value)
        if arr.size and arr.dtype != np.bool_:
            raise WriteError(f"key {key!r}: ARRAY of BOOL needs bool elements, got dtype {arr.dtype}")
        return arr.astype(np.bool_).reshape(-1)
    arr = np.asarray(value)
    if arr.ndim != 1 and arr.size:
        raise WriteError(f"key {key!r}: array values must be 1-D, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        return np.zeros(0, dtype=dt)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise WriteError(f"key {key!r}: ARRAY of {elem.name} needs numbers, got dtype {arr.dtype}")
    if dt.kind in "iu":
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueOutOfRange(f"key {key!r}: non-integer value in ARRAY of {elem.name}")
        lo, hi = _int_bounds(elem)
        amin, amax = (int(arr.min()), int(arr.max())) if arr.dtype.kind in "iu" else (arr.min(), arr.max())
        if amin < lo or amax > hi:
            raise ValueOutOfRange(f"key {key!r}: values in [{amin}, {amax}] do not fit {elem.name} [{lo}, {hi}]")
        return arr.astype(dt)
    with np.errstate(over="ignore"):
        out = arr.astype(dt)
    if np.any(np.isinf(out) & ~np.isinf(arr)):
        raise ValueOutOfRange(f"key {key!r}: a value overflows {elem.name}")
    return out


def validate_typed(key: str, tv: TypedValue, *, _depth: int = 1) -> TypedValue:
    """Check that ``tv.value`` fits ``tv.type`` and return it normalised for writing."""
    t = ValueType(tv.type)
    if t is ValueType.ARRAY:
        if tv.elem_type is None:
            raise WriteError(f"key {key!r}: an ARRAY TypedValue needs elem_type")
        if _depth > MAX_NESTING:
            raise WriteError(f"key {key!r}: arrays nest deeper than {MAX_NESTING} levels")
        elem = ValueType(tv.elem_type)
        return TypedValue(_check_array(key, tv.value, elem, _depth), t, elem)
    if tv.elem_type is not None:
        raise WriteError(f"key {key!r}: elem_type is only meaningful for ARRAY")
    return TypedValue(_check_scalar(key, tv.value, t), t)


def _elem_type_of_list(key: str, items: list) -> ValueType:
    if not items:
        raise WriteError(
            f"key {key!r}: an empty list has no element type; pass an empty numpy array "
            f"or TypedValue([], ValueType.ARRAY, elem_type)")
    if all(isinstance(v, str) for v in items):
        return ValueType.STRING
    if all(isinstance(v, (bool, np.bool_)) for v in items):
        return ValueType.BOOL
    if all(isinstance(v, (list, tuple, np.ndarray, StringArray, TypedValue)) for v in items):
        return ValueType.ARRAY
    if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return ValueType.INT64
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        return ValueType.FLOAT64
    kinds = sorted({type(v).__name__ for v in items})
    raise WriteError(f"key {key!r}: cannot infer one element type for a list of {', '.join(kinds)}")


def to_typed(key: str, value: Any, *, _depth: int = 1) -> TypedValue:
    """Choose the GGUF type of a Python value (rules in the module docstring) and validate it."""
    if isinstance(value, TypedValue):
        tv = value
    elif isinstance(value, Field):
        raise WriteError(f"key {key!r}: pass the value (e.g. from typed_metadata()), not its Field")
    elif isinstance(value, (bool, np.bool_)):
        tv = TypedValue(bool(value), ValueType.BOOL)
    elif isinstance(value, str):
        tv = TypedValue(value, ValueType.STRING)
    elif _depth == 1 and key in STANDARD_KEY_TYPES and isinstance(value, (int, np.integer)):
        tv = TypedValue(value, STANDARD_KEY_TYPES[key])
    elif isinstance(value, np.generic):
        t = _NUMPY_TO_TYPE.get(value.dtype.newbyteorder("="))
        if t is None:
            raise WriteError(f"key {key!r}: numpy {value.dtype} has no GGUF value type")
        tv = TypedValue(value, t)
    elif isinstance(value, int):
        tv = TypedValue(value, ValueType.INT64)
    elif isinstance(value, float):
        tv = TypedValue(value, ValueType.FLOAT64)
    elif isinstance(value, StringArray):
        tv = TypedValue(value, ValueType.ARRAY, ValueType.STRING)
    elif isinstance(value, np.ndarray):
        if value.dtype == np.bool_:
            elem = ValueType.BOOL
        elif value.dtype.kind in "UO":
            elem = ValueType.STRING
        else:
            elem = _NUMPY_TO_TYPE.get(value.dtype.newbyteorder("="))
            if elem is None:
                raise WriteError(f"key {key!r}: numpy {value.dtype} has no GGUF value type")
        if value.ndim != 1:
            raise WriteError(f"key {key!r}: array values must be 1-D, got shape {value.shape}")
        tv = TypedValue(value, ValueType.ARRAY, elem)
    elif isinstance(value, (list, tuple)):
        tv = TypedValue(list(value), ValueType.ARRAY, _elem_type_of_list(key, list(value)))
    else:
        raise WriteError(f"key {key!r}: no GGUF value type for {type(value).__name__}")
    return validate_typed(key, tv, _depth=_depth)
