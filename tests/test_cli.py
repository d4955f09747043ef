"""The command line, end to end through subprocesses, on real and generated files; and the type plans."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import qformat
from qformat.convert import sample_path
from qformat.mixes import FTYPE, MIXES, PLAIN_FTYPE, Planner, Target, more_bits, resolve
from qformat.stats import stats_key
from qformat.types import QType

from .conftest import shared_file

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qformat", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=120)


def assert_bad_input(r, *words):
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qformat"), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def leftovers(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".tmp") or ".tmp-" in p)


# --- help, entry points ---------------------------------------------------------------------------

def test_help_for_every_command():
    for cmd in ("encode", "inspect", "decode", "verify", "demo"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage: qformat " + cmd in r.stdout
    assert "examples" in run("encode", "--help").stdout
    assert_bad_input(run("frobnicate"))
    assert run().returncode == 2


def test_console_script_is_installed():
    exe = shutil.which("qformat")
    if exe is None:
        pytest.skip("the qformat console script is not on PATH (package not installed)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"qformat {qformat.__version__}"


# --- demo and the bundled sample -------------------------------------------------------------------

def test_demo(tmp_path):
    r = run("demo", "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert "PASS: 4/4 tensors pass" in r.stdout
    assert "fallback: encoder.layer.0.intermediate.dense.weight: Q4_K -> Q5_0" in r.stdout
    out = tmp_path / "d" / "minilm-sample-q4k.gguf"
    with qformat.open(out) as f:
        types = {n: t.qtype.name for n, t in f.tensors.items()}
    assert types["encoder.layer.0.output.dense.weight"] == "Q4_K"
    assert types["encoder.layer.0.output.LayerNorm.weight"] == "F32"
    assert set(os.listdir(tmp_path / "d")) == {"minilm-sample-q4k.gguf", "minilm-sample-q4k-decoded.npz"}


def test_sample_is_a_slice_of_the_shared_weights():
    from safetensors.numpy import load_file

    full = load_file(str(shared_file("weights/minilm-l6-layer0.safetensors")))
    sample = load_file(sample_path())
    assert os.path.getsize(sample_path()) < 1 << 20
    assert any(v.ndim == 1 for v in sample.values())
    assert any(v.ndim == 2 and v.shape[1] % 256 for v in sample.values())
    for k, v in sample.items():
        assert np.array_equal(v, full[k][: v.shape[0]]), k


# --- encode ---------------------------------------------------------------------------------------

def test_encode_real_weights_accepted_by_ggml_and_verified(tmp_path, ggml_ref):
    src = shared_file("weights/minilm-l6-layer0.safetensors")
    out = tmp_path / "minilm-q4k.gguf"
    r = run("encode", src, "-o", out, "--type", "Q4_K")
    assert r.returncode == 0, r.stderr
    # rows of 384 cannot hold 256-value blocks: each such matrix is reported as a fallback
    assert r.stderr.count("Q4_K -> Q5_0: row of 384") == 5
    assert r.stderr.count("\n") == 5  # the notes only: no progress bar when stderr is not a terminal
    ref = ggml_ref.read_gguf(str(out))
    assert ref is not None, "ggml's C reader rejected the file"
    with qformat.open(out) as f:
        assert {n: (int(t.qtype), t.offset - f.data_offset, t.nbytes) for n, t in f.tensors.items()} == ref["tensors"]
        assert ref["kv"]["general.file_type"][1] == 15 and ref["kv"]["general.quantization_version"][1] == 2
        assert len(f.tensors) == 16
        for name, t in f.tensors.items():  # our decode equals ggml's decode of the same bytes
            rows = f.raw(name).reshape(-1, t.nbytes // (t.shape[0] if len(t.shape) == 2 else 1))
            assert np.array_equal(f.read(name).reshape(rows.shape[0], -1), ggml_ref.dequantize(rows, t.qtype)), name
    r = run("verify", out, "--against", src)
    assert r.returncode == 0 and "PASS: 16/16" in r.stdout, r.stdout + r.stderr


def _model(tmp_path, n_layer=8, ncols=512):
    rng = np.random.default_rng(11)
    t = {}
    for i in range(n_layer):
        for k in ("attn_q", "attn_v", "ffn_down"):
            t[f"blk.{i}.{k}.weight"] = rng.standard_normal((32, ncols)).astype(np.float32)
        t[f"blk.{i}.attn_norm.weight"] = rng.standard_normal(ncols).astype(np.float32)
    t["token_embd.weight"] = rng.standard_normal((40, ncols)).astype(np.float32)
    t["output.weight"] = rng.standard_normal((40, ncols)).astype(np.float32)
    p = tmp_path / "model.npz"
    np.savez(p, **t)
    return p, t


def test_encode_mix_q4_k_m_follows_llama_quantize(tmp_path):
    src, _ = _model(tmp_path)
    out = tmp_path / "m.gguf"
    r = run("encode", src, "-o", out, "--type", "Q4_K_M", "--rule", r"blk\.1\.attn_q=Q8_0", "-q")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    with qformat.open(out) as f:
        ty = {n: t.qtype.name for n, t in f.tensors.items()}
        assert int(f.metadata["general.file_type"]) == 15
    # llama.cpp's use_more_bits(i, 8) holds for layers 0, 3, 6, 7 (i < 1, i >= 7, (i - 1) % 3 == 2)
    assert [i for i in range(8) if ty[f"blk.{i}.attn_v.weight"] == "Q6_K"] == [0, 3, 6, 7]
    assert [i for i in range(8) if ty[f"blk.{i}.ffn_down.weight"] == "Q6_K"] == [0, 3, 6, 7]
    assert {ty[f"blk.{i}.attn_v.weight"] for i in (1, 2, 4, 5)} == {"Q4_K"}
    assert ty["output.weight"] == "Q6_K" and ty["token_embd.weight"] == "Q4_K"
    assert ty["blk.1.attn_q.weight"] == "Q8_0" and ty["blk.2.attn_q.weight"] == "Q4_K"
    assert {ty[f"blk.{i}.attn_norm.weight"] for i in range(8)} == {"F32"}


def test_encode_rejects_bad_type_and_rule(tmp_path):
    src, _ = _model(tmp_path, n_layer=1)
    assert_bad_input(run("encode", src, "-o", tmp_path / "a.gguf", "--type", "Q9_X"), "Q9_X")
    assert_bad_input(run("encode", src, "-o", tmp_path / "a.gguf", "--rule", "(=Q4_K"), "regular expression")
    assert not (tmp_path / "a.gguf").exists()


def _safetensors(tmp_path, name="w.safetensors"):
    from safetensors.numpy import save_file

    p = tmp_path / name
    save_file({"a.weight": np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)}, str(p))
    return p


@pytest.mark.parametrize("case", ["missing", "extension", "truncated", "corrupt-header", "empty", "fails-midway"])
def test_encode_bad_sources(tmp_path, case):
    good = _safetensors(tmp_path)
    data = good.read_bytes()
    src = {
        "missing": tmp_path / "nope.safetensors",
        "extension": tmp_path / "w.bin",
        "truncated": tmp_path / "t.safetensors",
        "corrupt-header": tmp_path / "c.safetensors",
        "empty": tmp_path / "e.safetensors",
        "fails-midway": tmp_path / "m.safetensors",
    }[case]
    if case == "extension":
        src.write_bytes(data)
    elif case == "truncated":
        src.write_bytes(data[:-100])
    elif case == "corrupt-header":
        src.write_bytes(data[:8] + b"#" + data[9:])
    elif case == "empty":
        src.write_bytes(b"")
    elif case == "fails-midway":  # the first tensor is encoded and written before the second fails
        from safetensors.numpy import save_file
        save_file({"a.weight": np.ones((8, 256), np.float32), "z": np.ones(4, np.uint16)}, str(src))
    out = tmp_path / "out.gguf"
    r = run("encode", src, "-o", out)
    assert_bad_input(r, str(src))
    assert not out.exists() and leftovers(tmp_path) == []


def test_encode_output_rules(tmp_path):
    src = _safetensors(tmp_path)
    out = tmp_path / "o.gguf"
    assert run("encode", src, "-o", out, "-q").returncode == 0
    before = out.read_bytes()
    assert_bad_input(run("encode", src, "-o", out), "exists")
    assert out.read_bytes() == before
    assert run("encode", src, "-o", out, "--force", "--type", "Q8_0", "-q").returncode == 0
    assert out.read_bytes() != before
    # a GGUF source must not be overwritten by its own output, even with --force or via a symlink
    os.symlink(out, tmp_path / "link.gguf")
    assert_bad_input(run("encode", out, "-o", tmp_path / "link.gguf", "--force"), "source")
    assert_bad_input(run("encode", out, "-o", out, "--force"), "source")
    assert_bad_input(run("encode", src, "-o", tmp_path / "x.bin"), ".gguf")
    assert leftovers(tmp_path) == []


def test_encode_gguf_source_keep_metadata(tmp_path):
    x = np.random.default_rng(4).standard_normal((16, 256)).astype(np.float32)
    src = tmp_path / "f16.gguf"
    qformat.write(src, {"blk.0.ffn_down.weight": x.astype(np.float16), "norm": x[0],
                        "ids": np.arange(5, dtype=np.int32)},
                  {"general.architecture": "llama", "llama.block_count": np.uint32(1),
                   "tokenizer.ggml.tokens": ["a", "b"], "general.file_type": np.uint32(1), "split.count": 1,
                   "qformat.stats.fields": ["stale"]})
    out = tmp_path / "q.gguf"
    r = run("encode", src, "-o", out, "--type", "Q5_K_M", "--keep-metadata", "-q")
    assert r.returncode == 0, r.stderr
    with qformat.open(src) as a, qformat.open(out) as b:
        ta, tb = a.typed_metadata(), b.typed_metadata()
        for k in ("general.architecture", "llama.block_count", "tokenizer.ggml.tokens"):
            assert tb[k] == ta[k] or (tb[k].type == ta[k].type and list(tb[k].value) == list(ta[k].value)), k
        assert "split.count" not in tb and int(b.metadata["general.file_type"]) == 17
        assert list(b.metadata["qformat.stats.fields"])[0] == "mse"
        assert {n: t.qtype.name for n, t in b.tensors.items()} == {
            "blk.0.ffn_down.weight": "Q6_K", "norm": "F32", "ids": "I32"}  # layer 0 of 1: more bits
        assert np.array_equal(b.read("ids"), a.read("ids"))
    assert_bad_input(run("encode", _safetensors(tmp_path), "-o", tmp_path / "k.gguf", "--keep-metadata"),
                     "--keep-metadata")


# --- inspect --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-bert-bge.gguf"])
def test_inspect_real_files_json_matches_ggml(name, ggml_ref):
    p = shared_file("gguf/" + name)
    r = run("inspect", p, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    ref = ggml_ref.read_gguf(str(p))
    assert (d["version"], d["alignment"], d["data_offset"]) == (ref["version"], ref["alignment"], ref["data_offset"])
    assert [m["key"] for m in d["metadata"]] == list(ref["kv"])
    for m in d["metadata"]:
        t, val, at = ref["kv"][m["key"]]
        assert m["type"] == qformat.ValueType(t).name
        if at is not None:
            assert m["elem_type"] == qformat.ValueType(at).name and m["count"] == len(val)
            assert m["truncated"] == (len(val) > 16) and len(m["value"]) == min(16, len(val))
            if at == 8:
                assert m["value"] == val[:16]
    text = run("inspect", p)
    assert text.returncode == 0 and "truncated" in text.stdout and f"GGUF v{ref['version']}" in text.stdout


def test_inspect_full_and_undecodable_types(tmp_path, ggml_ref):
    x = np.random.default_rng(5).standard_normal((4, 256)).astype(np.float32)
    p = tmp_path / "q2k.gguf"
    with qformat.Writer(p, {"long": np.arange(100, dtype=np.uint16)}) as w:
        w.add_raw("q2k", ggml_ref.quantize(x, "Q2_K").reshape(-1), "Q2_K", x.shape)
        w.add_tensor("f", x)
    d = json.loads(run("inspect", p, "--json", "--full").stdout)
    assert d["metadata"][0]["value"] == list(range(100)) and not d["metadata"][0]["truncated"]
    t = {t["name"]: t for t in d["tensors"]}
    assert t["q2k"]["type"] == "Q2_K" and t["q2k"]["shape"] == [4, 256]
    assert t["q2k"]["bits_per_weight"] == 8 * 84 / 256 and t["f"]["bits_per_weight"] == 32
    assert d["totals"]["nbytes"] == 4 * 84 + 4 * 256 * 4
    if not qformat.can_decode("Q2_K"):
        assert_bad_input(run("decode", p, "-o", tmp_path / "o.npz"), "Q2_K")
        assert not (tmp_path / "o.npz").exists()
        r = run("verify", p)
        assert r.returncode == 0 and "SKIP" in r.stdout


def test_inspect_big_endian_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    p = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(str(p), arch="test", endianess=gguf.GGUFEndian.BIG)
    w.add_tensor("t", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run("inspect", p, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["byteorder"] == "big" and d["tensors"][0]["shape"] == [2, 32]
    assert {m["key"]: m["value"] for m in d["metadata"]}["general.architecture"] == "test"


@pytest.mark.parametrize("content", [b"", b"GGUF", b"GGML" + bytes(20), b"GGUF\x03\x00\x00\x00" + b"\xff" * 16])
def test_inspect_bad_files(tmp_path, content):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    assert_bad_input(run("inspect", p), str(p))


# --- decode ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def q_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("dec")
    rng = np.random.default_rng(9)
    src = {"w": rng.standard_normal((6, 256)).astype(np.float32), "n": rng.standard_normal(32).astype(np.float32)}
    np.savez(d / "s.npz", **src)
    assert run("encode", d / "s.npz", "-o", d / "q.gguf", "-q").returncode == 0
    return d, d / "q.gguf", src


def test_decode_formats(q_file, tmp_path):
    from safetensors.numpy import load_file

    d, q, src = q_file
    with qformat.open(q) as f:
        want = {n: f.read(n) for n in f.tensors}
    assert run("decode", q, "-o", tmp_path / "a.npz", "-q").returncode == 0
    with np.load(tmp_path / "a.npz") as z:
        assert set(z.files) == set(want) and all(np.array_equal(z[n], want[n]) for n in want)
    assert run("decode", q, "-o", tmp_path / "a.safetensors", "--dtype", "float16", "-q").returncode == 0
    st = load_file(str(tmp_path / "a.safetensors"))
    assert all(st[n].dtype == np.float16 and np.array_equal(st[n], want[n].astype(np.float16)) for n in want)
    assert run("decode", q, "-o", tmp_path / "w.npy", "--tensor", "w", "-q").returncode == 0
    assert np.array_equal(np.load(tmp_path / "w.npy"), want["w"])


def test_decode_bad_requests(q_file, tmp_path):
    d, q, src = q_file
    assert_bad_input(run("decode", q, "-o", tmp_path / "all.npy"), "one tensor")
    assert_bad_input(run("decode", q, "-o", tmp_path / "x.txt"), ".txt")
    assert_bad_input(run("decode", q, "-o", tmp_path / "x.npz", "--tensor", "nope"), "nope")
    assert_bad_input(run("decode", tmp_path / "missing.gguf", "-o", tmp_path / "x.npz"), "missing.gguf")
    (tmp_path / "trunc.gguf").write_bytes(q.read_bytes()[:-40])
    assert_bad_input(run("decode", tmp_path / "trunc.gguf", "-o", tmp_path / "x.npz"), "trunc.gguf")
    assert sorted(os.listdir(tmp_path)) == ["trunc.gguf"]


# --- verify ---------------------------------------------------------------------------------------

def test_verify_exit_codes(q_file, tmp_path):
    d, q, src = q_file
    r = run("verify", q, "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["ok"] and {t["name"] for t in rep["tensors"]} == {"w", "n"}
    assert run("verify", q, "--against", d / "s.npz").returncode == 0
    assert run("verify", q, "--against", d / "s.npz", "--max-nmse", "1e-9").returncode == 1
    bad = tmp_path / "bad.gguf"
    shutil.copy(q, bad)
    with qformat.open(bad) as f:
        off = f.tensors["w"].offset
    with open(bad, "r+b") as fh:  # scale the first block's super-scale (an f16 at the block start)
        fh.seek(off + 1)
        fh.write(b"\x48")
    r = run("verify", bad, "--against", d / "s.npz")
    assert r.returncode == 1 and "FAIL" in r.stdout
    assert run("verify", bad).returncode == 1
    (tmp_path / "t.gguf").write_bytes(q.read_bytes()[:100])
    assert_bad_input(run("verify", tmp_path / "t.gguf"), "t.gguf")
    assert_bad_input(run("verify", q, "--against", tmp_path / "none.npz"), "none.npz")


# --- the type plans (library) ---------------------------------------------------------------------

def test_ftype_values_match_gguf_py():
    gguf = pytest.importorskip("gguf")
    for name, value in FTYPE.items():
        assert gguf.LlamaFileType[name].value == value, name


def test_targets_and_fallbacks():
    assert Target.parse("q4_k_m").ftype == 15 and Target.parse("Q4_K").ftype == FTYPE["MOSTLY_Q4_K_M"]
    assert Target.parse("F16").ftype == 1 and Target.parse("F64").ftype is None
    assert set(MIXES) == {"Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0"}
    assert resolve(QType.Q4_K, 384)[0] == QType.Q5_0
    assert resolve(QType.Q6_K, 384)[0] == QType.Q8_0
    assert resolve(QType.Q4_K, 48)[0] == QType.F16  # 48 is not a multiple of Q5_0's 32 either
    assert resolve(QType.Q4_K, 512) == (QType.Q4_K, QType.Q4_K, [])
    assert [more_bits(i, 8) for i in range(8)] == [True, False, False, True, False, False, True, True]
    for qt, name in PLAIN_FTYPE.items():
        assert name in FTYPE, qt


def test_unencodable_types_fall_back_upward(monkeypatch):
    from qformat import mixes

    monkeypatch.setattr(mixes, "can_encode", lambda t: t in (QType.Q8_0, QType.F16, QType.F32))
    t, wanted, steps = resolve(QType.Q4_K, 512)
    assert (t, wanted) == (QType.Q8_0, QType.Q4_K) and len(steps) == 2 and "cannot encode" in steps[0]
    plan = Planner(Target.parse("Q4_K_S"), [("blk.0.attn_v.weight", (8, 512), "float")])
    c = plan.choose("blk.0.attn_v.weight", (8, 512))
    assert c.wanted == QType.Q5_K and c.qtype == QType.Q8_0


def _plan(target, names_shapes):
    listing = [(n, s, "float") for n, s in names_shapes]
    return {c.name: c.qtype.name for c in Planner(Target.parse(target), listing).choose_all(listing)}


def _layers(n, ncols=512):
    return [(f"blk.{i}.{k}.weight", (8, ncols)) for i in range(n)
            for k in ("attn_q", "attn_v", "attn_output", "ffn_down", "ffn_up")]


def test_mix_rules_follow_llama_quantize():
    # expectations read off llama.cpp's llama_tensor_get_type for these mixes (no Falcon/70B/MoE cases)
    p = _plan("Q4_K_S", _layers(8) + [("output.weight", (8, 512))])
    assert [i for i in range(8) if p[f"blk.{i}.attn_v.weight"] == "Q5_K"] == [0, 1, 2, 3]
    assert [i for i in range(8) if p[f"blk.{i}.ffn_down.weight"] == "Q5_K"] == [0]  # i < n/8
    assert p["output.weight"] == "Q6_K" and p["blk.5.ffn_up.weight"] == "Q4_K"
    p = _plan("Q3_K_M", _layers(16))
    assert [i for i in range(16) if p[f"blk.{i}.attn_v.weight"] == "Q5_K"] == [0, 1]
    assert {p[f"blk.{i}.attn_v.weight"] for i in range(2, 16)} == {"Q4_K"}
    assert [i for i in range(16) if p[f"blk.{i}.ffn_down.weight"] == "Q5_K"] == [0]  # i < n/16
    assert {p[f"blk.{i}.ffn_down.weight"] for i in range(1, 16)} == {"Q4_K"}
    assert {p[f"blk.{i}.attn_output.weight"] for i in range(16)} == {"Q4_K"}
    assert {p[f"blk.{i}.attn_q.weight"] for i in range(16)} == {"Q3_K"}
    p = _plan("Q5_K_S", _layers(4) + [("output.weight", (8, 512))])
    assert set(p.values()) == {"Q5_K", "Q6_K"} and p["output.weight"] == "Q6_K"
    assert set(_plan("Q6_K", _layers(4)).values()) == {"Q6_K"}
    p = _plan("Q8_0", _layers(2) + [("output.weight", (8, 512))])
    assert set(p.values()) == {"Q8_0"}
    # tied embeddings: without output.weight, token_embd is treated as the output tensor
    assert _plan("Q4_K_M", [("token_embd.weight", (8, 512))])["token_embd.weight"] == "Q6_K"
    assert _plan("Q4_K_M", [("token_embd.weight", (8, 512)), ("output.weight", (8, 512))])["token_embd.weight"] == "Q4_K"
    # an output whose rows do not fit 256-value blocks becomes Q8_0
    assert _plan("Q4_K_M", [("output.weight", (8, 384))])["output.weight"] == "Q8_0"
    # kept in F32 whatever the target: 1-D, norms, MoE gates, position embeddings
    p = _plan("Q4_K", [("blk.0.attn_norm.weight", (8, 512)), ("blk.0.ffn_gate_inp.weight", (8, 512)),
                       ("position_embd.weight", (8, 512)), ("bias", (512,))])
    assert set(p.values()) == {"F32"}


def test_float32_metadata_prints_shortest():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from qformat.convert import _json_scalar

    @settings(max_examples=300, deadline=None)
    @given(st.floats(width=32, allow_nan=False, allow_infinity=False))
    def check(f):
        v = np.float32(f)
        out = _json_scalar(v)
        assert isinstance(out, float) and np.float32(out) == v and len(repr(out)) <= len(repr(float(v)))
    check()


def test_progress_bar_only_on_a_terminal(tmp_path):
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios
    import threading

    src = _safetensors(tmp_path)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a fresh pty is 0x0
    chunks: list = []

    def drain():  # read while the child runs: a pty's buffer is small
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:
                return
            if not b:
                return
            chunks.append(b)
    t = threading.Thread(target=drain)
    t.start()
    try:
        r = subprocess.run([sys.executable, "-m", "qformat", "encode", str(src), "-o", str(tmp_path / "p.gguf")],
                           stdout=subprocess.PIPE, stderr=slave, env=ENV, timeout=120)
    finally:
        os.close(slave)
        t.join(10)
        os.close(master)
    assert r.returncode == 0
    assert b"0/1 [" in b"".join(chunks) and b"tensor/s" in b"".join(chunks)  # tqdm's bar, on the terminal
    q = run("encode", src, "-o", tmp_path / "p2.gguf")
    assert q.returncode == 0 and q.stderr == ""  # not a terminal: no bar
    quiet = subprocess.run([sys.executable, "-m", "qformat", "encode", str(src), "-o", str(tmp_path / "p3.gguf"), "-q"],
                           capture_output=True, env=ENV, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout == b"" and quiet.stderr == b""


def test_reader_going_away_is_not_an_error():
    """`qformat inspect --json --full | head`: exit 141 (as a SIGPIPE'd C tool), nothing on stderr."""
    src = shared_file("gguf/ggml-vocab-gpt-2.gguf")  # its --full JSON is megabytes: more than a pipe holds
    p = subprocess.Popen([sys.executable, "-m", "qformat", "inspect", str(src), "--json", "--full"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert p.stdout.read(100).startswith(b"{")
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and err == b"", err
