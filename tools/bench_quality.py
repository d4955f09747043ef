"""Quality benchmark: error of qformat's encode modes against ggml's C encoder, at the same bytes.

For each data set and type it prints, from one run:

* ``ggml``        MSE/sigma^2 of ggml's reference encoder (``quantize_row_<t>_ref``, C, via qformat._ggml)
* ``best``        MSE/sigma^2 of ``qformat.quantize(..., mode="best")`` and its ratio to ggml
* ``ggml+imat``   importance-weighted error sum(w (x-y)^2) / sum(w x^2) of ggml's imatrix path
                  (``ggml_quantize_chunk`` with the imatrix), and ``best+imat`` with its ratio
* ``oracle``      (Q4_K only; on a seeded random sample of 256k values of the set) each 32-value
                  sub-block keeps a float scale and min (no 6-bit, no fp16 rounding) with the best
                  codes a dense 2-D search finds: about the floor for this block structure

and then the encode speed (MB/s of float32 input) of ggml's C reference, qformat "ggml" and
qformat "best" on the same 1M N(0,1) values, with ratios. Data sets: N(0,1), Laplace(1),
Student-t(4) (1M values each, seed 0) and the 16 real f32 tensors of MiniLM-L6 layer 0
(``../shared/data/weights/minilm-l6-layer0.safetensors``, flattened and cut into rows of 256;
skipped when absent). The importance vector is per column: ``exp(N(0, 1))`` over rows of 4096
(synthetic sets) or 256 (MiniLM), seed 1.

Usage: ``python tools/bench_quality.py [--types Q4_K,Q5_K,Q4_1,Q5_1,Q6_K,Q2_K,Q3_K] [--write /tmp/readme_quality.md]``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import qformat
from qformat import _ggml

ROOT = Path(__file__).resolve().parent.parent
MINILM = ROOT.parent / "shared" / "data" / "weights" / "minilm-l6-layer0.safetensors"
N = 1 << 20


def datasets() -> dict:
    rng = np.random.default_rng(0)
    sets = {
        "N(0,1)": rng.standard_normal(N).reshape(-1, 4096),
        "Laplace": rng.laplace(size=N).reshape(-1, 4096),
        "Student-t(4)": rng.standard_t(4, size=N).reshape(-1, 4096),
    }
    if MINILM.exists():
        from safetensors.numpy import load_file

        flat = np.concatenate([v.reshape(-1) for v in load_file(str(MINILM)).values()])
        sets["MiniLM-L6 layer 0"] = flat[: flat.size // 256 * 256].reshape(-1, 256)
    return {k: v.astype(np.float32) for k, v in sets.items()}


def rel_err(x: np.ndarray, y: np.ndarray, w=None) -> float:
    x64, r = x.astype(np.float64), y.astype(np.float64) - x.astype(np.float64)
    if w is None:
        return float((r * r).sum() / (x64 * x64).sum())
    return float((w * r * r).sum() / (w * x64 * x64).sum())


def oracle_q4_k(x: np.ndarray, nmax: int = 15) -> float:
    """MSE/sigma^2 with a float (scale, min) per 32-value sub-block, best of a dense 2-D search.

    Trials: inverse scale (nmax + a)/(max - min) for a in -4..1 step 0.2, rounding shift f in
    -0.6..0.6 step 0.2, each followed by least squares for (scale, min) and two Lloyd steps.
    """
    s = x.reshape(-1, 32).astype(np.float64)
    lo, span = s.min(1, keepdims=True), np.ptp(s, 1, keepdims=True)
    span[span == 0] = 1
    best = np.full(s.shape[0], np.inf)

    def fit(q):
        n, sq, sqq = 32.0, q.sum(1), (q * q).sum(1)
        sx, sxq = s.sum(1), (s * q).sum(1)
        det = n * sqq - sq * sq
        ok = det > 0
        det = np.where(ok, det, 1)
        a = np.where(ok, (n * sxq - sx * sq) / det, 0)
        b = np.where(ok, (sqq * sx - sq * sxq) / det, s.mean(1))
        return a[:, None], b[:, None]

    for a in np.arange(-4, 1.01, 0.2):
        for f in np.arange(-0.6, 0.61, 0.2):
            q = np.clip(np.rint((s - lo) * ((nmax + a) / span) + f), 0, nmax)
            for _ in range(3):
                sc, mn = fit(q)
                q = np.clip(np.rint((s - mn) / np.where(sc != 0, sc, 1)), 0, nmax)
            sc, mn = fit(q)
            best = np.minimum(best, ((sc * q + mn - s) ** 2).sum(1))
    return float(best.sum() / (s * s).sum())


def timed(fn, repeat: int = 3) -> float:
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_K,Q5_K,Q4_1,Q5_1,Q6_K,Q2_K,Q3_K")
    ap.add_argument("--write", type=Path, help="also write the tables as a README section to this file")
    args = ap.parse_args()
    if not _ggml.available():
        print("ggml-python is not installed (pip install 'qformat[ref]'): nothing to compare against")
        return 1
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    sets = datasets()
    lines = ["| data | type | ggml | best | best/ggml | ggml+imat | best+imat | best/ggml (imat) | oracle |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, x in sets.items():
        imat = np.exp(np.random.default_rng(1).normal(0, 1, x.shape[1])).astype(np.float32)
        wfull = np.broadcast_to(imat.astype(np.float64), x.shape)
        # the oracle is slow: a seeded random sample of 256k values (rows spread over the whole set)
        pick = np.random.default_rng(2).choice(x.shape[0], min(x.shape[0], 262144 // x.shape[1]), replace=False)
        oracle_rows = x[np.sort(pick)]
        for qt in types:
            g = rel_err(x, _ggml.dequantize(_ggml.quantize(x, qt), qt))
            b = rel_err(x, qformat.dequantize(qformat.quantize(x, qt, mode="best"), qt))
            gw = rel_err(x, _ggml.dequantize(_ggml.quantize(x, qt, imatrix=imat), qt), wfull)
            bw = rel_err(x, qformat.dequantize(qformat.quantize(x, qt, mode="best", imatrix=imat), qt), wfull)
            orc = f"{oracle_q4_k(oracle_rows):.5f}" if qt == "Q4_K" else ""
            lines.append(f"| {name} | {qt} | {g:.5f} | {b:.5f} | **{b / g:.3f}** | {gw:.5f} | {bw:.5f} | "
                         f"**{bw / gw:.3f}** | {orc} |")
            print(lines[-1], flush=True)
    x = sets["N(0,1)"]
    mb = x.nbytes / 1e6
    speed = ["| type | ggml C ref MB/s | qformat ggml MB/s | qformat best MB/s | best / ggml C |",
             "|---|---:|---:|---:|---:|"]
    for qt in types:
        c = mb / timed(lambda: _ggml.quantize_row_ref(x, qt))
        q = mb / timed(lambda: qformat.quantize(x, qt))
        bst = mb / timed(lambda: qformat.quantize(x, qt, mode="best"))
        speed.append(f"| {qt} | {c:.1f} | {q:.1f} | {bst:.1f} | **{bst / c:.2f}x** |")
    table = "\n".join(lines)
    speeds = "\n".join(speed)
    print()
    print(table)
    print()
    print(speeds)
    if args.write:
        args.write.write_text(section(table, speeds, types))
        print(f"\nwrote {args.write}")
    return 0


def section(table: str, speeds: str, types) -> str:
    default = ["Q4_K", "Q5_K", "Q4_1", "Q5_1", "Q6_K", "Q2_K", "Q3_K"]
    cmd = "python tools/bench_quality.py" + ("" if types == default else f" --types {','.join(types)}")
    return f"""## Lower error than llama.cpp at the same bytes: `mode="best"`

`qformat.quantize(x, "Q4_K", mode="best")` (also Q5_K, Q4_1, Q5_1, Q6_K, Q2_K, Q3_K; with or without `imatrix=`) writes
ordinary blocks of the type -- ggml's own decoder reads them unchanged, bit for bit as qformat decodes them --
chosen to lower the squared error (weighted by the importance matrix when one is given). ggml's own
block for each super-block is always a candidate and is kept unless the search's is strictly better,
so no super-block ever gets worse. How (`qformat/search/best.py`): a float scale/min per 32-value
sub-block fitted to the true objective (ggml's search weights the error by `mean|x| + |x|` and
anchors every trial grid at the minimum; here a greedy set of 2-D trial grids plus Lloyd steps);
then a quadratic model of the error picks, among 8 x 8 small stretches of `d` and `dmin`, the pair
whose 6-bit grids land best on the sub-blocks' ideal scales and offsets; then an exact search of
each sub-block's 6-bit scale/min and their neighbours with fresh codes, around a joint
least-squares refit of the fp16 `d`/`dmin` (the rounded optimum and its 8 one-ulp neighbours scored
exactly for the codes; Q4_K alternates codes and scales for a second round, and its stretches span
0-12%). Q4_1/Q5_1 (whose ggml reference encoder is a plain min/max, no search) get the same
sub-block fit, with an unconstrained fp16 minimum and a +-1 fp16-step search of `d` and `m`. Q6_K and Q3_K: a least-squares scale per 16-value sub-block under the true objective
(ggml weights its fit by `x*x`), `d` chosen by the same kind of model, the signed scales searched +-1
around a least-squares refit of `d`. Q2_K runs the Q4_K search on its 16 sub-blocks of 16 with 4-bit
scales and mins (ggml's Q2_K fits by weighted absolute error, so the squared error has much to gain).

Relative error `MSE / mean(x^2)` (columns `ggml`, `best`) and importance-weighted relative error
`sum(w (x-y)^2) / sum(w x^2)` (columns `+imat`), against ggml's C encoder in the same run
(`ggml` = `quantize_row_<t>_ref`, what llama-quantize does without an imatrix; `ggml+imat` =
ggml's imatrix path). `oracle` (Q4_K, on a random 256k-value sample): every sub-block keeps an
unquantized float scale and min with the best codes a dense search finds -- about the floor for
this block structure.

{table}

Encode speed on the same 1M float32 values (best of 3, one process, MB/s of float32 input):

{speeds}

(Q4_1/Q5_1: ggml's reference encoder is one min/max pass, so a search is bound to be far slower
than it.)

Reproduce: `{cmd}` (needs the `ref` extra, `pip install 'qformat[ref]'`; the MiniLM row needs
`../shared/data`). Importance vectors: per column `exp(N(0,1))`, seed 1.

Importance matrices from llama.cpp: `qformat.imatrix.load(path)` reads both formats `llama-imatrix`
writes -- the legacy `imatrix.dat` and the GGUF imatrix (`<tensor>.in_sum2` / `<tensor>.counts`) -- into
`{{tensor_name: per-column weights}}` exactly as `llama-quantize` derives them, with strict
validation (`qformat.errors.ImatrixError` subclasses naming the byte offset);
`qformat.imatrix.weights_for(m, name, shape)` gives the weights for one tensor (`(n,)`, or
`(n_exp, n)` for an expert tensor), and `qformat encode --imatrix FILE` applies them.
"""


if __name__ == "__main__":
    sys.exit(main())
