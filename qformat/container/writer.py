"""Streaming, atomic GGUF writer: ``qformat.write`` and ``qformat.Writer``.

Layout written (exactly what ggml's ``gguf_write_to_file`` produces, and what its reader requires):
little-endian GGUF v3; header; key/value pairs in the order given; tensor infos in the order the
tensors were added; zero padding up to a multiple of the alignment; then each tensor's bytes at
offset = previous offset + previous size rounded up to the alignment, each followed by zero
padding -- the last tensor too. (A file without tensors still ends padded, as ggml writes it.)

Tensors:

* a numpy array is stored as its own type: float32 -> F32, float16 -> F16, float64 -> F64,
  int8/16/32/64 -> I8/I16/I32/I64; shape in numpy order (``ne`` is the reversed shape); a 0-d array
  is stored as shape ``(1,)``; 1..4 dimensions, none of them zero;
* ``(array, qtype)`` encodes float values to ``qtype`` with ``qformat.codecs.quantize`` (the last
  axis must be a multiple of the block size);
* names are 1..63 bytes of UTF-8 without NUL (ggml truncates names at a NUL, so two different
  names could become one for it);
* ``Writer.add_raw(name, data, qtype, shape)`` stores already-encoded bytes (e.g. copied from
  another file with ``GGUFFile.raw``) after checking their size.

Round-trip statistics (``stats=True``, the default of ``write()`` and ``Writer``): every tensor the
writer encodes itself -- given as ``(float array, qtype)`` -- is decoded again with
``qformat.dequantize`` right after its bytes are written, and its :class:`qformat.stats.RoundTripStats`
against the given values is recorded in the metadata as ``qformat.stats.<tensor>`` (ARRAY of
FLOAT64, columns named by ``qformat.stats.fields``; layout in :mod:`qformat.stats`). Other readers
ignore the ``qformat.`` namespace; ``qformat.verify`` checks it. Rules:

* recorded for every float source stored through a type the registry can decode, lossy or not:
  F16/BF16 and the block types, and F32/F64 too (an exact record -- mse 0, snr +inf -- still lets
  ``verify`` notice, without the source, that the stored values changed);
* not recorded for a bare array (stored as its own dtype, nothing was encoded), for ``add_raw``
  bytes (the writer never saw the values), for integer sources, for types qformat cannot decode,
  and for a source holding inf or NaN (its error is undefined);
* the records follow the given metadata, ``qformat.stats.fields`` first, then one key per tensor in
  tensor order; a given ``qformat.stats.<tensor>`` for a tensor the writer encodes is replaced by
  the fresh record (same position), and a given ``qformat.stats.fields`` MUST name the same
  columns (else ``WriteError``);
* ``stats=False`` records nothing and skips the extra decode.

How the records get into the header, which comes before the data they describe: ``Writer`` builds
its header at ``close()``, when every record is known. ``write()`` streams the header first, so it
reserves each record as a fixed-size FLOAT64 array of NaNs (the value's size does not depend on its
content, so every offset stays valid), streams the tensors, and then overwrites each reservation in
the temporary file -- checking that it still holds the NaN pattern -- before the rename. Tensor
bytes are written once; the two forms give byte-identical files for the same input.

Metadata: see ``values.py`` for how Python values map to GGUF types; ``TypedValue`` (and
``GGUFFile.typed_metadata()``) fix the type explicitly. ``general.alignment`` in the metadata and
the ``alignment=`` argument are one setting; giving both with different values is an error.

Atomicity and cost: nothing is ever written at the target path itself. ``write()`` knows every
tensor up front, so it streams the header and then each tensor (encoded one at a time, so memory
stays bounded by the largest tensor) into a temporary file beside the target and renames it into
place with ``os.replace``. ``Writer`` receives tensors one by one before it can know the header, so
it appends their bytes to a temporary data file as they arrive (keeping only each tensor's name,
shape, type and size, never its data) and, at ``close()``, writes the
header to a second temporary file, copies the data after it (in 16 MiB chunks) and renames: the
tensor bytes are written twice, disk use peaks at about twice the output size. On any exception
inside ``with Writer(...)`` (or a failed ``write()``) the temporary files are removed and an existing
target is left untouched; a killed process can leave ``.<name>.*.tmp`` files beside the target but
never a partial target. A ``GGUFFile`` open on the old target keeps reading the old bytes (the
rename does not touch the mapped inode).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from ..errors import UnsupportedType, WriteError
from ..stats import FIELDS, FIELDS_KEY, RoundTripStats, encoded_stats, stats_key
from ..types import BLOCK, QType, as_qtype, row_nbytes
from .reader import MAX_ALIGNMENT, MAX_DIMS, MAX_NAME_BYTES
from .schema import ARRAY_HEAD, DEFAULT_ALIGNMENT, HEADER, LITTLE, STRING, TENSOR_INFO, U32, VERSION, align_up
from .values import FIXED_DTYPE, STANDARD_KEY_TYPES, StringArray, TypedValue, ValueType, to_typed

#: numpy dtypes stored as themselves
DTYPE_QTYPE: dict[np.dtype, QType] = {
    np.dtype(np.float32): QType.F32, np.dtype(np.float16): QType.F16, np.dtype(np.float64): QType.F64,
    np.dtype(np.int8): QType.I8, np.dtype(np.int16): QType.I16, np.dtype(np.int32): QType.I32,
    np.dtype(np.int64): QType.I64,
}
QTYPE_DTYPE: dict[QType, np.dtype] = {q: d.newbyteorder("<") for d, q in DTYPE_QTYPE.items()}

_COPY_CHUNK = 16 << 20
_ZEROS = bytes(MAX_ALIGNMENT)  # padding source (alignment is at most 2**24)
#: what ``write()`` reserves for a statistics record before the tensor is encoded
_RESERVED = np.full(len(FIELDS), np.nan, dtype=np.float64)
_RESERVED_BYTES = _RESERVED.astype("<f8").tobytes()

PathLike = Union[str, "os.PathLike[str]"]


# --- metadata encoding -------------------------------------------------------------------------

def _encode_value(tv: TypedValue, out: list) -> None:
    """Append the encoding of a validated value (without its type id) to ``out``."""
    t = tv.type
    if t is ValueType.STRING:
        out.append(STRING.build(tv.value))
    elif t is ValueType.ARRAY:
        elem, v = tv.elem_type, tv.value
        out.append(ARRAY_HEAD.build(dict(elem_type=int(elem), count=len(v))))
        if elem is ValueType.STRING:
            raw = v.encoded_le() if isinstance(v, StringArray) else None
            if raw is None:
                # the STRING structure, written in bulk: u64 length + bytes, per element
                enc = [s.encode("utf-8") for s in v]
                lens = np.fromiter((len(b) for b in enc), dtype="<u8", count=len(enc))
                parts = [None] * (2 * len(enc))
                parts[0::2] = [ln.tobytes() for ln in lens]
                parts[1::2] = enc
                raw = b"".join(parts)
            out.append(raw)
        elif elem is ValueType.ARRAY:
            for inner in v:
                _encode_value(inner, out)
        else:
            out.append(np.ascontiguousarray(v, dtype="<" + FIXED_DTYPE[elem]).tobytes())
    elif t in (ValueType.FLOAT32, ValueType.FLOAT64):
        # through numpy, not struct: a NaN keeps its exact payload bits
        out.append(np.asarray(tv.value, dtype="<" + FIXED_DTYPE[t]).tobytes())
    else:
        out.append(LITTLE.scalar_cases[int(t)].build(tv.value.item() if hasattr(tv.value, "item") else tv.value))


def _encode_string(s: str, what: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise WriteError(f"{what} {s!r} cannot be encoded as UTF-8 ({e.reason})") from None


def encode_metadata(typed: Mapping[str, TypedValue]) -> list:
    out: list = []
    for key, tv in typed.items():
        _encode_string(key, "key")
        out.append(STRING.build(key))
        out.append(U32.build(int(tv.type)))
        _encode_value(tv, out)
    return out


def _check_alignment(a: Any, what: str) -> int:
    if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
        raise WriteError(f"{what} must be an integer, got {type(a).__name__}")
    a = int(a)
    if a < 1 or a & (a - 1) or a > MAX_ALIGNMENT:
        raise WriteError(f"{what} {a} is not a power of two in [1, {MAX_ALIGNMENT}]")
    return a


def prepare_metadata(metadata: Optional[Mapping[str, Any]], alignment: Optional[int]) -> tuple[dict, int]:
    """Typed, validated metadata and the alignment it implies."""
    typed: dict[str, TypedValue] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise WriteError(f"metadata keys must be str, got {type(key).__name__}")
        if not key:
            raise WriteError("metadata keys must not be empty")
        _encode_string(key, "key")
        typed[key] = to_typed(key, value)
    meta_align = typed.get("general.alignment")
    if meta_align is not None:
        if meta_align.type is not ValueType.UINT32:
            raise WriteError(f"general.alignment must be UINT32, got {meta_align.type.name}")
        a = _check_alignment(meta_align.value, "general.alignment")
        if alignment is not None and _check_alignment(alignment, "alignment") != a:
            raise WriteError(f"alignment={alignment} conflicts with general.alignment={a} in the metadata")
        return typed, a
    if alignment is None:
        return typed, DEFAULT_ALIGNMENT
    a = _check_alignment(alignment, "alignment")
    if a != DEFAULT_ALIGNMENT:
        typed["general.alignment"] = TypedValue(np.uint32(a), STANDARD_KEY_TYPES["general.alignment"])
    return typed, a


# --- tensors -----------------------------------------------------------------------------------

@dataclass
class _Pending:
    name: str
    shape: tuple
    qtype: QType
    nbytes: int
    #: -> C-contiguous uint8 bytes of the tensor; set to None once they are written, so that the
    #: writer (which keeps this record for the header) keeps no tensor data alive
    produce: Optional[Callable[[], np.ndarray]]
    #: the float values to measure the encoding against (None: record no statistics); dropped
    #: with ``produce``
    source: Optional[np.ndarray] = None


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise WriteError(f"tensor names must be str, got {type(name).__name__}")
    n = len(_encode_string(name, "tensor name"))
    if "\0" in name:
        # legal GGUF, but ggml keeps names as C strings: "a\0x" would become "a" and could alias
        raise WriteError(f"tensor name {name!r} contains a NUL character")
    if not 1 <= n <= MAX_NAME_BYTES:
        raise WriteError(f"tensor name {name!r} is {n} bytes; it must be 1..{MAX_NAME_BYTES}")


def _check_shape(name: str, shape: Iterable[int], qt: QType) -> tuple:
    shape = tuple(int(d) for d in shape) or (1,)
    if len(shape) > MAX_DIMS:
        raise WriteError(f"tensor {name!r} has {len(shape)} dimensions; GGUF holds at most {MAX_DIMS}")
    if any(d <= 0 for d in shape):
        raise WriteError(f"tensor {name!r} has shape {shape}; every dimension must be at least 1")
    if shape[-1] % BLOCK[qt].elems:
        raise WriteError(f"tensor {name!r}: row length {shape[-1]} is not a multiple of {qt.name}'s "
                         f"block size {BLOCK[qt].elems}")
    return shape


def _tensor_nbytes(shape: tuple, qt: QType) -> int:
    rows = int(np.prod(shape[:-1], dtype=object)) if len(shape) > 1 else 1
    return rows * row_nbytes(qt, shape[-1])


def _as_bytes(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def _measurable(arr: np.ndarray, qt: QType) -> bool:
    """Whether an encoded tensor gets a statistics record (rules: module docstring)."""
    from ..codecs import can_decode, get_codec

    if arr.dtype.kind != "f" or not can_decode(qt):
        return False
    # codecs that refuse inf/NaN fail the encode anyway; the float types store them, and then
    # inf - inf would make the recorded error NaN
    return get_codec(qt).finite_only or bool(np.isfinite(arr).all())


def prepare_tensor(name: str, value: Any, *, stats: bool = True, imatrix: Any = None,
                   mode: str = "ggml") -> _Pending:
    """Validate a tensor given to the writer; its bytes are produced later, one tensor at a time.

    ``imatrix`` (per-column importance weights) and ``mode`` are passed to ``quantize`` for
    ``(array, qtype)``.
    """
    _check_name(name)
    if isinstance(value, tuple):
        if len(value) != 2:
            raise WriteError(f"tensor {name!r}: expected an array or (array, qtype); use Writer.add_raw "
                             f"for pre-encoded bytes")
        arr, qtype = value
        try:
            qt = as_qtype(qtype)
        except (ValueError, TypeError) as e:
            raise WriteError(f"tensor {name!r}: {e}") from None
        arr = np.asarray(arr)
        shape = _check_shape(name, arr.shape, qt)
        source = arr if stats and _measurable(arr, qt) else None
        if (imatrix is None and mode == "ggml" and qt in QTYPE_DTYPE
                and arr.dtype.newbyteorder("=") == QTYPE_DTYPE[qt].newbyteorder("=")):
            return _Pending(name, shape, qt, _tensor_nbytes(shape, qt),
                            lambda: _as_bytes(arr.astype(QTYPE_DTYPE[qt], copy=False)), source)
        from ..codecs import can_encode, quantize

        if can_encode(qt):
            return _Pending(name, shape, qt, _tensor_nbytes(shape, qt),
                            lambda: _as_bytes(quantize(arr.reshape(shape), qt, imatrix=imatrix, mode=mode)), source)
        raise UnsupportedType(f"tensor {name!r}: qformat cannot encode {arr.dtype} to {qt.name}")
    if isinstance(value, np.generic):
        value = np.asarray(value)  # a numpy scalar: stored as shape (1,)
    if not isinstance(value, np.ndarray):
        raise WriteError(f"tensor {name!r}: expected a numpy array or (array, qtype), got {type(value).__name__}")
    qt = DTYPE_QTYPE.get(value.dtype.newbyteorder("="))
    if qt is None:
        raise WriteError(f"tensor {name!r}: dtype {value.dtype} has no ggml type; pass (array, qtype)")
    shape = _check_shape(name, value.shape, qt)
    return _Pending(name, shape, qt, _tensor_nbytes(shape, qt),
                    lambda: _as_bytes(value.astype(QTYPE_DTYPE[qt], copy=False)))


def prepare_raw(name: str, data: Any, qtype: Any, shape: Iterable[int]) -> _Pending:
    _check_name(name)
    try:
        qt = as_qtype(qtype)
    except (ValueError, TypeError) as e:
        raise WriteError(f"tensor {name!r}: {e}") from None
    shape = _check_shape(name, shape, qt)
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, dtype=np.uint8)
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise WriteError(f"tensor {name!r}: raw data must be uint8, got {data.dtype}")
    nbytes = _tensor_nbytes(shape, qt)
    if data.size != nbytes:
        raise WriteError(f"tensor {name!r}: {qt.name} {shape} takes {nbytes} bytes, got {data.size}")
    return _Pending(name, shape, qt, nbytes, lambda: np.ascontiguousarray(data).reshape(-1))


# --- file assembly -----------------------------------------------------------------------------

def _header_bytes(typed: Mapping[str, TypedValue], infos: list, alignment: int,
                  locate: Iterable[str] = ()) -> tuple[bytes, dict[str, int]]:
    """Header + key/value pairs + tensor infos + zero padding to the alignment, and for each key in
    ``locate`` the file offset just past its value."""
    locate = set(locate)
    parts = [HEADER.build(dict(version=VERSION, n_tensors=len(infos), n_kv=len(typed)))]
    pos, value_ends = len(parts[0]), {}
    for key, tv in typed.items():
        kv = encode_metadata({key: tv})
        pos += sum(len(b) for b in kv)
        if key in locate:
            value_ends[key] = pos
        parts += kv
    for t, rel_offset in infos:
        ne = list(reversed(t.shape))
        parts.append(TENSOR_INFO.build(dict(name=t.name, n_dims=len(ne), ne=ne, type=int(t.qtype),
                                            offset=rel_offset)))
    head = b"".join(parts)
    return head + _ZEROS[:align_up(len(head), alignment) - len(head)], value_ends


def _check_stats_fields(typed: Mapping[str, TypedValue]) -> None:
    """A ``qformat.stats.fields`` given in the metadata must name the columns this writer records."""
    tv = typed.get(FIELDS_KEY)
    if tv is None:
        return
    if not (tv.type is ValueType.ARRAY and tv.elem_type is ValueType.STRING and list(tv.value) == list(FIELDS)):
        raise WriteError(f"metadata key {FIELDS_KEY!r} does not name the columns the writer records "
                         f"({', '.join(FIELDS)}); drop the key or pass stats=False")


def _with_stats_records(typed: Mapping[str, TypedValue], records: Mapping[str, np.ndarray]) -> Mapping[str, TypedValue]:
    """The metadata followed by the statistics records (tensor name -> float64 row)."""
    if not records:
        return typed
    _check_stats_fields(typed)
    out = dict(typed)
    if FIELDS_KEY not in out:
        out[FIELDS_KEY] = to_typed(FIELDS_KEY, list(FIELDS))
    for name, row in records.items():
        out[stats_key(name)] = TypedValue(np.asarray(row, dtype=np.float64), ValueType.ARRAY, ValueType.FLOAT64)
    return out


def _layout(pending: list, alignment: int) -> list:
    infos, off = [], 0
    for t in pending:
        infos.append((t, off))
        off += align_up(t.nbytes, alignment)
    return infos


def _write_tensor(fh, t: _Pending, alignment: int) -> Optional[RoundTripStats]:
    """Write the tensor's bytes and padding; its round-trip statistics when it is measured."""
    produce, source = t.produce, t.source
    t.produce = t.source = None  # once written, the record must not keep the data alive
    if produce is None:
        raise WriteError(f"tensor {t.name!r} was already written")
    data = produce()
    if data.size != t.nbytes:  # an encoder broke its contract; never write a corrupt layout
        raise WriteError(f"tensor {t.name!r}: encoder produced {data.size} bytes, expected {t.nbytes}")
    fh.write(data.data)
    fh.write(_ZEROS[:align_up(t.nbytes, alignment) - t.nbytes])
    return None if source is None else encoded_stats(source, data, t.qtype)


def _fill_reserved(fh, value_end: int, st: RoundTripStats) -> None:
    """Overwrite a record ``write()`` reserved in the header (its float64 elements end the value)."""
    at = value_end - len(_RESERVED_BYTES)
    fh.seek(at)
    if fh.read(len(_RESERVED_BYTES)) != _RESERVED_BYTES:  # a layout bug must not overwrite other bytes
        raise WriteError(f"internal error: no reserved statistics record at offset {at}")
    fh.seek(at)
    fh.write(st.as_record().astype("<f8").tobytes())


def _temp_beside(path: str, suffix: str):
    d, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{base}.", suffix=suffix)
    return os.fdopen(fd, "w+b"), tmp


def _finish(fh, tmp: str, path: str) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
    os.replace(tmp, path)


def _discard(fh, tmp: Optional[str]) -> None:
    try:
        if fh is not None:
            fh.close()
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write(path: PathLike, tensors: Optional[Mapping[str, Any]] = None, metadata: Optional[Mapping[str, Any]] = None,
          *, alignment: Optional[int] = None, stats: bool = True) -> None:
    """Write a GGUF file in one call (see the module docstring for value forms and guarantees).

    ``stats``: record the round-trip statistics of every tensor given as ``(array, qtype)``.
    """
    path = os.fspath(path)
    typed, align = prepare_metadata(metadata, alignment)
    pending = [prepare_tensor(name, v, stats=stats) for name, v in (tensors or {}).items()]
    measured = [t.name for t in pending if t.source is not None]
    typed = _with_stats_records(typed, {name: _RESERVED for name in measured})
    infos = _layout(pending, align)
    head, value_ends = _header_bytes(typed, infos, align, locate=[stats_key(n) for n in measured])
    fh, tmp = _temp_beside(path, ".tmp")
    try:
        fh.write(head)
        results = {}
        for t in pending:
            st = _write_tensor(fh, t, align)
            if st is not None:
                results[t.name] = st
        for name, st in results.items():
            _fill_reserved(fh, value_ends[stats_key(name)], st)
        _finish(fh, tmp, path)
    except BaseException:
        _discard(fh, tmp)
        raise


class Writer:
    """Streaming writer: ``with Writer(path, metadata) as w: w.add_tensor(name, array) ...``.

    Tensor bytes go to a temporary file as they arrive (memory stays bounded by one tensor); the
    file appears at ``path`` only when the block exits without an exception (or on ``close()``).
    A Writer dropped without ``close()`` writes nothing and removes its temporary file.
    ``stats``: record round-trip statistics of the tensors it encodes; ``self.stats`` maps each
    measured tensor's name to its :class:`qformat.stats.RoundTripStats`.
    """

    def __init__(self, path: PathLike, metadata: Optional[Mapping[str, Any]] = None, *,
                 alignment: Optional[int] = None, stats: bool = True):
        self.path = os.fspath(path)
        self._typed, self.alignment = prepare_metadata(metadata, alignment)
        self._measure = stats
        self.stats: dict[str, RoundTripStats] = {}
        self._infos: list = []  # (_Pending, relative offset); their data is dropped once written
        self._names: set = set()
        self._size = 0
        self._data, self._data_tmp = _temp_beside(self.path, ".tmp-data")
        self._closed = False

    def _append(self, t: _Pending) -> Optional[RoundTripStats]:
        if self._closed:
            raise WriteError(f"{self.path}: writer is closed")
        if t.name in self._names:
            raise WriteError(f"tensor {t.name!r} added twice")
        if t.source is not None:
            _check_stats_fields(self._typed)  # fail before encoding, not at close()
        try:
            st = _write_tensor(self._data, t, self.alignment)
        except BaseException:
            # e.g. the encoder refused the values: cut off anything written, so the tensors added
            # before stay where their offsets say and the Writer remains usable
            self._data.seek(self._size)
            self._data.truncate()
            raise
        self._names.add(t.name)
        self._infos.append((t, self._size))
        self._size += align_up(t.nbytes, self.alignment)
        if st is not None:
            self.stats[t.name] = st
        return st

    def add_tensor(self, name: str, value: Any, *, imatrix: Any = None, mode: str = "ggml") -> Optional[RoundTripStats]:
        """Add a numpy array (stored as its dtype) or ``(array, qtype)`` (encoded in ``mode``, with
        optional per-column importance weights ``imatrix``); returns the recorded statistics, if any."""
        return self._append(prepare_tensor(name, value, stats=self._measure, imatrix=imatrix, mode=mode))

    def add_raw(self, name: str, data: Any, qtype: Any, shape: Iterable[int]) -> None:
        """Add already-encoded bytes of ``qtype`` with numpy-order ``shape``."""
        self._append(prepare_raw(name, data, qtype, shape))

    def close(self) -> None:
        """Assemble the file and move it into place."""
        if self._closed:
            return
        self._closed = True
        fh = tmp = None
        try:
            typed = _with_stats_records(self._typed, {n: st.as_record() for n, st in self.stats.items()})
            head, _ = _header_bytes(typed, self._infos, self.alignment)
            fh, tmp = _temp_beside(self.path, ".tmp")
            fh.write(head)
            self._data.flush()
            self._data.seek(0)
            shutil.copyfileobj(self._data, fh, _COPY_CHUNK)
            _finish(fh, tmp, self.path)
        except BaseException:
            _discard(fh, tmp)
            raise
        finally:
            _discard(self._data, self._data_tmp)

    def abort(self) -> None:
        """Drop everything written so far; the target path is not touched."""
        if not self._closed:
            self._closed = True
            _discard(self._data, self._data_tmp)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        # a Writer dropped without close() must not leave its temporary data file behind
        try:
            self.abort()
        except Exception:
            pass
