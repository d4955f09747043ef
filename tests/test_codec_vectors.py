"""Golden vectors from ggml's C code (tools/gen_vectors.py): encode byte-identical, decode bit-identical.

These need no ggml install: the expected bytes were written by the C reference and committed.
"""
from __future__ import annotations

import numpy as np
import pytest

import qformat
from qformat.codecs import REGISTRY
from qformat.types import QType

from .conftest import SPEC

VEC = SPEC / "vectors" / "codecs"
TYPE_FILES = sorted(p for p in VEC.glob("*.npz") if p.stem != "inputs")


@pytest.fixture(scope="module")
def inputs():
    with np.load(VEC / "inputs.npz") as z:
        return {k: z[k] for k in z.files}


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_vectors_exist():
    assert (VEC / "inputs.npz").exists()
    assert len(TYPE_FILES) >= 1


@pytest.mark.parametrize("path", TYPE_FILES, ids=lambda p: p.stem)
def test_encode_matches_ggml(path, inputs):
    qt = QType[path.stem]
    codec = REGISTRY.get(qt)
    if codec is None or codec.encode is None:
        pytest.skip(f"qformat has no {qt.name} encoder yet")
    with np.load(path) as z:
        keys = [k for k in z.files if k.startswith("enc_") or k.startswith("encw_")]
        if not keys:
            pytest.skip(f"ggml produced no {qt.name} encodings (decode-only type)")
        checked = 0
        for k in keys:
            if k.startswith("encw_"):
                if not codec.weighted:
                    continue
                tag, case = k[len("encw_"):].split("_", 1)
                got = qformat.quantize(inputs[case], qt, imatrix=inputs[f"imatrix_{tag}"])
            else:
                got = qformat.quantize(inputs[k[len("enc_"):]], qt)
            want = z[k]
            assert got.shape == want.shape, k
            bad = np.flatnonzero((got != want).any(axis=-1))
            assert bad.size == 0, f"{qt.name} {k}: rows {bad.tolist()} differ from ggml"
            checked += 1
        assert checked > 0


@pytest.mark.parametrize("path", TYPE_FILES, ids=lambda p: p.stem)
def test_decode_matches_ggml(path):
    qt = QType[path.stem]
    codec = REGISTRY.get(qt)
    if codec is None or codec.decode is None:
        pytest.skip(f"qformat has no {qt.name} decoder yet")
    with np.load(path) as z:
        pairs = [(k, "dec_" + k[4:]) for k in z.files if k.startswith("enc_") and "dec_" + k[4:] in z.files]
        pairs += [(k, "decw_" + k[5:]) for k in z.files if k.startswith("encw_")]
        if "rand" in z.files:
            pairs.append(("rand", "dec_rand"))
        if not pairs:
            pytest.skip(f"ggml has no {qt.name} decoder to compare against")
        for enc, dec in pairs:
            got = qformat.dequantize(z[enc], qt)
            want = z[dec]
            assert got.shape == want.shape, enc
            diff = _bits(got) != _bits(want)
            assert not diff.any(), f"{qt.name} {enc}: {int(diff.sum())} values differ bitwise from ggml"
