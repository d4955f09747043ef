"""Benchmark: encoding the real MiniLM layer (16 tensors, 1.77M weights) -- time and peak memory.

Run from the repository root: ``python tools/bench_encode.py [SRC.safetensors] [--repeat N]``.

One run prints, side by side, for each target:

* ``qformat encode_file``: the whole pipeline (read, plan types, encode, decode for the round-trip
  statistics, write atomically), in a fresh subprocess that reports its wall time and the growth of
  its peak resident memory (``VmHWM``) over the post-import baseline;
* gguf-py doing the same file job its own way (``safetensors`` load, ``gguf.quants.quantize``,
  ``GGUFWriter``), with the same per-tensor types, where gguf-py can encode them all;
* codec time alone for the same tensors and types: qformat's ``quantize`` vs ggml's C
  ``ggml_quantize_chunk`` (single thread), best of ``--repeat``.

Ratios are qformat / other (lower is better for qformat).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SRC = os.path.join(os.path.dirname(ROOT), "shared", "data", "weights", "minilm-l6-layer0.safetensors")

_PEAK = '''
def peak():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM:")).split()[1]) * 1024
'''

QFORMAT_CHILD = _PEAK + '''
import json, sys, time
from qformat.convert import encode_file
base = peak(); t = time.perf_counter()
encode_file(sys.argv[1], sys.argv[2], sys.argv[3], force=True)
print(json.dumps({"seconds": time.perf_counter() - t, "peak": peak() - base}))
'''

GGUFPY_CHILD = _PEAK + '''
import json, sys, time
import numpy as np, gguf
from gguf import quants
from safetensors.numpy import load_file
plan = json.loads(sys.argv[3])
base = peak(); t = time.perf_counter()
tensors = load_file(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], arch="bench")
for name, qt in plan.items():
    x = tensors[name]
    q = gguf.GGMLQuantizationType[qt]
    data = x if qt == "F32" else quants.quantize(x, q)
    w.add_tensor(name, data, raw_dtype=None if qt == "F32" else q)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print(json.dumps({"seconds": time.perf_counter() - t, "peak": peak() - base}))
'''


def child(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def best(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=DEFAULT_SRC)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--targets", default="Q8_0,Q4_K,Q4_K_M")
    args = ap.parse_args()
    if not os.path.exists(args.src):
        sys.exit(f"source not found: {args.src}")
    sys.path.insert(0, ROOT)
    import qformat
    from qformat import _ggml
    from qformat.mixes import Planner, Target
    from qformat.sources import open_source

    with open_source(args.src) as s:
        arrays = {n: t.load() for n, t in s}
    n_weights = sum(a.size for a in arrays.values())
    print(f"source: {args.src}: {len(arrays)} tensors, {n_weights:,} weights, "
          f"{os.path.getsize(args.src) / 2**20:.2f} MiB; repeat {args.repeat}")
    mib = 2**20
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for target in args.targets.split(","):
            listing = [(n, a.shape, "float") for n, a in arrays.items()]
            plan = {c.name: c.qtype.name for c in Planner(Target.parse(target), listing).choose_all(listing)}
            runs = [child(QFORMAT_CHILD, args.src, os.path.join(d, "q.gguf"), target) for _ in range(args.repeat)]
            q_sec, q_peak = min(r["seconds"] for r in runs), max(r["peak"] for r in runs)
            g_sec = g_peak = None
            gguf_types = {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}  # gguf-py has no K-quant encoders
            if set(plan.values()) <= gguf_types:
                gr = [child(GGUFPY_CHILD, args.src, os.path.join(d, "g.gguf"), json.dumps(plan))
                      for _ in range(args.repeat)]
                g_sec, g_peak = min(r["seconds"] for r in gr), max(r["peak"] for r in gr)
            quantized = {n: t for n, t in plan.items() if t != "F32"}
            c_q = best(lambda: [qformat.quantize(arrays[n], t) for n, t in quantized.items()], args.repeat)
            c_c = (best(lambda: [_ggml.quantize(arrays[n], t) for n, t in quantized.items()], args.repeat)
                   if _ggml.available() else None)
            types = ", ".join(f"{t}x{list(plan.values()).count(t)}" for t in sorted(set(plan.values())))
            rows.append((target, types, q_sec, q_peak, g_sec, g_peak, c_q, c_c))
    print()
    head = ("target", "types", "qformat s", "peak MiB", "gguf-py s", "peak MiB", "ratio t", "codec qf s",
            "codec C s", "ratio")
    table = [head]
    for target, types, q_sec, q_peak, g_sec, g_peak, c_q, c_c in rows:
        table.append((target, types, f"{q_sec:.3f}", f"{q_peak / mib:.1f}",
                      "n/a" if g_sec is None else f"{g_sec:.3f}", "n/a" if g_peak is None else f"{g_peak / mib:.1f}",
                      "n/a" if g_sec is None else f"{q_sec / g_sec:.2f}", f"{c_q:.3f}",
                      "n/a" if c_c is None else f"{c_c:.3f}", "n/a" if c_c is None else f"{c_q / c_c:.2f}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print("\nqformat's pipeline also decodes every tensor again for the recorded round-trip statistics; "
          "gguf-py's does not.")


if __name__ == "__main__":
    main()
