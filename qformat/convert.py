"""File-level operations behind the command line: encode, decode, describe (inspect), demo.

``encode_file(src, out, target)`` converts a tensor source (see :mod:`qformat.sources`) to a GGUF
file, choosing each tensor's type with :mod:`qformat.mixes`, and records every encoded tensor's
round-trip statistics in the output's metadata (layout: :mod:`qformat.stats`). Rules:

* One tensor at a time: load it and hand ``(values, type)`` to the streaming
  :class:`qformat.Writer`, which encodes it once, writes the bytes, decodes them for the statistics
  and records those (rules: :mod:`qformat.container.writer`); then drop it. Peak memory is a few
  times the largest tensor and does not grow with the number of tensors.
* The output appears atomically: the Writer assembles the file (header with the statistics, then
  the data) under a temporary name beside the target and renames it into place. On any error
  nothing is left at the target and no temporary file remains.
* The output MUST NOT be the source (compared with ``os.path.samefile`` and resolved paths), MUST
  end in ``.gguf``, and an existing output is replaced only with ``force=True``.
* Keys written: ``general.quantization_version`` = 2, ``general.file_type`` (llama.cpp's ftype for
  the target, when it has one), ``qformat.stats.*``; with an imatrix read from a file, the keys
  llama-quantize writes: ``quantize.imatrix.file`` (the path as given), ``quantize.imatrix.dataset``
  (a string; an array of strings when the file names several), ``quantize.imatrix.entries_count``
  and ``quantize.imatrix.chunks_count`` (INT32; the latter only when the file records it). With
  ``keep_metadata`` (GGUF sources only) every source key is copied with its exact type first,
  except ``qformat.*`` (stale statistics), ``quantize.imatrix.*`` (they describe an earlier
  quantization) and the ``split.*`` keys (llama-quantize drops them too).

Importance matrix (``imatrix=``: a llama.cpp imatrix file of either format, read with
:func:`qformat.imatrix.load`, or a mapping ``{tensor name: weights}``), with llama-quantize's rules:

* an entry is matched to a tensor by exact name; it MUST hold ``n_cols`` values, or
  ``n_cols * n_experts`` for a 3-D expert tensor ``(n_experts, rows, n_cols)`` -- expert ``k`` is
  then encoded with its own vector (:func:`qformat.imatrix.weights_for`). Any other length is an
  error raised before anything is written, except for ``token_embd.weight``, which llama-quantize
  also encodes without weights (with a note), since imatrix runs never collect it properly;
* it is used only where the chosen type's encoder takes weights (``codec.weighted``); other types
  ignore it. A tensor encoded by a weighted type without an entry gets a note (llama-quantize
  prints "did not find weights" likewise) and is encoded unweighted.

Mode (``mode=``): ``"ggml"`` (default) encodes byte-identically to ggml's reference; ``"best"``
uses the lower-error search where the chosen type's codec offers it (``codec.modes``) and ggml's
encoder otherwise, with a note for block types (the plain float types have a single, exact
rounding, so they get none).

``describe(path)`` is the data shown by ``qformat inspect`` (its JSON schema is documented in the
README section "inspect --json schema"); it reads only the header, so it works for every valid GGUF
file, including tensor types qformat cannot decode.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .codecs import can_decode, get_codec
from .errors import ImatrixMismatch, OutputConflict, QFormatError, SourceError, UnsupportedSource
from .imatrix import ImatrixFile, load_file as load_imatrix_file, weights_for
from .mixes import QUANTIZATION_VERSION, Choice, Planner, Target, parse_rule
from .sources import Source, atomic_write, open_source, write_safetensors
from .stats import NAMESPACE, RoundTripStats
from .types import QType, row_nbytes

PathLike = Union[str, os.PathLike]

_FLOAT_QTYPES = (QType.F32, QType.F16, QType.BF16, QType.F64)
_INT_QTYPES = (QType.I8, QType.I16, QType.I32, QType.I64)
#: the encoding modes a user can ask for (each codec offers a subset, always including "ggml")
MODES = ("ggml", "best")
#: llama.cpp never collects useful statistics for the token embeddings; a mismatched entry is skipped
_IMATRIX_EXEMPT = "token_embd.weight"
_INT_DTYPES = {"I8": QType.I8, "I16": QType.I16, "I32": QType.I32, "I64": QType.I64,
               "int8": QType.I8, "int16": QType.I16, "int32": QType.I32, "int64": QType.I64}


@dataclass
class EncodedTensor:
    name: str
    shape: tuple
    source_dtype: str
    qtype: QType
    #: the type the plan asked for before fallbacks (None for tensors not quantized)
    wanted: Optional[QType]
    fallbacks: list[str]
    nbytes: int
    stats: Optional[RoundTripStats]
    copied: bool = False
    #: the mode the tensor was encoded in ("ggml" or "best")
    mode: str = "ggml"
    #: whether importance weights were used for it
    weighted: bool = False
    #: why it was not encoded as asked (mode fallback, imatrix entry missing or skipped)
    notes: list[str] = field(default_factory=list)


@dataclass
class EncodeResult:
    path: str
    source: str
    target: Target
    tensors: list[EncodedTensor] = field(default_factory=list)
    mode: str = "ggml"
    #: whether an importance matrix was given
    imatrix: bool = False
    #: tensors a weighted type encoded without an imatrix entry (none found for their name)
    imatrix_missing: list[str] = field(default_factory=list)

    @property
    def fallbacks(self) -> list[EncodedTensor]:
        return [t for t in self.tensors if t.fallbacks]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_weighted(self) -> int:
        """Tensors encoded with importance weights."""
        return sum(t.weighted for t in self.tensors)


def _check_paths(src: str, out: str, force: bool) -> None:
    if os.path.splitext(out)[1].lower() != ".gguf":
        raise OutputConflict("output file name must end in .gguf", path=out)
    same = os.path.realpath(src) == os.path.realpath(out)
    if not same and os.path.exists(out) and os.path.exists(src):
        try:
            same = os.path.samefile(src, out)
        except OSError:
            pass
    if same:
        raise OutputConflict("output is the source file itself; refusing to overwrite it", path=out)
    if os.path.exists(out) and not force:
        raise OutputConflict("output exists (use --force to replace it)", path=out)
    if os.path.isdir(out):
        raise OutputConflict("output is a directory", path=out)


def _kind(src: Source, name: str) -> str:
    t = src.tensors[name]
    if t.qtype is not None:  # GGUF source
        if t.qtype in _FLOAT_QTYPES:
            return "float"
        return "quantized"  # including I8..I64: copied as stored
    if t.dtype in _INT_DTYPES:
        return "int"
    return "float"


_IMATRIX_KEYS = "quantize.imatrix."


def _output_metadata(src: Source, target: Target, keep: bool,
                     imatrix: Optional[tuple[str, ImatrixFile]]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if keep:
        for key, tv in src.gguf.typed_metadata().items():
            if key.startswith((NAMESPACE, "split.", _IMATRIX_KEYS)):
                continue
            meta[key] = tv
    meta["general.quantization_version"] = np.uint32(QUANTIZATION_VERSION)
    if target.ftype is not None:
        meta["general.file_type"] = np.uint32(target.ftype)
    elif "general.file_type" in meta:
        del meta["general.file_type"]  # the source's no longer describes the output
    if imatrix is not None:  # what llama-quantize records about the imatrix it used
        path, f = imatrix
        meta[_IMATRIX_KEYS + "file"] = path
        if f.datasets:
            meta[_IMATRIX_KEYS + "dataset"] = f.datasets[0] if len(f.datasets) == 1 else list(f.datasets)
        meta[_IMATRIX_KEYS + "entries_count"] = np.int32(len(f.weights))
        if f.chunk_count is not None:
            meta[_IMATRIX_KEYS + "chunks_count"] = np.int32(f.chunk_count)
    return meta


@dataclass
class _TensorPlan:
    """How one planned tensor is encoded: its type choice, mode, weights and notes."""

    choice: Choice
    mode: str = "ggml"
    weights: Optional[np.ndarray] = None
    notes: list[str] = field(default_factory=list)
    missing: bool = False


def _plan_encoding(choice: Choice, shape: tuple, mode: str,
                   imatrix: Optional[Mapping[str, np.ndarray]]) -> _TensorPlan:
    """Mode and importance weights for one tensor (rules: module docstring); raises on a bad entry."""
    tp = _TensorPlan(choice)
    if choice.copy:
        return tp
    codec = get_codec(choice.qtype)
    if mode in codec.modes:
        tp.mode = mode
    elif choice.qtype not in _FLOAT_QTYPES:
        tp.notes.append(f"{choice.qtype.name} has no {mode!r} mode; encoded in 'ggml' mode")
    if imatrix is not None and codec.weighted:
        try:
            tp.weights = weights_for(imatrix, choice.name, shape)
        except ImatrixMismatch as e:
            if choice.name != _IMATRIX_EXEMPT:
                raise
            tp.notes.append(f"imatrix entry skipped ({e.message})")
        else:
            if tp.weights is None:
                tp.missing = True
                tp.notes.append(f"no imatrix entry; {choice.qtype.name} encoded without importance weights")
    return tp


def _read_imatrix(imatrix) -> tuple[Optional[Mapping[str, np.ndarray]], Optional[tuple[str, ImatrixFile]]]:
    """(name -> weights, (path, parsed file) when read from a file) for ``encode_file(imatrix=)``."""
    if imatrix is None:
        return None, None
    if isinstance(imatrix, (str, os.PathLike)):
        path = os.fspath(imatrix)
        parsed = load_imatrix_file(path)
        return parsed.weights, (path, parsed)
    if not isinstance(imatrix, Mapping):
        raise QFormatError(f"imatrix must be a file path or a mapping of tensor names to weights, "
                           f"not {type(imatrix).__name__}")
    return imatrix, None


def encode_file(src: PathLike, out: PathLike, target: Union[str, Target] = "Q4_K", *,
                rules: Sequence[str] = (), keep_metadata: bool = False, force: bool = False,
                imatrix: Union[None, PathLike, Mapping[str, np.ndarray]] = None, mode: str = "ggml",
                progress: Optional[Callable[[str, int], None]] = None) -> EncodeResult:
    """Encode the tensors of ``src`` into the GGUF file ``out`` (see the module docstring).

    ``target``: a type name (``"Q4_K"``) or a mix (``"Q4_K_M"``); ``rules``: ``"REGEX=TYPE"``
    overrides, first match wins; ``imatrix``: a llama.cpp imatrix file (either format) or a mapping
    tensor name -> importance weights, used where the chosen codec takes them; ``mode``: ``"ggml"``
    or ``"best"`` (see the module docstring); ``progress(name, nbytes)`` is called after each tensor.
    """
    from .container import Writer

    src, out = os.fspath(src), os.fspath(out)
    tgt = target if isinstance(target, Target) else Target.parse(target)
    parsed_rules = [parse_rule(r) for r in rules]
    if mode not in MODES:
        raise QFormatError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    _check_paths(src, out, force)
    weights_map, imatrix_file = _read_imatrix(imatrix)
    with open_source(src) as source:
        if keep_metadata and source.gguf is None:
            raise UnsupportedSource("--keep-metadata needs a .gguf source (other sources have no GGUF metadata)",
                                    path=src)
        listing = [(name, t.shape, _kind(source, name)) for name, t in source]
        for name, shape, _ in listing:
            if len(shape) == 0 or math.prod(shape) == 0:
                raise SourceError(f"tensor {name!r} has shape {shape}: GGUF stores no empty or 0-d tensors",
                                  path=src)
        plan = Planner(tgt, listing, parsed_rules)
        choices: list[Choice] = plan.choose_all(listing)
        # every imatrix entry is checked against its tensor before anything is written
        plans = [_plan_encoding(c, source.tensors[c.name].shape, mode, weights_map) for c in choices]
        meta = _output_metadata(source, tgt, keep_metadata, imatrix_file)
        result = EncodeResult(out, src, tgt, mode=mode, imatrix=weights_map is not None,
                              imatrix_missing=[tp.choice.name for tp in plans if tp.missing])
        with Writer(out, meta) as w:
            for tp in plans:
                choice = tp.choice
                t = source.tensors[choice.name]
                if choice.copy:
                    if t.qtype is not None:
                        raw = t.raw()
                        w.add_raw(choice.name, raw, t.qtype, t.shape)
                        qt, nbytes = t.qtype, raw.size
                    else:
                        arr = t.load()
                        w.add_tensor(choice.name, arr)
                        qt, nbytes = _INT_DTYPES[t.dtype], arr.nbytes
                        del arr
                    result.tensors.append(EncodedTensor(choice.name, t.shape, t.dtype, qt, None, [], nbytes,
                                                        None, copied=True))
                else:
                    x = t.load()
                    st = w.add_tensor(choice.name, (x, choice.qtype), imatrix=tp.weights, mode=tp.mode)
                    del x
                    nbytes = math.prod(t.shape[:-1]) * row_nbytes(choice.qtype, t.shape[-1])
                    result.tensors.append(EncodedTensor(choice.name, t.shape, t.dtype, choice.qtype,
                                                        choice.wanted, choice.fallbacks, nbytes, st,
                                                        mode=tp.mode, weighted=tp.weights is not None,
                                                        notes=tp.notes))
                if progress is not None:
                    progress(choice.name, result.tensors[-1].nbytes)
    return result


# --- decode -----------------------------------------------------------------------------------

DECODE_KINDS = (".npz", ".safetensors", ".npy")


def decode_file(path: PathLike, out: PathLike, *, names: Optional[Sequence[str]] = None,
                dtype: str = "float32", force: bool = False) -> list[str]:
    """Decode tensors of a GGUF file into ``.npz``, ``.safetensors`` or ``.npy`` (one tensor).

    Writes atomically, one tensor at a time; returns the names written.
    """
    from .container import open as open_gguf

    path, out = os.fspath(path), os.fspath(out)
    ext = os.path.splitext(out)[1].lower()
    if ext not in DECODE_KINDS:
        raise OutputConflict(f"cannot write '{ext or 'extensionless'}' files (choose {', '.join(DECODE_KINDS)})",
                             path=out)
    if dtype not in ("float32", "float16"):
        raise QFormatError(f"dtype must be float32 or float16, not {dtype!r}")
    _check_not_input(path, out, force)
    with open_gguf(path) as f:
        chosen = list(names) if names else list(f.tensors)
        for n in chosen:
            if n not in f.tensors:
                raise QFormatError(f"no tensor named {n!r} in the file", path=path)
            if not can_decode(f.tensors[n].qtype):
                raise QFormatError(f"tensor {n!r}: qformat cannot decode {f.tensors[n].qtype.name}", path=path)
        if ext == ".npy":
            if len(chosen) != 1:
                raise QFormatError(f".npy holds exactly one tensor; {len(chosen)} selected (use --tensor NAME)",
                                   path=out)
            atomic_write(out, lambda fh: np.lib.format.write_array(fh, f.read(chosen[0]).astype(dtype),
                                                                    allow_pickle=False))
        elif ext == ".npz":
            def body(fh):
                with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for n in chosen:
                        with zf.open(n + ".npy", "w", force_zip64=True) as member:
                            np.lib.format.write_array(member, f.read(n).astype(dtype), allow_pickle=False)
            atomic_write(out, body)
        else:
            write_safetensors(out, [(n, f.tensors[n].shape, dtype, (lambda n=n: f.read(n).astype(dtype)))
                                    for n in chosen])
    return chosen


def _check_not_input(src: str, out: str, force: bool) -> None:
    if os.path.realpath(src) == os.path.realpath(out) or (
            os.path.exists(out) and os.path.exists(src) and os.path.samefile(src, out)):
        raise OutputConflict("output is the input file itself; refusing to overwrite it", path=out)
    if os.path.exists(out) and not force:
        raise OutputConflict("output exists (use --force to replace it)", path=out)


# --- describe (inspect) --------------------------------------------------------------------------

#: arrays longer than this are shown truncated (first elements + their length) unless full=True
ARRAY_PREVIEW = 16


def _json_scalar(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        if not math.isfinite(f):
            return str(f)  # JSON has no inf/nan
        if isinstance(v, np.float32):
            # the shortest decimal that reads back as the same float32 (1e-05, not 9.99999974e-06)
            return float(np.format_float_positional(v, unique=True, trim="-")) if abs(f) >= 1e-4 or f == 0 \
                else float(np.format_float_scientific(v, unique=True))
        return f
    return v


def _json_value(tv, full: bool) -> tuple[Any, Optional[int], bool]:
    """(value, element count for arrays, truncated?)"""
    from .container import TypedValue, ValueType

    if tv.type is not ValueType.ARRAY:
        return _json_scalar(tv.value), None, False
    seq = tv.value
    n = len(seq)
    take = n if full else min(n, ARRAY_PREVIEW)
    if tv.elem_type is ValueType.ARRAY:
        items = [_json_value(v if isinstance(v, TypedValue) else v, full)[0] for v in seq[:take]]
    elif tv.elem_type is ValueType.STRING:
        items = list(seq[:take])
    else:
        items = [_json_scalar(v) for v in np.asarray(seq)[:take]]
    return items, n, take < n


def describe(path: PathLike, *, full: bool = False) -> dict[str, Any]:
    """Everything ``qformat inspect`` shows, as one JSON-ready dict (schema: README)."""
    from .container import open as open_gguf

    with open_gguf(path) as f:
        meta = []
        for key, tv in f.typed_metadata().items():
            value, count, truncated = _json_value(tv, full)
            meta.append({"key": key, "type": tv.type.name,
                         "elem_type": tv.elem_type.name if tv.elem_type is not None else None,
                         "count": count, "value": value, "truncated": truncated})
        tensors = []
        by_type: dict[str, dict[str, int]] = {}
        total_elems = total_bytes = 0
        for name, t in f.tensors.items():
            n = math.prod(t.shape)
            tensors.append({"name": name, "shape": list(t.shape), "type": t.qtype.name, "offset": t.offset,
                            "nbytes": t.nbytes, "bits_per_weight": 8.0 * t.nbytes / n})
            agg = by_type.setdefault(t.qtype.name, {"tensors": 0, "elements": 0, "nbytes": 0})
            agg["tensors"] += 1
            agg["elements"] += n
            agg["nbytes"] += t.nbytes
            total_elems += n
            total_bytes += t.nbytes
        return {
            "path": os.fspath(path), "file_size": f.file_size, "version": f.version,
            "byteorder": "little" if f.byteorder == "<" else "big", "alignment": f.alignment,
            "data_offset": f.data_offset, "n_kv": len(meta), "n_tensors": len(tensors),
            "metadata": meta, "tensors": tensors,
            "totals": {"elements": total_elems, "nbytes": total_bytes,
                       "bits_per_weight": (8.0 * total_bytes / total_elems) if total_elems else None,
                       "by_type": by_type},
        }


# --- demo ------------------------------------------------------------------------------------

def sample_path() -> str:
    """The bundled sample weights (sliced from all-MiniLM-L6-v2; see qformat/data/PROVENANCE.md)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "minilm-sample.safetensors")
