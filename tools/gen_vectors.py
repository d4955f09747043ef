#!/usr/bin/env python3
"""Write the codec golden vectors under spec/vectors/codecs/ from ggml's own C code.

The vectors are fixtures written once and checked forever (tests/test_codec_vectors.py), so a codec
change can never pass silently, and bit-exactness holds on machines without ggml-python.

    python tools/gen_vectors.py                 # every type ggml can produce
    python tools/gen_vectors.py --types Q4_K,Q6_K

Files:
* ``inputs.npz``: float32 ``(rows, 512)`` per case; ``imatrix_<name>`` float32 ``(512,)``.
* ``<TYPE>.npz``: ``enc_<case>`` = ggml_quantize_chunk(x) bytes, ``dec_<case>`` = ggml's dequantize of
  them; ``encw_<case>``/``decw_<case>`` with importance weights ``imatrix_default`` (types whose ggml
  encoder uses one); ``rand`` = random block bytes and ``dec_rand`` = ggml's decode of them.
Inputs are deterministic (fixed seeds); re-running reproduces the same files bit for bit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qformat import _ggml  # noqa: E402
from qformat.types import BLOCK, QType  # noqa: E402

OUT = ROOT / "spec" / "vectors" / "codecs"
WEIGHTS = ROOT.parent / "shared" / "data" / "weights" / "minilm-l6-layer0.safetensors"
ROW = 512  # a multiple of every block size (32, 64, 128, 256)

#: types whose ggml encoder (ggml_quantize_chunk) changes its output when given an imatrix
WEIGHTED = {
    QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q2_K, QType.Q3_K, QType.Q4_K, QType.Q5_K,
    QType.Q6_K, QType.IQ4_NL, QType.IQ4_XS,
}
#: types ggml can decode but not produce without an importance matrix
DECODE_ONLY = {QType.IQ2_XXS, QType.IQ2_XS, QType.IQ2_S, QType.IQ1_S, QType.IQ1_M, QType.IQ3_XXS, QType.IQ3_S}
#: types ggml_quantize_chunk does not take, whose row quantizer exists (activation types for dot products)
ROW_REF_ONLY = {QType.Q8_1, QType.Q8_K}
#: plain types for which ggml has no conversion routine to compare against
NO_REFERENCE = {QType.I8, QType.I16, QType.I32, QType.I64, QType.F64}


def make_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261204)
    c: dict[str, np.ndarray] = {}
    for s in (1e-30, 1e-6, 1.0, 6e4):
        c[f"normal_{s:g}"] = (rng.standard_normal((8, ROW)) * s).astype(np.float32)
    c["laplace"] = rng.laplace(size=(8, ROW)).astype(np.float32)
    c["student_t3"] = rng.standard_t(3, size=(8, ROW)).astype(np.float32)
    c["zeros"] = np.zeros((2, ROW), np.float32)
    c["negzeros"] = np.where(rng.random((2, ROW)) < 0.5, -0.0, 0.0).astype(np.float32)
    c["constant"] = np.stack([np.full(ROW, 5.0, np.float32), np.full(ROW, -3.25, np.float32)])
    sub = rng.standard_normal((4, ROW // 16)).astype(np.float32)
    c["constant_sub16"] = np.repeat(sub, 16, axis=1)
    sub = rng.standard_normal((4, ROW // 32)).astype(np.float32)
    c["constant_sub32"] = np.repeat(sub, 32, axis=1)
    mixed = rng.standard_normal((4, ROW)).astype(np.float32)
    mixed[:, 32:64] = 0.0  # a zero sub-block inside a live superblock
    mixed[:, 256 + 64:256 + 96] = 1.5  # a constant sub-block
    c["mixed_subblocks"] = mixed
    out = np.zeros((4, ROW), np.float32)
    out[np.arange(4), rng.integers(0, ROW, 4)] = [100.0, -100.0, 1e4, -7.0]
    c["outlier_in_zeros"] = out
    out = (rng.standard_normal((4, ROW)) * 0.01).astype(np.float32)
    out[np.arange(4), rng.integers(0, ROW, 4)] = [50.0, -50.0, 3.0, -3.0]
    c["outlier_in_noise"] = out
    c["positive"] = np.abs(rng.standard_normal((4, ROW))).astype(np.float32)
    c["negative"] = -np.abs(rng.standard_normal((4, ROW))).astype(np.float32)
    c["offset_positive"] = (10.0 + rng.standard_normal((4, ROW))).astype(np.float32)
    c["denormal"] = (rng.standard_normal((2, ROW)) * 1e-39).astype(np.float32)
    c["ints_small"] = rng.integers(-8, 8, (4, ROW)).astype(np.float32)
    c["uniform"] = rng.uniform(-1, 1, (4, ROW)).astype(np.float32)
    if WEIGHTS.exists():
        from safetensors.numpy import load_file

        ws = load_file(str(WEIGHTS))
        flat = np.concatenate([ws[k].astype(np.float32).reshape(-1) for k in sorted(ws)])
        take = flat[: 16 * ROW]
        c["minilm"] = take.reshape(16, ROW).copy()
    else:
        print(f"warning: {WEIGHTS} absent, the real-weights case is skipped", file=sys.stderr)
    c["imatrix_default"] = (rng.random(ROW) ** 2 * 4 + 0.01).astype(np.float32)
    c["imatrix_sparse"] = np.where(rng.random(ROW) < 0.2, 0.0, rng.random(ROW) * 10).astype(np.float32)
    return c


def cases(inputs: dict[str, np.ndarray]):
    return {k: v for k, v in inputs.items() if not k.startswith("imatrix_")}


def type_vectors(qt: QType, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    elems, nbytes = BLOCK[qt]
    out: dict[str, np.ndarray] = {}
    encodable = qt not in DECODE_ONLY
    if encodable:
        for name, x in cases(inputs).items():
            if qt in ROW_REF_ONLY:
                enc = _ggml.quantize_row_ref(x, qt).reshape(x.shape[0], -1)
            else:
                enc = _ggml.quantize(x, qt)
            out[f"enc_{name}"] = enc
            if qt != QType.Q8_1:  # ggml has no dequantize_row_q8_1
                out[f"dec_{name}"] = _ggml.dequantize(enc, qt)
            if qt in WEIGHTED:
                for wname in ("imatrix_default", "imatrix_sparse"):
                    encw = _ggml.quantize(x, qt, imatrix=inputs[wname])
                    tag = wname.removeprefix("imatrix_")
                    out[f"encw_{tag}_{name}"] = encw
                    out[f"decw_{tag}_{name}"] = _ggml.dequantize(encw, qt)
    if qt not in (QType.Q8_1,):  # ggml has no dequantize_row_q8_1
        rng = np.random.default_rng(int(qt) + 1000)
        rand = rng.integers(0, 256, (64, nbytes), dtype=np.uint8)
        out["rand"] = rand
        out["dec_rand"] = _ggml.dequantize(rand, qt)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="", help="comma-separated type names (default: all)")
    args = ap.parse_args(argv)
    if not _ggml.available():
        print("ggml-python is required: pip install -e '.[ref]'", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs()
    np.savez_compressed(OUT / "inputs.npz", **inputs)
    types = [QType[t.strip().upper()] for t in args.types.split(",") if t.strip()]
    types = types or [t for t in QType if t not in NO_REFERENCE]
    for qt in types:
        vec = type_vectors(qt, inputs)
        np.savez_compressed(OUT / f"{qt.name}.npz", **vec)
        print(f"{qt.name}: {len(vec)} arrays")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
