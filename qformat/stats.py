"""Round-trip statistics: how far a decoded tensor is from the values it was encoded from.

Definitions (``x`` the original values, ``y`` the decoded ones, ``e = y - x``, ``n`` elements; every
sum is accumulated in float64, chunk by chunk, so a tensor never needs a float64 copy of itself):

* ``mse = sum(e²) / n``, ``rmse = sqrt(mse)``, ``max_abs = max |e|``;
* ``snr_db = 10 log10(sum x² / sum e²)``: ``+inf`` when the round trip is exact, ``-inf`` when
  ``x`` is all zeros but ``y`` is not (NaN when both are zero and exact: there is no signal);
* ``nmse = mse / mean(x²)`` (the error relative to the signal power; ``0`` when exact).

How qformat records them in a GGUF file (the ``qformat.`` key namespace; other readers ignore it):

* ``qformat.stats.fields``: ARRAY of STRING, the column names, currently
  ``["mse", "max_abs", "snr_db", "nmse", "source_mean_sq", "source_max_abs"]``. A reader MUST use
  this list to find a column (columns may be added at the end later).
* ``qformat.stats.<tensor name>``: ARRAY of FLOAT64, one value per column, for each tensor that
  qformat's writer encoded from float values (``qformat.write``, ``qformat.Writer``, hence
  ``qformat encode``; which tensors exactly: :mod:`qformat.container.writer`), measured on the
  values ``qformat.dequantize`` decodes from the stored bytes. ``source_mean_sq = mean(x²)`` and
  ``source_max_abs = max |x|`` describe the source, so that a file can be checked without it
  (see :func:`verify`).

:func:`verify` decodes every tensor again. With the source at hand it recomputes the statistics and
requires them to equal the recorded ones (within a float tolerance): a file that no longer
reproduces what was recorded fails. Without the source it validates the whole file (every reader
rule, every tensor decodable and finite) and checks what the recorded numbers imply about the
decoded tensor alone: by the triangle inequality ``|rms(y) - rms(x)| <= rmse`` and
``|max|y| - max|x|| <= max_abs``, and the columns agree with each other
(``nmse = mse / source_mean_sq``, ``snr_db = -10 log10(nmse)``, ``max_abs² >= mse``).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Union

import numpy as np

from .errors import QFormatError, VerificationError

#: metadata key prefix for everything qformat records about itself
NAMESPACE = "qformat."
STATS_PREFIX = "qformat.stats."
FIELDS_KEY = "qformat.stats.fields"
FIELDS = ("mse", "max_abs", "snr_db", "nmse", "source_mean_sq", "source_max_abs")

#: recomputed statistics must match the recorded ones to this relative tolerance: both come from
#: the same float64 sums over the same values, so only summation order can differ
REL_TOL = 1e-9
#: absolute floor for comparing values that are (nearly) zero
ABS_TOL = 1e-30

#: elements per chunk when accumulating; bounds the float64 temporaries
_CHUNK = 1 << 18


@dataclass(frozen=True)
class RoundTripStats:
    mse: float
    rmse: float
    max_abs: float
    snr_db: float
    nmse: float
    #: mean(x²) and max |x| of the original: kept so a file can be checked without its source
    source_mean_sq: float = float("nan")
    source_max_abs: float = float("nan")
    n: int = 0

    def as_record(self) -> np.ndarray:
        """The float64 row stored under ``qformat.stats.<tensor>`` (column order: :data:`FIELDS`)."""
        return np.array([getattr(self, f) for f in FIELDS], dtype=np.float64)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class StatsAccumulator:
    """Accumulates the sums behind :class:`RoundTripStats` over chunks of a tensor."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_err2 = 0.0
        self.sum_x2 = 0.0
        self.max_err = 0.0
        self.max_x = 0.0

    def update(self, original, decoded) -> None:
        x = np.asarray(original).reshape(-1)
        y = np.asarray(decoded).reshape(-1)
        if x.shape != y.shape:
            raise QFormatError(f"round-trip stats: {x.size} original values but {y.size} decoded ones")
        for s in range(0, x.size, _CHUNK):
            xc = x[s:s + _CHUNK].astype(np.float64)
            e = y[s:s + _CHUNK].astype(np.float64)
            e -= xc
            # einsum, not np.dot: a BLAS dot may spin up threads, which on a busy machine costs
            # far more than the sum itself (measured 30x on 2 shared cores)
            self.sum_err2 += float(np.einsum("i,i->", e, e))
            self.sum_x2 += float(np.einsum("i,i->", xc, xc))
            if e.size:
                self.max_err = max(self.max_err, float(np.max(np.abs(e))))
                self.max_x = max(self.max_x, float(np.max(np.abs(xc))))
        self.n += x.size

    def result(self) -> RoundTripStats:
        n = self.n
        mse = self.sum_err2 / n if n else 0.0
        mean_x2 = self.sum_x2 / n if n else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = float(10.0 * np.log10(np.float64(self.sum_x2) / np.float64(self.sum_err2)))
            nmse = float(np.float64(mse) / np.float64(mean_x2))
        if self.sum_err2 == 0.0:
            nmse = 0.0
        return RoundTripStats(mse=mse, rmse=math.sqrt(mse), max_abs=self.max_err, snr_db=snr, nmse=nmse,
                              source_mean_sq=mean_x2, source_max_abs=self.max_x, n=n)


def roundtrip_stats(original, decoded) -> RoundTripStats:
    """Statistics of ``decoded`` against ``original`` (same number of elements; any float dtypes)."""
    acc = StatsAccumulator()
    acc.update(original, decoded)
    return acc.result()


#: elements decoded at a time by :func:`encoded_stats`: a multiple of ``_CHUNK`` (so the float64
#: sums run over exactly the chunks :func:`roundtrip_stats` uses, and the results are identical)
#: and of every ggml block size (all divide 2**18)
_DECODE_CHUNK = 4 * _CHUNK


def encoded_stats(original, data, qtype) -> RoundTripStats:
    """``roundtrip_stats(original, qformat.dequantize(data, qtype))``, bit for bit, but decoding a
    slice at a time: the decoded float32 copy never exceeds ``_DECODE_CHUNK`` elements.

    ``data``: the encoded bytes of all of ``original``'s elements, in order (any shape of uint8).
    """
    from .codecs import dequantize
    from .types import BLOCK, as_qtype

    qt = as_qtype(qtype)
    elems, nbytes = BLOCK[qt]
    x = np.asarray(original).reshape(-1)
    raw = np.asarray(data).reshape(-1)
    if raw.size % nbytes or raw.size // nbytes * elems != x.size:
        raise QFormatError(f"round-trip stats: {raw.size} bytes of {qt.name} do not encode {x.size} values")
    step = _DECODE_CHUNK if _DECODE_CHUNK % elems == 0 else max(x.size, 1)
    acc = StatsAccumulator()
    for s in range(0, x.size, step):
        b = s // elems * nbytes
        acc.update(x[s:s + step], dequantize(raw[b:b + step // elems * nbytes], qt))
    return acc.result()


# --- recording in metadata ------------------------------------------------------------------

def stats_key(tensor_name: str) -> str:
    return STATS_PREFIX + tensor_name


def stats_metadata(per_tensor: Mapping[str, RoundTripStats]) -> dict[str, Any]:
    """The metadata entries that record ``per_tensor`` (numpy values carry their GGUF types)."""
    out: dict[str, Any] = {FIELDS_KEY: list(FIELDS)}
    for name, st in per_tensor.items():
        out[stats_key(name)] = st.as_record()
    return out


def recorded_stats(metadata: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Read the recorded statistics back: tensor name -> {column: value}. Empty when none."""
    if FIELDS_KEY not in metadata:
        return {}
    fields = [str(f) for f in metadata[FIELDS_KEY]]
    out: dict[str, dict[str, float]] = {}
    for key, value in metadata.items():
        if not key.startswith(STATS_PREFIX) or key == FIELDS_KEY:
            continue
        arr = np.asarray(value)
        if arr.dtype.kind != "f" or arr.ndim != 1 or arr.size != len(fields):
            raise VerificationError(f"metadata key {key!r} is not an array of {len(fields)} floats")
        out[key[len(STATS_PREFIX):]] = {f: float(v) for f, v in zip(fields, arr)}
    return out


# --- verification ---------------------------------------------------------------------------

@dataclass
class TensorCheck:
    name: str
    qtype: str
    status: str  # "pass", "fail" or "skip"
    problems: list[str] = field(default_factory=list)
    recorded: Optional[dict[str, float]] = None
    recomputed: Optional[dict[str, float]] = None

    @property
    def ok(self) -> bool:
        return self.status != "fail"


@dataclass
class VerifyReport:
    path: str
    against: Optional[str]
    max_nmse: Optional[float]
    tensors: list[TensorCheck]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors)

    @property
    def failures(self) -> list[TensorCheck]:
        return [t for t in self.tensors if not t.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "against": self.against, "max_nmse": self.max_nmse, "ok": self.ok,
            "tensors": [
                {"name": t.name, "type": t.qtype, "status": t.status, "problems": t.problems,
                 "recorded": _jsonable(t.recorded), "recomputed": _jsonable(t.recomputed)}
                for t in self.tensors
            ],
        }


def _jsonable(d: Optional[dict[str, float]]):
    if d is None:
        return None
    # JSON has no inf/nan: spell them as strings so the document stays standard JSON
    return {k: (v if math.isfinite(v) else str(v)) for k, v in d.items()}


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= max(ABS_TOL, REL_TOL * max(abs(a), abs(b)))


def _self_consistency(rec: dict[str, float], decoded: np.ndarray) -> list[str]:
    """What the recorded columns imply about the decoded tensor, without the source."""
    problems = []
    mse, max_abs, snr, nmse = rec["mse"], rec["max_abs"], rec["snr_db"], rec["nmse"]
    mean_x2, max_x = rec["source_mean_sq"], rec["source_max_abs"]
    if not (mse >= 0 and max_abs >= 0 and mean_x2 >= 0 and max_x >= 0):
        return [f"recorded statistics are negative or NaN: {rec}"]
    if mse > 0 and mean_x2 > 0 and not _close(nmse, mse / mean_x2):
        problems.append(f"recorded nmse {nmse!r} != mse / source_mean_sq = {mse / mean_x2!r}")
    if nmse > 0 and not _close(snr, -10.0 * math.log10(nmse)):
        problems.append(f"recorded snr_db {snr!r} != -10 log10(nmse) = {-10.0 * math.log10(nmse)!r}")
    if max_abs * max_abs * (1 + 1e-9) < mse:
        problems.append(f"recorded max_abs {max_abs!r} is smaller than rmse {math.sqrt(mse)!r}")
    y = decoded.reshape(-1)
    sum_y2 = 0.0
    max_y = 0.0
    for s in range(0, y.size, _CHUNK):
        c = y[s:s + _CHUNK].astype(np.float64)
        sum_y2 += float(np.einsum("i,i->", c, c))
        if c.size:
            max_y = max(max_y, float(np.max(np.abs(c))))
    rms_y = math.sqrt(sum_y2 / y.size) if y.size else 0.0
    rms_x, rmse = math.sqrt(mean_x2), math.sqrt(mse)
    # float32 decoding and float64 summation leave a little slack beyond the exact inequality
    slack = 1e-6 * max(rms_x, rms_y) + 1e-30
    if abs(rms_y - rms_x) > rmse + slack:
        problems.append(f"decoded rms {rms_y:.6g} differs from the source rms {rms_x:.6g} by more than "
                        f"the recorded rmse {rmse:.6g}")
    slack = 1e-6 * max(max_x, max_y) + 1e-30
    if abs(max_y - max_x) > max_abs + slack:
        problems.append(f"decoded max |y| {max_y:.6g} differs from the source max |x| {max_x:.6g} by more "
                        f"than the recorded max_abs {max_abs:.6g}")
    return problems


def _compare(recorded: dict[str, float], fresh: RoundTripStats) -> list[str]:
    out = []
    now = fresh.as_dict()
    for f in FIELDS:
        if f in recorded and not _close(recorded[f], now[f]):
            out.append(f"{f}: recorded {recorded[f]!r}, recomputed {now[f]!r}")
    return out


def verify(path: Union[str, os.PathLike], against=None, *, max_nmse: Optional[float] = None) -> VerifyReport:
    """Decode every tensor of the GGUF file at ``path`` and check it (see the module docstring).

    ``against``: ``None``, a mapping name -> array, or a path to a source file (anything
    :func:`qformat.sources.open_source` reads). Raises a :class:`QFormatError` subclass when the
    file or the source is unreadable; verification failures are reported in the result
    (``report.ok``), never raised.
    """
    from .codecs import can_decode
    from .container import open as open_gguf
    from .sources import open_source

    src_obj = None
    against_name: Optional[str] = None
    if against is not None and not isinstance(against, Mapping):
        against_name = os.fspath(against)
        src_obj = open_source(against)
        source: Optional[Mapping] = {name: t for name, t in src_obj}
    else:
        source = against
        if against is not None:
            against_name = "<mapping>"
    checks: list[TensorCheck] = []
    try:
        with open_gguf(path) as f:
            recorded = recorded_stats(f.metadata)
            for name, info in f.tensors.items():
                qt = info.qtype.name
                rec = recorded.get(name)
                chk = TensorCheck(name, qt, "pass", recorded=rec)
                checks.append(chk)
                if not can_decode(info.qtype):
                    chk.status = "skip"
                    chk.problems.append(f"qformat cannot decode {qt}")
                    continue
                y = f.read(name)
                if not np.isfinite(y).all() and (rec is not None and math.isfinite(rec["source_max_abs"])):
                    chk.problems.append("decoded tensor has non-finite values but its source had none")
                if source is not None:
                    if name not in source:
                        chk.problems.append("tensor is missing from the source")
                    else:
                        x = source[name]
                        x = x.load() if hasattr(x, "load") else np.asarray(x)
                        if tuple(np.shape(x)) != tuple(info.shape):
                            chk.problems.append(f"shape {tuple(info.shape)} != source shape {tuple(np.shape(x))}")
                        else:
                            fresh = roundtrip_stats(x, y)
                            chk.recomputed = {k: v for k, v in fresh.as_dict().items() if k in FIELDS}
                            if rec is not None:
                                chk.problems += _compare(rec, fresh)
                            if max_nmse is not None and fresh.nmse > max_nmse:
                                chk.problems.append(f"nmse {fresh.nmse:.4g} exceeds the bound {max_nmse:.4g}")
                elif rec is not None:
                    chk.problems += _self_consistency(rec, y)
                    if max_nmse is not None and rec["nmse"] > max_nmse:
                        chk.problems.append(f"recorded nmse {rec['nmse']:.4g} exceeds the bound {max_nmse:.4g}")
                if chk.problems:
                    chk.status = "fail"
            extra = set(recorded) - set(f.tensors)
            for name in sorted(extra):
                checks.append(TensorCheck(name, "-", "fail", ["statistics recorded for a tensor the file lacks"],
                                          recorded=recorded[name]))
    finally:
        if src_obj is not None:
            src_obj.close()
    return VerifyReport(os.fspath(path), against_name, max_nmse, checks)
