#!/usr/bin/env python3
"""Codec throughput, side by side from one run: qformat vs ggml's C code vs gguf-py's numpy codecs.

    python tools/bench_codecs.py                 # every type listed in TYPES
    python tools/bench_codecs.py --types Q4_K --values 1048576 --repeat 3

For each type, the same float32 input (``--values`` values, normal with a per-row scale) is encoded
and the resulting bytes decoded by each implementation. Figures are MB/s of float32 (4 bytes per
value) on the best of ``--repeat`` rounds, followed by qformat's ratio to each other implementation.
Every round runs each implementation once, in turn, so all of them see the same machine load.
The last line lists every (type, direction) where qformat is slower than gguf-py (or ``none``).
ggml is timed through ``qformat._ggml`` (``ggml_quantize_chunk`` without imatrix, i.e.
``quantize_row_<t>_ref`` for the k-quants, and ``dequantize_row_<t>``); the ctypes call overhead is
negligible at this size. An implementation that lacks a direction prints ``n/a``.

Add a type by appending its name to ``TYPES``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import qformat  # noqa: E402
from qformat import _ggml  # noqa: E402
from qformat.types import QType  # noqa: E402

#: types benchmarked by default
TYPES = ["Q2_K", "Q4_K", "Q5_K", "IQ4_NL", "IQ4_XS", "MXFP4", "NVFP4", "TQ1_0", "TQ2_0", "Q3_K", "Q6_K", "Q8_K"]
TYPES += ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q1_0", "F16", "BF16"]  # legacy blocks and float types
TYPES += ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]  # decode-only in qformat
#: types ggml_quantize_chunk does not handle (it would abort): ggml's row quantizer is timed instead
ROW_REF_ONLY = {QType.Q8_K}


def _gguf_funcs(qt: QType):
    try:
        import gguf
        from gguf import quants
    except ImportError:
        return None, None
    gt = gguf.GGMLQuantizationType[qt.name]
    return (lambda x: quants.quantize(x, gt)), (lambda b: quants.dequantize(b, gt))


_UNSUPPORTED = (NotImplementedError, KeyError, ValueError, TypeError, AttributeError)


def _interleaved_mbps(fns: dict, arg, repeat: int, mb: float) -> dict:
    """MB/s of each ``fn(arg)`` (None where unsupported), best of ``repeat`` rounds.

    Each round times every implementation once, in turn, so that all of them share whatever load
    the (shared) machine has at that moment and the ratios stay meaningful.
    """
    live = {}
    for name, fn in fns.items():
        if fn is None:
            continue
        try:
            fn(arg)  # warm-up, and the support check
        except _UNSUPPORTED:
            continue
        live[name] = fn
    best = {name: float("inf") for name in live}
    for _ in range(repeat):
        for name, fn in live.items():
            t0 = time.perf_counter()
            fn(arg)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: (mb / best[name] if name in live else None) for name in fns}


def bench_type(name: str, x: np.ndarray, repeat: int) -> list[tuple[str, str, dict]]:
    qt = QType[name]
    mb = x.nbytes / 1e6
    encodes = qformat.codecs.can_encode(qt)
    if encodes:
        blocks = qformat.quantize(x, qt)
    elif _ggml.available():  # decode-only here: ggml encodes (these types want an importance matrix)
        blocks = _ggml.quantize(x, qt, imatrix=np.ones(x.shape[-1], np.float32))
    else:
        print(f"{name:7} skipped: qformat cannot encode it and ggml is not installed to make its bytes")
        return []
    g_enc, g_dec = _gguf_funcs(qt)
    impls = {
        "qformat": ((lambda a: qformat.quantize(a, qt)) if encodes else None, lambda b: qformat.dequantize(b, qt)),
        "ggml C": (((lambda a: _ggml.quantize_row_ref(a, qt)) if qt in ROW_REF_ONLY else
                    (lambda a: _ggml.quantize(a, qt)), lambda b: _ggml.dequantize(b, qt))
                   if _ggml.available() else (None, None)),
        "gguf-py": (g_enc, g_dec),
    }
    rows = []
    directions = (("encode", 0, x), ("decode", 1, blocks)) if encodes else (("decode", 1, blocks),)
    for direction, idx, arg in directions:
        res = _interleaved_mbps({k: v[idx] for k, v in impls.items()}, arg, repeat, mb)
        rows.append((name, direction, res))
    return rows


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:9.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--values", type=int, default=1 << 20, help="float32 values (multiple of 256)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(7)
    rows = args.values // 4096
    x = (rng.standard_normal((rows, 4096)) * np.exp(rng.standard_normal((rows, 1)))).astype(np.float32)
    print(f"input: {x.size} float32 values ({x.nbytes / 1e6:.1f} MB); MB/s of float32, best of {args.repeat}")
    head = f"{'type':7} {'dir':6} {'qformat':>9} {'ggml C':>9} {'gguf-py':>9}   {'qf/C':>6} {'qf/gguf':>7}"
    print(head)
    print("-" * len(head))
    slower = []  # (type, direction, ratio) where qformat is slower than gguf-py
    for name in [t.strip().upper() for t in args.types.split(",") if t.strip()]:
        for tname, direction, r in bench_type(name, x, args.repeat):
            q, c, g = r["qformat"], r["ggml C"], r["gguf-py"]
            rc = f"{q / c:6.2f}" if q and c else "   n/a"
            rg = f"{q / g:7.2f}" if q and g else "    n/a"
            print(f"{tname:7} {direction:6} {_fmt(q)} {_fmt(c)} {_fmt(g)}   {rc} {rg}")
            if q and g and q < g:
                slower.append(f"{tname} {direction} {q / g:.2f}x")
    print("below 1.0x gguf-py: " + (", ".join(slower) if slower else "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
