"""Encoding streams: peak memory is a few tensors' worth and does not grow with the number of tensors.

A synthetic model of N (then 4N) equal 4 MiB float32 tensors is encoded in a fresh subprocess that
reports its peak resident memory (the kernel's ``VmHWM``) before the encode, after the last tensor
went through (the streaming part: load, encode, decode, statistics, hand to the Writer) and at the
end. The streaming peak must not grow from N to 4N tensors (ratio well under 2) and must stay within
a few tensors; the end adds only the Writer's fixed-size copy buffer (it assembles the file at
``close()`` by copying its data file in 16 MiB chunks: up to two chunks are alive at once).

``resource.getrusage().ru_maxrss`` would be wrong here: Linux carries it across ``fork``+``exec``,
so a child starts with its parent's high-water mark.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qformat.sources import write_safetensors

if not os.path.exists("/proc/self/status"):
    pytest.skip("peak RSS is read from /proc/self/status (Linux)", allow_module_level=True)

ROWS, COLS = 1024, 1024  # 4 MiB of float32 per tensor
TENSOR_BYTES = ROWS * COLS * 4
COPY_CHUNK = 16 << 20  # qformat.container.writer._COPY_CHUNK

CHILD = r"""
import json, sys
import qformat
from qformat.convert import encode_file

def peak():  # the high-water mark of this process's resident memory
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

before = peak()
streaming = []
res = encode_file(sys.argv[1], sys.argv[2], sys.argv[3], progress=lambda name, nbytes: streaming.append(peak()))
print(json.dumps({"before": before, "streaming": streaming[-1], "end": peak(), "tensors": len(res.tensors)}))
"""


def _model(path, n):
    rng = np.random.default_rng(n)

    def make(i):
        return lambda: rng.standard_normal((ROWS, COLS), dtype=np.float32)
    write_safetensors(path, [(f"blk.{i}.ffn_up.weight", (ROWS, COLS), np.float32, make(i)) for i in range(n)])


def _growth(tmp_path, n, qtype="Q8_0"):
    src = tmp_path / f"m{n}.safetensors"
    _model(src, n)
    out = tmp_path / f"m{n}.gguf"
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), qtype], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["tensors"] == n
    src.unlink()
    out.unlink()
    return d["streaming"] - d["before"], d["end"] - d["before"]


def test_peak_memory_is_flat_in_the_number_of_tensors(tmp_path):
    n = 8  # the model is 8x its largest tensor; 4n is 32x
    small, small_end = _growth(tmp_path, n)
    large, large_end = _growth(tmp_path, 4 * n)
    mib = 2**20
    print(f"peak RSS growth while streaming: {n} tensors {small / mib:.1f} MiB, {4 * n} tensors {large / mib:.1f} MiB; "
          f"at the end {small_end / mib:.1f} / {large_end / mib:.1f} MiB (one tensor = {TENSOR_BYTES / mib:.0f} MiB)")
    assert large < 1.25 * small + TENSOR_BYTES / 4, (small, large)
    # "a few times the largest tensor": source copy, decoded copy, encoded bytes, float64 chunks
    assert large < 6 * TENSOR_BYTES, large
    assert large_end < large + 2 * COPY_CHUNK + TENSOR_BYTES, (large, large_end)
