"""Write the small importance-matrix test files under tests/data/imatrix/, in both llama.cpp formats.

Recipe (deterministic; rerun ``python tools/gen_imatrix.py`` to regenerate byte-identical files):

* seed 20261204; a pretend run of ``llama-imatrix`` over ``CHUNKS = 3`` chunks of
  ``CHUNK_SIZE = 64`` tokens on a dataset called ``recipe-dataset.txt``;
* three entries, as llama.cpp names weight tensors:

  - ``blk.0.attn_q.weight``      256 input columns, one matrix, every token (192 activations)
  - ``blk.0.ffn_down.weight``    512 input columns, one matrix, every token
  - ``blk.0.ffn_up_exps.weight`` 256 input columns, 2 experts that saw 120 and 72 tokens

* column ``c`` has an activation scale ``exp(N(0, 0.75))``; activations are float32
  ``N(0, 1) * scale``; per matrix, ``in_sum2`` is the float32 sum of their squares, ``in_sum`` the
  sum, ``counts`` the number of activations;
* ``imatrix.gguf``: what ``llama-imatrix`` (GGUF output) writes: ``general.type = "imatrix"``,
  ``imatrix.datasets``, ``imatrix.chunk_count``, ``imatrix.chunk_size`` (UINT32), and tensors
  ``<name>.in_sum2`` (F32, (n_mat, n_cols)), ``<name>.counts`` (F32, (n_mat, 1)), ``<name>.in_sum``,
  in sorted name order, written with ``qformat.write``;
* ``imatrix.dat``: what ``llama-imatrix --output-format dat`` writes for the same statistics:
  int32 entry count; per entry (sorted by name) int32 name length, name, int32
  ``ncall = ceil(max(counts) / CHUNK_SIZE)``, int32 nval, then ``(in_sum2 / count) * ncall`` as
  float32; then the int32 chunk count, int32 dataset name length and the dataset name.

Both files therefore describe the same per-column mean squares (``in_sum2 / counts``); the tests
check that :func:`qformat.imatrix.load` reads the same weights from each.
"""
from __future__ import annotations

import argparse
import math
import struct
from pathlib import Path

import numpy as np

SEED = 20261204
CHUNKS = 3
CHUNK_SIZE = 64
DATASET = "recipe-dataset.txt"
#: name -> (n_cols, tokens seen per matrix)
ENTRIES = {
    "blk.0.attn_q.weight": (256, [CHUNKS * CHUNK_SIZE]),
    "blk.0.ffn_down.weight": (512, [CHUNKS * CHUNK_SIZE]),
    "blk.0.ffn_up_exps.weight": (256, [120, 72]),
}
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "imatrix"


def statistics() -> dict:
    """name -> (in_sum2 (n_mat, n_cols), in_sum (n_mat, n_cols), counts (n_mat,)) as float32."""
    rng = np.random.default_rng(SEED)
    stats = {}
    for name in sorted(ENTRIES):
        n_cols, tokens = ENTRIES[name]
        scale = np.exp(rng.normal(0.0, 0.75, n_cols)).astype(np.float32)
        sum2, sum1 = [], []
        for n in tokens:
            act = (rng.standard_normal((n, n_cols)).astype(np.float32) * scale).astype(np.float32)
            sum2.append((act * act).sum(axis=0, dtype=np.float32))
            sum1.append(act.sum(axis=0, dtype=np.float32))
        stats[name] = (np.array(sum2, np.float32), np.array(sum1, np.float32), np.array(tokens, np.float32))
    return stats


def write_dat(path: Path, stats: dict) -> None:
    out = [struct.pack("<i", len(stats))]
    for name, (sum2, _, counts) in stats.items():
        ncall = math.ceil(float(counts.max()) / CHUNK_SIZE)
        values = (sum2 / counts[:, None]) * np.float32(ncall)
        raw = name.encode("utf-8")
        out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, values.size),
                values.astype("<f4").tobytes()]
    ds = DATASET.encode("utf-8")
    out += [struct.pack("<ii", CHUNKS, len(ds)), ds]
    path.write_bytes(b"".join(out))


def write_gguf(path: Path, stats: dict) -> None:
    import qformat
    from qformat.container import TypedValue, ValueType

    tensors = {}
    for name, (sum2, sum1, counts) in stats.items():
        tensors[name + ".counts"] = counts.reshape(-1, 1)
        tensors[name + ".in_sum"] = sum1
        tensors[name + ".in_sum2"] = sum2
    metadata = {
        "general.type": "imatrix",
        "imatrix.datasets": [DATASET],
        "imatrix.chunk_count": TypedValue(CHUNKS, ValueType.UINT32),
        "imatrix.chunk_size": TypedValue(CHUNK_SIZE, ValueType.UINT32),
    }
    qformat.write(path, tensors, metadata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stats = statistics()
    write_dat(args.out / "imatrix.dat", stats)
    write_gguf(args.out / "imatrix.gguf", stats)
    for f in ("imatrix.dat", "imatrix.gguf"):
        print(f"wrote {args.out / f} ({(args.out / f).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
