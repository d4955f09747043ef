"""Importance matrices as llama.cpp's ``llama-imatrix`` writes them, read strictly.

An importance matrix gives, for each weight tensor that multiplies activations, one non-negative
number per input column (per expert for 3-D expert tensors): the mean square of the activations
that column met. ``llama-quantize --imatrix`` weights each value's squared quantization error by
it. Two file formats exist; :func:`load` reads both (GGUF is recognised by its magic) and returns
``{tensor_name: float32 per-column weights}`` exactly as ``llama-quantize`` derives them.

Legacy ``imatrix.dat`` (all integers int32 little-endian, floats IEEE float32)::

    n_entries                                   MUST be >= 1
    n_entries times:
        name_len, name[name_len]                name MUST be >= 1 bytes of UTF-8 without NUL;
                                                names MUST be unique
        ncall                                   chunks the entry was collected over; MUST be >= 0
        nval, values[nval]                      nval MUST be >= 1; values MUST be finite and >= 0
    optional trailer (both fields or neither):
        chunk_count                             chunks processed in total
        dataset_len, dataset[dataset_len]       the text file the statistics came from (UTF-8)

    The file MUST end exactly after the last entry or after the trailer. The writer stores
    ``mean_square * ncall``, so the weight of column ``i`` is ``values[i] / ncall`` (``values[i]``
    itself when ``ncall == 0``), as llama-quantize computes it.

GGUF imatrix (``general.type = "imatrix"``): metadata ``imatrix.datasets`` (array of strings),
``imatrix.chunk_count`` and ``imatrix.chunk_size`` (UINT32) MUST all be present (llama-quantize
refuses the file otherwise). For each tensor name ``T`` the file holds::

    T.in_sum2   F32, shape (n_mat, n_cols)     per-column sums of squared activations; MUST be
                                               finite and >= 0
    T.counts    F32, shape (n_mat, 1)          activations summed per matrix (rounded to an
                                               integer as llama.cpp does); MUST be finite and >= 0
    T.in_sum    F32, optional                  per-column sums (not used for weights); if present
                                               it MUST have as many elements as T.in_sum2

    Both ``T.in_sum2`` and ``T.counts`` MUST exist. Tensors with other suffixes are ignored (as in
    llama.cpp). The weight of column ``i`` of matrix ``j`` is ``in_sum2[j, i] / counts[j]``, or
    ``1`` when ``counts[j] == 0`` (an expert never routed to keeps neutral weights).

Errors are :class:`~qformat.errors.ImatrixError` subclasses naming the byte offset and the rule;
GGUF structure errors come from the strict GGUF reader.
"""
from __future__ import annotations

import os
import struct
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from .errors import ImatrixBadEntry, ImatrixError, ImatrixMismatch, ImatrixTruncated
from .types import QType

PathLike = Union[str, "os.PathLike[str]"]

GGUF_MAGIC = b"GGUF"
SUFFIX_SUM2 = ".in_sum2"
SUFFIX_COUNTS = ".counts"
SUFFIX_SUM = ".in_sum"
REQUIRED_KEYS = ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")


class ImatrixFile(NamedTuple):
    """A parsed imatrix: per-tensor weights plus what the file says about how they were collected."""

    weights: dict  # tensor name -> float32 weights (n_cols * n_mat,)
    datasets: list  # dataset file names
    chunk_count: Optional[int]
    chunk_size: Optional[int]  # None for the legacy format (it does not record it)
    legacy: bool


def load(path: PathLike) -> dict[str, np.ndarray]:
    """``{tensor_name: float32 per-column importance}`` from a legacy ``.dat`` or GGUF imatrix."""
    return load_file(path).weights


def load_file(path: PathLike) -> ImatrixFile:
    """Parse an imatrix file of either format (see the module docstring for every rule)."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == GGUF_MAGIC:
        return _load_gguf(path)
    with open(path, "rb") as fh:
        data = fh.read()
    return _parse_legacy(data, path)


def weights_for(imatrix_map: Optional[Mapping[str, np.ndarray]], tensor_name: str,
                shape: Union[int, Sequence[int]]) -> Optional[np.ndarray]:
    """The importance weights to quantize tensor ``tensor_name`` of numpy ``shape`` with.

    ``shape`` may be a bare row length (a 2-D tensor). The rule is llama-quantize's: the entry MUST
    hold exactly ``n_cols * n_mat`` values, ``n_cols = shape[-1]`` and ``n_mat = shape[-3]`` for a
    tensor of three or more dimensions (one vector per expert), else 1. Returns ``None`` when the map
    has no entry for the tensor (llama-quantize then quantizes without one), a float32 ``(n_cols,)``
    vector when ``n_mat == 1``, else ``(n_mat, n_cols)`` -- the form ``qformat.quantize`` takes.
    Any other length raises :class:`~qformat.errors.ImatrixMismatch`.
    """
    if imatrix_map is None:
        return None
    w = imatrix_map.get(tensor_name)
    if w is None:
        return None
    dims = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    n_cols = dims[-1] if dims else 0
    n_mat = dims[-3] if len(dims) >= 3 else 1
    if n_cols <= 0 or n_mat <= 0:
        raise ImatrixMismatch(f"tensor {tensor_name!r}: shape {dims} has no rows to weight")
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    if w.size != n_cols * n_mat:
        per = f"{n_mat} matrices of rows of {n_cols}" if n_mat > 1 else f"rows of {n_cols}"
        hint = (f" (it fits {w.size // n_cols} matrices; this tensor has {n_mat})"
                if w.size % n_cols == 0 else "")
        raise ImatrixMismatch(f"tensor {tensor_name!r} {dims}: imatrix entry has {w.size} values, but "
                              f"{per} need {n_cols * n_mat}{hint}")
    return w if n_mat == 1 else w.reshape(n_mat, n_cols)


# --- legacy .dat ---------------------------------------------------------------------------------

class _Cursor:
    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.pos = data, path, 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def i32(self, what: str) -> int:
        if self.remaining() < 4:
            raise ImatrixTruncated(f"file ends inside {what} ({self.remaining()} of 4 bytes)",
                                   offset=self.pos, path=self.path)
        v = struct.unpack_from("<i", self.data, self.pos)[0]
        self.pos += 4
        return v

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining():
            raise ImatrixTruncated(f"{what} needs {n} bytes but only {self.remaining()} remain",
                                   offset=self.pos, path=self.path)
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def text(self, n: int, what: str, at: int) -> str:
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ImatrixBadEntry(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start} of it)",
                                  offset=at + 4 + e.start, path=self.path) from None


def _parse_legacy(data: bytes, path: str) -> ImatrixFile:
    c = _Cursor(data, path)
    n_entries = c.i32("the entry count")
    if n_entries < 1:
        raise ImatrixBadEntry(f"entry count is {n_entries}; it must be at least 1", offset=0, path=path)
    # every entry takes at least 16 bytes (name length, ncall, nval, one value): reject absurd counts early
    if n_entries * 16 > c.remaining():
        raise ImatrixTruncated(f"entry count {n_entries} needs at least {n_entries * 16} more bytes, "
                               f"only {c.remaining()} remain", offset=0, path=path)
    weights: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        at = c.pos
        name_len = c.i32(f"the name length of entry {i}")
        if name_len < 1:
            raise ImatrixBadEntry(f"entry {i}: name length is {name_len}; it must be at least 1", offset=at, path=path)
        name = c.text(name_len, f"the name of entry {i}", at)
        if "\0" in name:  # llama.cpp reads names as C strings: a NUL would silently cut the name
            raise ImatrixBadEntry(f"entry {i}: tensor name {name!r} contains a NUL byte", offset=at + 4, path=path)
        if name in weights:
            raise ImatrixBadEntry(f"entry {i}: tensor name {name!r} appears twice", offset=at, path=path)
        ncall_at = c.pos
        ncall = c.i32(f"the call count of {name!r}")
        if ncall < 0:
            raise ImatrixBadEntry(f"{name!r}: call count is {ncall}; it must be >= 0", offset=ncall_at, path=path)
        nval_at = c.pos
        nval = c.i32(f"the value count of {name!r}")
        if nval < 1:
            raise ImatrixBadEntry(f"{name!r}: value count is {nval}; it must be at least 1", offset=nval_at, path=path)
        if 4 * nval > c.remaining():
            raise ImatrixTruncated(f"{name!r}: {nval} values need {4 * nval} bytes but only {c.remaining()} remain",
                                   offset=nval_at, path=path)
        values_at = c.pos
        values = np.frombuffer(c.take(4 * nval, f"the values of {name!r}"), dtype="<f4").astype(np.float32)
        _check_values(values, name, "value", values_at, path)
        weights[name] = values / np.float32(ncall) if ncall > 0 else values
    chunk_count = None
    datasets: list = []
    if c.remaining():
        chunk_count = c.i32("the trailing chunk count")
        len_at = c.pos
        ds_len = c.i32("the dataset name length")
        if ds_len < 0:
            raise ImatrixBadEntry(f"dataset name length is {ds_len}; it must be >= 0", offset=len_at, path=path)
        datasets.append(c.text(ds_len, "the dataset name", len_at))
        if c.remaining():
            raise ImatrixTruncated(f"{c.remaining()} unexpected bytes after the dataset name", offset=c.pos, path=path)
    return ImatrixFile(weights, datasets, chunk_count, None, True)


def _check_values(values: np.ndarray, name: str, what: str, at: int, path: str) -> None:
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ImatrixBadEntry(f"{name!r}: {what} {k} is {values[k]!r}; it must be finite and >= 0",
                              offset=at + 4 * k, path=path)


# --- GGUF ----------------------------------------------------------------------------------------

def _load_gguf(path: str) -> ImatrixFile:
    from .container import open as open_gguf  # the strict reader raises its own FormatError subclasses

    with open_gguf(path) as f:
        meta = f.metadata
        for key in REQUIRED_KEYS:
            if key not in meta:
                raise ImatrixError(f"GGUF imatrix lacks the metadata key {key!r} (llama-quantize requires it)",
                                   path=path)
        gtype = meta.get("general.type")
        if gtype is not None and gtype != "imatrix":
            raise ImatrixError(f"general.type is {gtype!r}, not 'imatrix'", offset=f.field("general.type").offset,
                               path=path)
        datasets = meta["imatrix.datasets"]
        if isinstance(datasets, (str, bytes)) or not all(isinstance(s, str) for s in datasets):
            raise ImatrixError("imatrix.datasets must be an array of strings",
                               offset=f.field("imatrix.datasets").offset, path=path)
        datasets = [str(s) for s in datasets]  # copy out of the mapping before the file closes
        sizes = {}
        for key in ("imatrix.chunk_count", "imatrix.chunk_size"):
            fld = f.field(key)
            if fld.type.name != "UINT32":
                raise ImatrixError(f"{key} has type {fld.type.name}, not UINT32", offset=fld.offset, path=path)
            sizes[key] = int(meta[key])

        groups: dict[str, dict] = {}
        for tname in f.tensors:
            for suffix in (SUFFIX_SUM2, SUFFIX_COUNTS, SUFFIX_SUM):
                if tname.endswith(suffix) and len(tname) > len(suffix):
                    groups.setdefault(tname[: -len(suffix)], {})[suffix] = f.tensors[tname]
                    break
        if not groups:
            raise ImatrixError("GGUF imatrix holds no '<name>.in_sum2' / '<name>.counts' tensors", path=path)
        weights: dict[str, np.ndarray] = {}
        for name in sorted(groups):
            g = groups[name]
            sums_t, counts_t = g.get(SUFFIX_SUM2), g.get(SUFFIX_COUNTS)
            if sums_t is None or counts_t is None:
                have = next(iter(g.values()))
                missing = name + (SUFFIX_SUM2 if sums_t is None else SUFFIX_COUNTS)
                raise ImatrixBadEntry(f"{missing!r} is missing (each entry needs both sums and counts)",
                                      offset=have.offset, path=path)
            for t in g.values():
                if t.qtype != QType.F32:
                    raise ImatrixBadEntry(f"tensor {t.name!r} has type {t.qtype.name}; it must be F32",
                                          offset=t.offset, path=path)
            n_sums = int(np.prod(sums_t.shape))
            n_mat = int(np.prod(counts_t.shape))
            if n_sums % n_mat:
                raise ImatrixBadEntry(f"{name!r}: {n_sums} sums do not split into {n_mat} matrices",
                                      offset=counts_t.offset, path=path)
            if SUFFIX_SUM in g and int(np.prod(g[SUFFIX_SUM].shape)) != n_sums:
                raise ImatrixBadEntry(f"{name!r}: in_sum has {int(np.prod(g[SUFFIX_SUM].shape))} values but "
                                      f"in_sum2 has {n_sums}", offset=g[SUFFIX_SUM].offset, path=path)
            sums = np.array(f.read(sums_t.name), dtype=np.float32).reshape(n_mat, n_sums // n_mat)
            counts = np.array(f.read(counts_t.name), dtype=np.float32).reshape(n_mat)
            _check_values(sums.reshape(-1), sums_t.name, "value", sums_t.offset, path)
            _check_values(counts, counts_t.name, "count", counts_t.offset, path)
            counts = np.floor(counts + np.float32(0.5))  # llama.cpp reads counts with lround
            with np.errstate(divide="ignore", invalid="ignore"):
                w = np.where(counts[:, None] > 0, sums / counts[:, None], np.float32(1))
            weights[name] = w.astype(np.float32).reshape(-1)
    return ImatrixFile(weights, datasets, sizes["imatrix.chunk_count"], sizes["imatrix.chunk_size"], False)
