"""Tensor sources: read tensors one at a time from .safetensors, .npz, .npy and .gguf files.

``open_source(path)`` validates the file's index up front (names, dtypes, shapes, where the bytes
are) and returns a :class:`Source`; iterating it yields ``(name, SourceTensor)`` in file order, and
``SourceTensor.load()`` reads that one tensor only. Nothing is read before it is asked for, so a
converter holds one tensor at a time.

safetensors rules (the format as published by Hugging Face; enforced here, each failure a
:class:`~qformat.errors.SafetensorsError` naming the byte offset):

* The file MUST start with a u64 little-endian header length ``N``; ``8 + N`` MUST NOT exceed the
  file size, and ``N`` MUST NOT exceed 100 MB (the reference implementation's limit).
* The header MUST be UTF-8 JSON holding one object. Its optional ``"__metadata__"`` entry MUST map
  strings to strings. Every other entry is a tensor: an object with the keys ``dtype`` (one
  of BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64), ``shape``
  (list of non-negative ints) and ``data_offsets`` (``[begin, end]`` relative to the first byte
  after the header); other keys are ignored, as the reference reader ignores them. Duplicate names
  MUST be rejected (plain JSON parsers keep the last silently).
* ``end - begin`` MUST equal ``prod(shape) * itemsize``; sorted by offset, the tensors MUST tile
  the data section exactly: the first begins at 0, each begins where the previous ended, and the
  last ends at the end of the file (no holes, no overlap, no trailing bytes).
* Data is little-endian, C order. qformat loads F64, F32, F16, BF16 and I8..I64 (the types GGUF
  can hold); BF16 becomes float32 exactly (the 16 bits are the top half of a binary32 — numpy has
  no bfloat16). The other dtypes are accepted in the index but refused when loaded.

``.npz``/``.npy`` go through numpy's own format reader with ``allow_pickle=False``; member
``foo.npy`` of an archive is tensor ``foo``; a ``.npy`` file is one tensor named after the file's
stem. ``.gguf`` sources are opened with :func:`qformat.open`; their tensors load as float32 when
qformat can decode the type, and ``SourceTensor.raw()`` gives the stored bytes of any type.

:func:`write_safetensors` writes the format (header padded with spaces to a multiple of 8, as the
reference writer does) atomically, one tensor at a time.
"""
from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from .errors import NumpyFileError, QFormatError, SafetensorsError, SourceError, UnsupportedSource

PathLike = Union[str, os.PathLike]

#: the reference implementation refuses headers above 100 MB
SAFETENSORS_MAX_HEADER = 100_000_000

#: safetensors dtype name -> (numpy dtype, or None where numpy has no such type; item size)
SAFETENSORS_DTYPES: dict[str, tuple[Optional[str], int]] = {
    "BOOL": ("|b1", 1), "U8": ("|u1", 1), "I8": ("|i1", 1), "F8_E5M2": (None, 1), "F8_E4M3": (None, 1),
    "I16": ("<i2", 2), "U16": ("<u2", 2), "F16": ("<f2", 2), "BF16": (None, 2),
    "I32": ("<i4", 4), "U32": ("<u4", 4), "F32": ("<f4", 4),
    "F64": ("<f8", 8), "I64": ("<i8", 8), "U64": ("<u8", 8),
}
#: dtypes that load (GGUF has element types for these)
LOADABLE = {"F64", "F32", "F16", "BF16", "I8", "I16", "I32", "I64"}
#: numpy dtype -> safetensors name, for writing
_NP_TO_ST = {np.dtype(v[0]).newbyteorder("="): k for k, v in SAFETENSORS_DTYPES.items() if v[0]}

_NUMPY_KINDS_OK = ("f", "i")  # float16/32/64 and signed ints; GGUF has no unsigned/bool/complex tensors


@dataclass
class SourceTensor:
    """One tensor of a source file; ``load()`` reads it (and only it)."""

    name: str
    shape: tuple[int, ...]
    #: the stored element type: a safetensors dtype name, a numpy dtype string, or a ggml type name
    dtype: str
    _loader: Callable[[], np.ndarray]
    #: for GGUF sources: the stored ggml type and a zero-copy reader of its bytes
    qtype: Any = None
    _raw: Optional[Callable[[], np.ndarray]] = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def load(self) -> np.ndarray:
        return self._loader()

    __call__ = load

    def raw(self) -> np.ndarray:
        if self._raw is None:
            raise SourceError(f"tensor {self.name!r}: raw bytes are only available from GGUF sources")
        return self._raw()


class Source:
    """An opened source file: ``.tensors`` (ordered name -> SourceTensor), ``.metadata``, ``.kind``."""

    def __init__(self, path: str, kind: str, tensors: dict[str, SourceTensor], metadata: dict[str, Any],
                 closer: Optional[Callable[[], None]] = None, gguf: Any = None):
        self.path = path
        self.kind = kind
        self.tensors = tensors
        self.metadata = metadata
        self._closer = closer
        #: the open GGUFFile for .gguf sources (metadata with types, alignment), else None
        self.gguf = gguf

    def __iter__(self) -> Iterator[tuple[str, SourceTensor]]:
        return iter(self.tensors.items())

    def __len__(self) -> int:
        return len(self.tensors)

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


KINDS = (".safetensors", ".npz", ".npy", ".gguf")


def source_kind(path: PathLike) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in KINDS:
        raise UnsupportedSource(f"cannot read tensors from a '{ext or 'extensionless'}' file "
                                f"(expected one of {', '.join(KINDS)})", path=os.fspath(path))
    return ext


def open_source(path: PathLike) -> Source:
    """Open a tensor source by its extension; validates the index, loads nothing."""
    p = os.fspath(path)
    kind = source_kind(p)
    if not os.path.isfile(p):
        raise SourceError("no such file" if not os.path.exists(p) else "not a regular file", path=p)
    if kind == ".safetensors":
        return _open_safetensors(p)
    if kind == ".npz":
        return _open_npz(p)
    if kind == ".npy":
        return _open_npy(p)
    return _open_gguf(p)


# --- safetensors -----------------------------------------------------------------------------

def _st_fail(path: str, offset: int, msg: str) -> SafetensorsError:
    return SafetensorsError(msg, offset=offset, path=path)


def _no_duplicates(path: str):
    def hook(pairs):
        seen: dict[str, Any] = {}
        for k, v in pairs:
            if k in seen:
                raise _st_fail(path, 8, f"header names {k!r} twice")
            seen[k] = v
        return seen
    return hook


def parse_safetensors_header(path: str, head: bytes, file_size: int) -> tuple[int, dict, list[tuple]]:
    """Validate a safetensors index. ``head`` holds at least the first ``8 + N`` bytes.

    Returns ``(data_start, metadata, [(name, dtype, shape, begin, end)] in offset order)``.
    """
    if file_size < 8:
        raise _st_fail(path, 0, f"file is {file_size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", head, 0)
    if n > SAFETENSORS_MAX_HEADER:
        raise _st_fail(path, 0, f"header length {n} exceeds the 100 MB limit")
    if 8 + n > file_size:
        raise _st_fail(path, 0, f"header length {n} runs past the end of the {file_size}-byte file")
    raw = head[8:8 + n]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _st_fail(path, 8 + e.start, "header is not valid UTF-8") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as e:
        raise _st_fail(path, 8 + len(text[:e.pos].encode("utf-8")), f"header is not valid JSON: {e.msg}") from None
    except RecursionError:
        raise _st_fail(path, 8, "header JSON nests too deeply") from None
    if not isinstance(header, dict):
        raise _st_fail(path, 8, "header must be a JSON object")
    data_start = 8 + n
    data_len = file_size - data_start
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _st_fail(path, 8, "__metadata__ must map strings to strings")
    entries = []
    for name, info in header.items():
        where = f"tensor {name!r}: "
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise _st_fail(path, 8, where + "entry must be an object with the keys dtype, shape, data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _st_fail(path, 8, where + f"unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _st_fail(path, 8, where + "shape must be a list of non-negative integers")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise _st_fail(path, 8, where + "data_offsets must be [begin, end] with 0 <= begin <= end")
        want = math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]
        if offs[1] - offs[0] != want:
            raise _st_fail(path, data_start + offs[0],
                           where + f"holds {offs[1] - offs[0]} bytes but {dtype} {shape} needs {want}")
        entries.append((name, dtype, tuple(shape), offs[0], offs[1]))
    entries.sort(key=lambda e: (e[3], e[4]))
    pos = 0
    for name, _, _, b, e in entries:
        if b != pos:
            kind = "overlaps the previous tensor" if b < pos else f"leaves a hole of {b - pos} bytes before it"
            raise _st_fail(path, data_start + b, f"tensor {name!r} {kind}")
        pos = e
    if pos != data_len:
        if pos > data_len:
            raise _st_fail(path, file_size, f"tensor data runs {pos - data_len} bytes past the end of the file")
        raise _st_fail(path, data_start + pos, f"{data_len - pos} bytes after the last tensor belong to none")
    return data_start, meta, entries


def _drop_pages(mm: mmap.mmap, start: int, length: int) -> None:
    """Let the kernel reclaim the pages of a range already copied out (keeps RSS flat)."""
    if not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED") or length <= 0:
        return
    page = mmap.PAGESIZE
    s = start - start % page
    try:
        mm.madvise(mmap.MADV_DONTNEED, s, start + length - s)
    except (OSError, ValueError):
        pass


def _open_safetensors(path: str) -> Source:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        first = fh.read(8)
        if len(first) < 8:
            raise _st_fail(path, 0, f"file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", first)
        head = first + (fh.read(n) if n <= min(SAFETENSORS_MAX_HEADER, size) else b"")
        data_start, meta, entries = parse_safetensors_header(path, head, size)
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def loader(name: str, dtype: str, shape: tuple, begin: int, end: int):
        def load() -> np.ndarray:
            if dtype not in LOADABLE:
                raise SafetensorsError(f"tensor {name!r}: dtype {dtype} has no GGUF equivalent; qformat "
                                       f"loads {', '.join(sorted(LOADABLE))}", offset=data_start + begin, path=path)
            count = math.prod(shape)
            if dtype == "BF16":
                bits = np.frombuffer(mm, dtype="<u2", count=count, offset=data_start + begin)
                out = (bits.astype(np.uint32) << 16).view(np.float32)
            else:
                np_dt = np.dtype(SAFETENSORS_DTYPES[dtype][0])
                view = np.frombuffer(mm, dtype=np_dt, count=count, offset=data_start + begin)
                out = view.astype(np_dt.newbyteorder("="), copy=True)
            _drop_pages(mm, data_start + begin, end - begin)
            return out.reshape(shape)
        return load

    tensors = {name: SourceTensor(name, shape, dtype, loader(name, dtype, shape, b, e))
               for name, dtype, shape, b, e in entries}

    def close():
        try:
            mm.close()
        except BufferError:  # a caller still holds a view; the map goes when that view does
            pass
    return Source(path, ".safetensors", tensors, dict(meta), close)


# --- numpy -----------------------------------------------------------------------------------

def _npy_header(fp, where: str, path: str) -> tuple[tuple, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            shape, fortran, dtype = np.lib.format._read_array_header(fp, version)
    except (ValueError, EOFError, OSError, SyntaxError) as e:
        raise NumpyFileError(f"{where}: not a valid .npy header ({e})", path=path) from None
    if dtype.hasobject:
        raise NumpyFileError(f"{where}: holds Python objects (dtype {dtype}); only numeric arrays are read",
                             path=path)
    return tuple(int(d) for d in shape), dtype


def _check_numeric(arr: np.ndarray, name: str, path: str) -> np.ndarray:
    if arr.dtype.kind not in _NUMPY_KINDS_OK:
        raise NumpyFileError(f"tensor {name!r}: dtype {arr.dtype} has no GGUF equivalent "
                             f"(floating point and signed integers only)", path=path)
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("="), copy=False)


def _open_npz(path: str) -> Source:
    try:
        zf = zipfile.ZipFile(path)
        members = [m for m in zf.infolist() if not m.is_dir()]
        tensors: dict[str, SourceTensor] = {}
        for m in members:
            if not m.filename.endswith(".npy"):
                raise NumpyFileError(f"archive member {m.filename!r} is not a .npy array", path=path)
            name = m.filename[:-4]
            with zf.open(m) as fp:
                shape, dtype = _npy_header(fp, f"member {m.filename!r}", path)

            def load(member=m, name=name) -> np.ndarray:
                try:
                    with zf.open(member) as fp:
                        arr = np.lib.format.read_array(fp, allow_pickle=False)
                except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
                    raise NumpyFileError(f"member {member.filename!r}: cannot be read ({e})", path=path) from None
                return _check_numeric(arr, name, path)
            tensors[name] = SourceTensor(name, shape, str(dtype), load)
    except zipfile.BadZipFile as e:
        raise NumpyFileError(f"not a valid .npz (zip) archive ({e})", path=path) from None
    except (OSError, EOFError) as e:
        raise NumpyFileError(f"cannot read archive ({e})", path=path) from None
    return Source(path, ".npz", tensors, {}, zf.close)


def _open_npy(path: str) -> Source:
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise NumpyFileError(f"not a valid .npy file ({e})", path=path) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
        raise NumpyFileError("not a plain numeric .npy array", path=path)
    shape, dtype = tuple(arr.shape), str(arr.dtype)
    holder = {"arr": arr}

    def load() -> np.ndarray:
        return _check_numeric(np.array(holder["arr"]), name, path)

    def close():
        mm = getattr(holder.pop("arr", None), "_mmap", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass
    return Source(path, ".npy", {name: SourceTensor(name, shape, dtype, load)}, {}, close)


# --- GGUF ------------------------------------------------------------------------------------

def _open_gguf(path: str) -> Source:
    from .container import open as open_gguf
    f = open_gguf(path)
    tensors = {}
    for name, info in f.tensors.items():
        tensors[name] = SourceTensor(name, tuple(info.shape), info.qtype.name,
                                     (lambda n=name: f.read(n)), qtype=info.qtype,
                                     _raw=(lambda n=name: f.raw(n)))
    return Source(path, ".gguf", tensors, dict(f.metadata), f.close, gguf=f)


# --- writing safetensors ---------------------------------------------------------------------

def write_safetensors(path: PathLike, items: Iterable[tuple[str, tuple, Any, Callable[[], np.ndarray]]],
                      metadata: Optional[dict[str, str]] = None) -> None:
    """Write a .safetensors file atomically, producing one tensor at a time.

    ``items``: ``(name, shape, numpy dtype, produce)``; ``produce()`` returns the array (any dtype;
    it is cast to the declared one). The header is built from the declarations first, so the data
    can stream; the file appears at ``path`` only once complete.
    """
    items = list(items)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    pos = 0
    for name, shape, dtype, _ in items:
        dt = np.dtype(dtype).newbyteorder("=")
        if dt not in _NP_TO_ST:
            raise QFormatError(f"safetensors has no dtype for numpy {dt}")
        if name in header:
            raise QFormatError(f"tensor {name!r} given twice")
        nbytes = math.prod(shape) * dt.itemsize
        header[name] = {"dtype": _NP_TO_ST[dt], "shape": [int(d) for d in shape], "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the reference writer pads so the data starts 8-aligned

    def body(fh):
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, shape, dtype, produce in items:
            dt = np.dtype(dtype).newbyteorder("<")
            arr = np.asarray(produce())
            if tuple(arr.shape) != tuple(shape):
                raise QFormatError(f"tensor {name!r}: produced shape {arr.shape}, declared {tuple(shape)}")
            fh.write(np.ascontiguousarray(arr, dtype=dt).tobytes())
    atomic_write(path, body)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """A temporary path beside ``path``; renamed onto ``path`` when the block succeeds.

    On any error the temporary file is removed and ``path`` is untouched.
    """
    target = os.fspath(path)
    d = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, body: Callable[[Any], None]) -> None:
    """Call ``body(file)`` on a temp file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        body(fh)
