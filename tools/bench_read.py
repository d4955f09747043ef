"""Read speed: qformat.open vs gguf-py's GGUFReader vs ggml's C reader, from one run.

For every file: open it and walk ALL metadata (touch every key and value; for string arrays take
len(), which is what opening must make cheap), then separately decode every string of every string
array. ggml's time is ``gguf_init_from_file`` + ``gguf_free`` only (no Python-side decoding), which
builds a std::string for every string -- the fair counterpart of "open + walk". gguf-py's time is
its constructor plus the same walk over ``fields``.

Files: a synthetic 128k-token + 280k-merge vocabulary written with qformat into a temp dir (the
size of a modern tokenizer), and the three real vocab files under ../shared/data/gguf if present.
Prints best-of-N milliseconds per file and the ratio qformat/C (target: <= 2 on the large file).

    python tools/bench_read.py [--repeat N] [--no-gguf-py]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qformat
from qformat import _ggml

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "data" / "gguf"


def make_vocab(path: Path, n_tokens=128_000, n_merges=280_000, seed=0) -> None:
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzĠéüñ日本語_0123456789"))
    lens = rng.integers(1, 12, n_tokens)
    chars = alphabet[rng.integers(0, len(alphabet), int(lens.sum()))]
    cuts = np.cumsum(lens)[:-1]
    tokens = ["".join(p) for p in np.split(chars, cuts)]
    a, b = rng.integers(0, n_tokens, n_merges), rng.integers(0, n_tokens, n_merges)
    merges = [f"{tokens[i]} {tokens[j]}" for i, j in zip(a, b)]
    qformat.write(path, {}, {
        "general.architecture": "llama", "general.name": "synthetic-128k",
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": rng.standard_normal(n_tokens).astype(np.float32),
        "tokenizer.ggml.token_type": np.ones(n_tokens, dtype=np.int32),
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.bos_token_id": np.uint32(1),
    })


def walk_qformat(path) -> int:
    n = 0
    with qformat.open(path) as f:
        for v in f.metadata.values():
            n += len(v) if isinstance(v, (qformat.StringArray, np.ndarray, list)) else 1
    return n


def decode_qformat(path) -> int:
    n = 0
    with qformat.open(path) as f:
        for v in f.metadata.values():
            if isinstance(v, qformat.StringArray):
                n += len(list(v))
    return n


def walk_gguf_py(path) -> int:
    import gguf

    r = gguf.GGUFReader(str(path))
    return sum(len(f.data) for f in r.fields.values())


def c_reader(path) -> int:
    L = _ggml.lib()
    ctx = L.gguf_init_from_file(os.fsencode(str(path)), _ggml._InitParams(True, None))
    if not ctx:
        raise RuntimeError(f"ggml rejected {path}")
    n = L.gguf_get_n_kv(ctx)
    L.gguf_free(ctx)
    return n


def best_ms(fns, path, repeat: int) -> list[float]:
    """Best time of each function, calling them in turn in every round so that load from other
    processes on a shared machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn(path)
            best[i] = min(best[i], time.perf_counter() - t)
    return [b * 1e3 for b in best]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--no-gguf-py", action="store_true", help="skip gguf-py (it takes seconds per file)")
    args = ap.parse_args(argv)
    have_c = _ggml.available()
    with tempfile.TemporaryDirectory() as d:
        synth = Path(d) / "synthetic-128k-280k.gguf"
        t = time.perf_counter()
        make_vocab(synth)
        print(f"wrote {synth.name} ({synth.stat().st_size / 1e6:.1f} MB) with qformat.write in "
              f"{time.perf_counter() - t:.2f} s")
        files = [synth] + (sorted(REAL.glob("*.gguf")) if REAL.is_dir() else [])
        hdr = f"{'file':34} {'MB':>5} {'qformat':>8} {'+decode':>8} {'ggml C':>8} {'gguf-py':>8} {'qf/C':>6} {'gguf-py/C':>9}"
        print(hdr)
        print("-" * len(hdr))
        for p in files:
            q, c = best_ms([walk_qformat, c_reader if have_c else walk_qformat], p, args.repeat)
            c = c if have_c else float("nan")
            (qd,) = best_ms([decode_qformat], p, max(1, args.repeat // 3))
            (g,) = [float("nan")] if args.no_gguf_py else best_ms([walk_gguf_py], p, 1)
            print(f"{p.name[:34]:34} {p.stat().st_size / 1e6:5.1f} {q:8.1f} {qd:8.1f} {c:8.1f} {g:8.1f} "
                  f"{q / c:6.2f} {g / c:9.1f}")
    print("\nms, best of repeats; '+decode' = open + decode every string to str; ratios from this one run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
