"""``qformat encode --imatrix FILE --mode ggml|best`` end to end (subprocesses) and ``encode_file``'s
imatrix/mode rules: bytes equal the library's (and ggml's) weighted encoder, per-expert vectors,
missing entries reported, best mode lowers the recorded error, bad imatrix files refused cleanly."""
from __future__ import annotations

import os

import numpy as np
import pytest

import qformat
from qformat import imatrix
from qformat.convert import encode_file, sample_path
from qformat.errors import ImatrixMismatch, QFormatError
from qformat.sources import open_source
from qformat.stats import recorded_stats

from .conftest import ROOT, load_tool, shared_file
from .test_cli import assert_bad_input, leftovers, run

COMMITTED = ROOT / "tests" / "data" / "imatrix"
#: the sample's tensors: two fall back Q4_K -> Q5_0 (rows of 384), one is Q4_K, one stays F32
Q4K_TENSOR = "encoder.layer.0.output.dense.weight"
Q50_TENSOR = "encoder.layer.0.attention.self.query.weight"


def _imatrix_for(src, directory, skip=(), seed=5):
    """An imatrix for the 2-D tensors of ``src`` (their real names), in both llama.cpp formats,
    written by tools/gen_imatrix.py's writers from activations drawn like its recipe draws them
    (the committed files name llama.cpp tensors, ``blk.0.*``, which the safetensors sources lack)."""
    gen = load_tool("gen_imatrix")
    rng = np.random.default_rng(seed)
    stats = {}
    with open_source(src) as s:
        for name, t in s:
            if len(t.shape) != 2 or name in skip:
                continue
            n_cols = t.shape[-1]
            scale = np.exp(rng.normal(0.0, 0.75, n_cols)).astype(np.float32)
            act = (rng.standard_normal((gen.CHUNK_SIZE, n_cols)).astype(np.float32) * scale).astype(np.float32)
            stats[name] = ((act * act).sum(axis=0, dtype=np.float32)[None], act.sum(axis=0, dtype=np.float32)[None],
                           np.array([gen.CHUNK_SIZE], np.float32))
    os.makedirs(directory, exist_ok=True)
    paths = {"gguf": directory / "im.gguf", "dat": directory / "im.dat"}
    gen.write_gguf(paths["gguf"], stats)
    gen.write_dat(paths["dat"], stats)
    return paths


@pytest.fixture(scope="module")
def sample_imatrix(tmp_path_factory):
    return _imatrix_for(sample_path(), tmp_path_factory.mktemp("im"))


def _source_arrays(src):
    with open_source(src) as s:
        return {name: t.load() for name, t in s}


# --- the bundled sample ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_sample_with_imatrix_equals_the_weighted_library_encoder(tmp_path, sample_imatrix, fmt):
    im = sample_imatrix[fmt]
    out = tmp_path / "s.gguf"
    r = run("encode", sample_path(), "-o", out, "--type", "Q4_K", "--imatrix", im)
    assert r.returncode == 0, r.stderr
    assert "imatrix used for 3 tensor(s)" in r.stdout
    assert "no imatrix entry" not in r.stderr  # every 2-D tensor has one; the 1-D F32 one needs none
    weights = imatrix.load(im)
    x = _source_arrays(sample_path())
    with qformat.open(out) as f:
        for name, qt in ((Q4K_TENSOR, "Q4_K"), (Q50_TENSOR, "Q5_0")):
            assert f.tensors[name].qtype.name == qt
            want = qformat.quantize(x[name], qt, imatrix=weights[name])
            np.testing.assert_array_equal(f.raw(name).reshape(want.shape), want)
            # the imatrix changed the bytes (else this test could not tell whether it was used)
            assert not np.array_equal(want, qformat.quantize(x[name], qt))
        meta = f.metadata
        assert meta["quantize.imatrix.file"] == str(im)
        assert meta["quantize.imatrix.dataset"] == load_tool("gen_imatrix").DATASET
        assert int(meta["quantize.imatrix.entries_count"]) == 3
        assert int(meta["quantize.imatrix.chunks_count"]) == load_tool("gen_imatrix").CHUNKS
    r = run("verify", out, "--against", sample_path())
    assert r.returncode == 0 and "PASS: 4/4" in r.stdout, r.stdout + r.stderr


def test_sample_bytes_equal_ggml_weighted_quantize(tmp_path, sample_imatrix, ggml_ref):
    im = sample_imatrix["gguf"]
    out = tmp_path / "s.gguf"
    assert run("encode", sample_path(), "-o", out, "--imatrix", im, "-q").returncode == 0
    weights = imatrix.load(im)
    x = _source_arrays(sample_path())
    with qformat.open(out) as f:
        for name in (Q4K_TENSOR, Q50_TENSOR, "encoder.layer.0.intermediate.dense.weight"):
            t = f.tensors[name]
            ref = ggml_ref.quantize(x[name], t.qtype, imatrix=weights[name])
            np.testing.assert_array_equal(f.raw(name).reshape(ref.shape), ref)


def test_missing_entries_are_reported_and_encoded_unweighted(tmp_path):
    im = _imatrix_for(sample_path(), tmp_path / "im", skip=(Q4K_TENSOR,))["gguf"]
    out = tmp_path / "s.gguf"
    r = run("encode", sample_path(), "-o", out, "--imatrix", im)
    assert r.returncode == 0, r.stderr
    assert f"note: {Q4K_TENSOR}: no imatrix entry; Q4_K encoded without importance weights" in r.stderr
    assert r.stderr.count("no imatrix entry") == 1 and "imatrix used for 2 tensor(s)" in r.stdout
    x = _source_arrays(sample_path())[Q4K_TENSOR]
    with qformat.open(out) as f:
        np.testing.assert_array_equal(f.raw(Q4K_TENSOR).reshape(x.shape[0], -1), qformat.quantize(x, "Q4_K"))
    # a type whose encoder takes no weights ignores the imatrix without a note
    r = run("encode", sample_path(), "-o", tmp_path / "q8.gguf", "--type", "Q8_0", "--imatrix", im)
    assert r.returncode == 0 and r.stderr == "" and "imatrix used for 0 tensor(s)" in r.stdout, r.stderr


def test_real_weights_with_imatrix(tmp_path):
    src = shared_file("weights/minilm-l6-layer0.safetensors")
    im = _imatrix_for(src, tmp_path / "im")["dat"]
    out = tmp_path / "m.gguf"
    r = run("encode", src, "-o", out, "--type", "Q4_K", "--imatrix", im)
    assert r.returncode == 0, r.stderr
    assert "imatrix used for 6 tensor(s)" in r.stdout and "no imatrix entry" not in r.stderr
    weights = imatrix.load(im)
    x = _source_arrays(src)
    with qformat.open(out) as f:
        for name, t in f.tensors.items():
            if t.qtype.name in ("Q4_K", "Q5_0"):
                want = qformat.quantize(x[name], t.qtype, imatrix=weights[name])
                np.testing.assert_array_equal(f.raw(name).reshape(want.shape), want, err_msg=name)
    r = run("verify", out, "--against", src)
    assert r.returncode == 0 and "PASS: 16/16" in r.stdout, r.stdout + r.stderr


# --- the committed imatrix files: llama.cpp names and a per-expert entry -------------------------------

@pytest.mark.parametrize("fmt", ["imatrix.gguf", "imatrix.dat"])
def test_committed_files_with_a_3d_expert_tensor(tmp_path, fmt, ggml_ref):
    rng = np.random.default_rng(3)
    tensors = {"blk.0.attn_q.weight": rng.standard_normal((8, 256)).astype(np.float32),
               "blk.0.ffn_down.weight": rng.standard_normal((4, 512)).astype(np.float32),
               "blk.0.ffn_up_exps.weight": rng.standard_normal((2, 6, 256)).astype(np.float32),
               "blk.0.attn_k.weight": rng.standard_normal((4, 256)).astype(np.float32)}
    src = tmp_path / "m.npz"
    np.savez(src, **tensors)
    out = tmp_path / "m.gguf"
    r = run("encode", src, "-o", out, "--type", "Q4_K", "--imatrix", COMMITTED / fmt)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "note: blk.0.attn_k.weight: no imatrix entry; Q4_K encoded without importance weights"
    weights = imatrix.load(COMMITTED / fmt)
    with qformat.open(out) as f:
        experts = f.raw("blk.0.ffn_up_exps.weight").reshape(2, 6, -1)
        w = weights["blk.0.ffn_up_exps.weight"].reshape(2, 256)
        for k in range(2):  # expert k encoded with its own vector, as llama-quantize does
            np.testing.assert_array_equal(experts[k], ggml_ref.quantize(tensors["blk.0.ffn_up_exps.weight"][k],
                                                                        "Q4_K", imatrix=w[k]))
        for name in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight"):
            np.testing.assert_array_equal(f.raw(name).reshape(tensors[name].shape[0], -1),
                                          ggml_ref.quantize(tensors[name], "Q4_K", imatrix=weights[name]))
    assert run("verify", out, "--against", src).returncode == 0


def test_library_mapping_and_expert_count_mismatch(tmp_path):
    x = np.random.default_rng(4).standard_normal((3, 4, 256)).astype(np.float32)
    src = tmp_path / "e.npz"
    np.savez(src, **{"blk.0.ffn_gate_exps.weight": x})
    w = np.random.default_rng(5).uniform(0.1, 4.0, (3, 256)).astype(np.float32)
    res = encode_file(src, tmp_path / "e.gguf", "Q6_K", imatrix={"blk.0.ffn_gate_exps.weight": w.reshape(-1)})
    assert res.n_weighted == 1 and res.imatrix_missing == []
    with qformat.open(tmp_path / "e.gguf") as f:
        np.testing.assert_array_equal(f.raw("blk.0.ffn_gate_exps.weight").reshape(3, 4, -1),
                                      qformat.quantize(x, "Q6_K", imatrix=w))
        assert not any(k.startswith("quantize.imatrix.") for k in f.metadata)  # no file: nothing to name
    # two experts' vectors for a three-expert tensor: refused before anything is written
    with pytest.raises(ImatrixMismatch, match="fits 2 matrices; this tensor has 3"):
        encode_file(src, tmp_path / "bad.gguf", "Q6_K", imatrix={"blk.0.ffn_gate_exps.weight": w[:2].reshape(-1)})
    assert not (tmp_path / "bad.gguf").exists() and leftovers(tmp_path) == []
    with pytest.raises(QFormatError, match="mapping"):
        encode_file(src, tmp_path / "bad.gguf", "Q6_K", imatrix=[1.0, 2.0])
    with pytest.raises(QFormatError, match="mode must be one of"):
        encode_file(src, tmp_path / "bad.gguf", "Q6_K", mode="fast")


def test_token_embd_mismatch_is_skipped_like_llama_quantize(tmp_path):
    rng = np.random.default_rng(6)
    src = tmp_path / "t.npz"
    np.savez(src, **{"token_embd.weight": rng.standard_normal((8, 256)).astype(np.float32),
                     "blk.0.attn_q.weight": rng.standard_normal((8, 256)).astype(np.float32)})
    bad = {"token_embd.weight": np.ones(512, np.float32), "blk.0.attn_q.weight": np.ones(256, np.float32)}
    res = encode_file(src, tmp_path / "t.gguf", "Q4_K", imatrix=bad)
    t = {e.name: e for e in res.tensors}
    assert not t["token_embd.weight"].weighted and "imatrix entry skipped" in t["token_embd.weight"].notes[0]
    assert t["blk.0.attn_q.weight"].weighted
    bad["blk.0.attn_q.weight"] = np.ones(512, np.float32)
    with pytest.raises(ImatrixMismatch, match="blk.0.attn_q.weight"):
        encode_file(src, tmp_path / "t2.gguf", "Q4_K", imatrix=bad)


# --- --mode best ------------------------------------------------------------------------------------

def _recorded(path):
    with qformat.open(path) as f:
        types = {n: t.qtype.name for n, t in f.tensors.items()}
        return types, recorded_stats(f.metadata)


@pytest.mark.parametrize("target", ["Q4_K", "Q4_1"])
def test_mode_best_lowers_the_recorded_error(tmp_path, target):
    src = shared_file("weights/minilm-l6-layer0.safetensors")
    outs = {}
    for mode in ("ggml", "best"):
        outs[mode] = tmp_path / f"{mode}.gguf"
        r = run("encode", src, "-o", outs[mode], "--type", target, "--mode", mode)
        assert r.returncode == 0, r.stderr
        assert run("verify", outs[mode], "--against", src).returncode == 0  # recorded stats stay verifiable
    notes = r.stderr  # the best run's
    types, ggml_stats = _recorded(outs["ggml"])
    _, best_stats = _recorded(outs["best"])
    improved = 0
    for name, qt in types.items():
        if qt == target:
            assert best_stats[name]["mse"] < ggml_stats[name]["mse"], name
            improved += 1
        elif qt == "Q5_0":  # the fallback type has no search: ggml's bytes, and a note says so
            assert best_stats[name] == ggml_stats[name]
            assert f"note: {name}: Q5_0 has no 'best' mode; encoded in 'ggml' mode" in notes
        else:
            assert qt == "F32" and best_stats[name] == ggml_stats[name]
    assert improved == (1 if target == "Q4_K" else 6)
    assert "F32 has no" not in notes  # plain float types get no note


def test_mode_best_with_imatrix_lowers_the_weighted_error(tmp_path, sample_imatrix):
    im = sample_imatrix["gguf"]
    w = imatrix.load(im)[Q4K_TENSOR]
    x = _source_arrays(sample_path())[Q4K_TENSOR]
    err = {}
    for mode in ("ggml", "best"):
        out = tmp_path / f"{mode}.gguf"
        assert run("encode", sample_path(), "-o", out, "--imatrix", im, "--mode", mode, "-q").returncode == 0
        with qformat.open(out) as f:
            err[mode] = float((w * (f.read(Q4K_TENSOR) - x).astype(np.float64) ** 2).sum())
            if mode == "best":
                np.testing.assert_array_equal(f.raw(Q4K_TENSOR).reshape(x.shape[0], -1),
                                              qformat.quantize(x, "Q4_K", imatrix=w, mode="best"))
    assert err["best"] < err["ggml"]


# --- bad imatrix files: exit 2, one line, nothing written ---------------------------------------------

def _bad_imatrix(tmp_path, case):
    good = (COMMITTED / "imatrix.dat").read_bytes()
    if case == "missing":
        return tmp_path / "nope.dat", "nope.dat"
    p = tmp_path / f"{case}.dat"
    if case == "truncated":
        p.write_bytes(good[:100])
        return p, "imatrix-truncated"
    if case == "garbage":
        p.write_bytes(b"\xff\xff\xff\x7f" + bytes(12))
        return p, "imatrix"
    if case == "gguf-truncated":  # structure errors come from the strict GGUF reader
        p = tmp_path / "cut.gguf"
        p.write_bytes((COMMITTED / "imatrix.gguf").read_bytes()[:300])
        return p, "cut.gguf"
    if case == "gguf-not-imatrix":
        p = tmp_path / "model.gguf"
        qformat.write(p, {"w": np.ones(4, np.float32)}, {"general.type": "model"})
        return p, "imatrix.datasets"
    if case == "wrong-length":  # a valid file whose entry for the sample's Q4_K tensor is too short
        p = tmp_path / "short.gguf"
        gen = load_tool("gen_imatrix")
        gen.write_gguf(p, {Q4K_TENSOR: (np.ones((1, 512), np.float32), np.ones((1, 512), np.float32),
                                        np.array([1.0], np.float32))})
        return p, "imatrix-mismatch"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "truncated", "garbage", "gguf-truncated", "gguf-not-imatrix",
                                  "wrong-length"])
def test_bad_imatrix_is_refused_cleanly(tmp_path, case):
    im, word = _bad_imatrix(tmp_path, case)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run("encode", sample_path(), "-o", out_dir / "x.gguf", "--imatrix", im)
    assert_bad_input(r, word)
    assert os.listdir(out_dir) == [] and r.stdout == ""


def test_bad_mode_is_a_usage_error(tmp_path):
    r = run("encode", sample_path(), "-o", tmp_path / "x.gguf", "--mode", "fast")
    assert_bad_input(r, "--mode")
    assert not (tmp_path / "x.gguf").exists()


def test_keep_metadata_drops_a_sources_stale_imatrix_keys(tmp_path, sample_imatrix):
    first = tmp_path / "first.gguf"
    assert run("encode", sample_path(), "-o", first, "--imatrix", sample_imatrix["gguf"], "-q").returncode == 0
    again = tmp_path / "again.gguf"
    r = run("encode", first, "-o", again, "--keep-metadata", "-q")
    assert r.returncode == 0, r.stderr
    with qformat.open(first) as f:
        assert "quantize.imatrix.file" in f.metadata
    with qformat.open(again) as f:
        assert not any(k.startswith("quantize.imatrix.") for k in f.metadata)
