"""Encode mode "best" (qformat.search.best): valid ggml blocks, never worse than ggml per super-block."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qformat
from qformat.codecs.bits import read_fp16
from qformat.search import best
from qformat.types import BLOCK, QType

from .conftest import shared_file

QTS = ["Q4_K", "Q5_K", "Q4_1", "Q5_1", "Q6_K", "Q2_K", "Q3_K"]
K_QTS = ["Q4_K", "Q5_K"]
KINDS = ["normal", "laplace", "t3", "uniform", "positive", "negative", "outlier", "const_sub", "zeros",
         "sparse", "mixed_scales"]


def _sample(kind: str, rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "laplace":
        x = rng.laplace(size=n)
    elif kind == "t3":
        x = rng.standard_t(3, size=n)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, n)
    elif kind == "positive":
        x = np.abs(rng.standard_normal(n)) + 0.5
    elif kind == "negative":
        x = -np.abs(rng.standard_normal(n)) - 0.5
    elif kind == "outlier":
        x = rng.standard_normal(n) * 0.01
        x[rng.integers(0, n, max(1, n // 256))] = 50.0
    elif kind == "const_sub":
        x = np.repeat(rng.standard_normal(n // 32), 32)
    elif kind == "zeros":
        x = np.zeros(n)
        x[: n // 2] = -0.0
    elif kind == "sparse":
        x = rng.standard_normal(n) * (rng.random(n) < 0.1)
    else:  # mixed_scales: every sub-block of 32 at its own magnitude
        x = rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-4, 2, n // 32), 32)
    return (x * scale).astype(np.float32)


def _sq_err(x: np.ndarray, y: np.ndarray, w=None, block: int = 256) -> np.ndarray:
    """(Weighted) squared error per block of ``block`` values, float64."""
    r = (y.astype(np.float64) - x.astype(np.float64)).reshape(-1, block)
    if w is not None:
        r = r * np.sqrt(np.broadcast_to(w.astype(np.float64), x.shape).reshape(-1, block))
    return (r * r).sum(axis=1)


def _quiet_quantize(*args, **kw):
    """quantize with every numpy warning turned into an error: none may escape the search."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return qformat.quantize(*args, **kw)


# --- against the C reference ------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(qt=st.sampled_from(QTS), kind=st.sampled_from(KINDS), rows=st.integers(1, 3), nblocks=st.integers(1, 3),
       scale=st.sampled_from([1e-30, 1e-8, 1e-3, 1.0, 30.0, 6e4 / 50]), seed=st.integers(0, 2**32 - 1))
def test_best_decodes_identically_in_ggml_and_never_loses_to_ggml(ggml_ref, qt, kind, rows, nblocks, scale, seed):
    rng = np.random.default_rng(seed)
    x = _sample(kind, rng, rows * nblocks * 256, scale).reshape(rows, nblocks * 256)
    b = _quiet_quantize(x, qt, mode="best")
    ours = qformat.dequantize(b, qt)
    in_ggml = ggml_ref.dequantize(b, qt)
    np.testing.assert_array_equal(ours.view(np.uint32), in_ggml.view(np.uint32))
    ref = ggml_ref.quantize(x, qt)  # ggml's own encoding (quantize_row_<t>_ref)
    elems, nbytes = BLOCK[QType[qt]]
    e_best, e_ggml = _sq_err(x, in_ggml, block=elems), _sq_err(x, ggml_ref.dequantize(ref, qt), block=elems)
    assert (e_best <= e_ggml).all(), np.flatnonzero(e_best > e_ggml)
    at = {"Q6_K": nbytes - 2, "Q3_K": nbytes - 2, "Q2_K": 80}.get(qt, 0)  # where the fp16 super-block d sits
    d = read_fp16(b.reshape(-1, nbytes), at)
    assert np.isfinite(d).all() or not np.isfinite(read_fp16(ref.reshape(-1, nbytes), at)).all()


@settings(max_examples=40, deadline=None)
@given(qt=st.sampled_from(QTS), kind=st.sampled_from(["normal", "laplace", "t3", "outlier", "mixed_scales"]),
       nblocks=st.integers(1, 3), wkind=st.sampled_from(["lognormal", "with_zeros", "ones", "one_hot"]),
       seed=st.integers(0, 2**32 - 1))
def test_weighted_best_never_loses_to_ggml_weighted_path(ggml_ref, qt, kind, nblocks, wkind, seed):
    rng = np.random.default_rng(seed)
    n = nblocks * 256
    x = _sample(kind, rng, 3 * n, 1.0).reshape(3, n)
    w = {"lognormal": np.exp(rng.normal(0, 1.5, n)), "with_zeros": np.exp(rng.normal(0, 1, n)) * (rng.random(n) < 0.7),
         "ones": np.ones(n), "one_hot": np.eye(1, n, int(rng.integers(n)))[0]}[wkind].astype(np.float32)
    b = _quiet_quantize(x, qt, mode="best", imatrix=w)
    y = ggml_ref.dequantize(b, qt)
    np.testing.assert_array_equal(qformat.dequantize(b, qt).view(np.uint32), y.view(np.uint32))
    ref = ggml_ref.quantize(x, qt, imatrix=w)  # ggml's weighted path (quantize_row_<t>_impl)
    elems = BLOCK[QType[qt]].elems
    assert (_sq_err(x, y, w, elems) <= _sq_err(x, ggml_ref.dequantize(ref, qt), w, elems)).all()


@pytest.mark.parametrize("qt", QTS)
@pytest.mark.parametrize("kind", ["normal", "laplace", "t3"])
def test_best_is_strictly_better_on_a_fixed_sample(ggml_ref, qt, kind):
    x = _sample(kind, np.random.default_rng(1234), 64 * 256, 1.0).reshape(16, 1024)
    y = ggml_ref.dequantize(qformat.quantize(x, qt, mode="best"), qt)
    assert _sq_err(x, y).sum() < _sq_err(x, ggml_ref.dequantize(ggml_ref.quantize(x, qt), qt)).sum()
    w = np.exp(np.random.default_rng(5).normal(0, 1, 1024)).astype(np.float32)
    yw = ggml_ref.dequantize(qformat.quantize(x, qt, mode="best", imatrix=w), qt)
    yg = ggml_ref.dequantize(ggml_ref.quantize(x, qt, imatrix=w), qt)
    assert _sq_err(x, yw, w).sum() < _sq_err(x, yg, w).sum()


@pytest.mark.parametrize("qt", QTS)
def test_real_weights_best_per_superblock(ggml_ref, qt):
    from safetensors.numpy import load_file

    tensors = load_file(str(shared_file("weights/minilm-l6-layer0.safetensors")))
    flat = np.concatenate([v.reshape(-1) for v in tensors.values()]).astype(np.float32)
    x = flat[: 1024 * 256].reshape(-1, 256)  # 1024 super-blocks from several tensors
    b = qformat.quantize(x, qt, mode="best")
    y = ggml_ref.dequantize(b, qt)
    np.testing.assert_array_equal(qformat.dequantize(b, qt).view(np.uint32), y.view(np.uint32))
    elems = BLOCK[QType[qt]].elems
    e_best, e_ggml = _sq_err(x, y, block=elems), _sq_err(x, ggml_ref.dequantize(ggml_ref.quantize(x, qt), qt), block=elems)
    assert (e_best <= e_ggml).all()
    assert e_best.sum() < e_ggml.sum()


# --- without the C reference (qformat's "ggml" mode is proven byte-identical to it elsewhere) ----

@pytest.mark.parametrize("qt", QTS)
@pytest.mark.parametrize("kind", KINDS)
def test_best_never_loses_to_ggml_mode(qt, kind):
    x = _sample(kind, np.random.default_rng(99), 8 * 256, 1.0).reshape(2, 1024)
    b = _quiet_quantize(x, qt, mode="best")
    g = qformat.quantize(x, qt)
    assert b.shape == g.shape and b.dtype == np.uint8
    elems = BLOCK[QType[qt]].elems
    e_best, e_ggml = _sq_err(x, qformat.dequantize(b, qt), block=elems), _sq_err(x, qformat.dequantize(g, qt), block=elems)
    assert (e_best <= e_ggml).all()
    # the search result replaces ggml's block only where it is strictly better: ties keep ggml's bytes
    same = e_best == e_ggml
    np.testing.assert_array_equal(b.reshape(same.size, -1)[same], g.reshape(same.size, -1)[same])


@pytest.mark.parametrize("qt", QTS)
@pytest.mark.parametrize("scale", [1e37, 1e-38, 1e-45])
def test_extreme_magnitudes_give_valid_blocks_without_warnings(qt, scale):
    x = _sample("mixed_scales", np.random.default_rng(11), 4 * 256, 1.0) * np.float32(scale / 100)
    x = np.clip(x, -3e38, 3e38).astype(np.float32).reshape(1, -1)
    b = _quiet_quantize(x, qt, mode="best")
    with np.errstate(all="ignore"):
        elems = BLOCK[QType[qt]].elems
        e_best = _sq_err(x, qformat.dequantize(b, qt), block=elems)
        e_ggml = _sq_err(x, qformat.dequantize(qformat.quantize(x, qt), qt), block=elems)
    assert (np.nan_to_num(e_best, nan=np.inf) <= np.nan_to_num(e_ggml, nan=np.inf)).all()


@pytest.mark.parametrize("nmax, qt", [(15, "Q4_K"), (31, "Q5_K")])  # the k-quant search's own fields
def test_search_fields_stay_in_range_and_pack_losslessly(nmax, qt):
    x = _sample("t3", np.random.default_rng(3), 32 * 256, 1.0).reshape(32, 256)
    d, dmin, sc, m, codes, _ = best.search_scale_min(x, nmax)
    assert sc.max() < 64 and m.max() < 64 and codes.max() <= nmax
    assert np.isfinite(d).all() and np.isfinite(dmin).all()
    assert (d.astype(np.float16).astype(np.float32) == d).all()  # exactly representable in fp16
    blocks = best.pack_blocks(qformat.QType[qt], d, dmin, sc, m, codes)
    y = qformat.dequantize(blocks, qt).reshape(32, 8, 32)
    expect = (d[:, None, None] * sc[:, :, None].astype(np.float32)) * codes.reshape(32, 8, 32) \
        - (dmin[:, None, None] * m[:, :, None].astype(np.float32))
    np.testing.assert_array_equal(y, expect.astype(np.float32))


def test_q3_k_search_fields_pack_losslessly():
    x = _sample("normal", np.random.default_rng(9), 16 * 256, 1.0).reshape(16, 256)
    d, sc, levels = best.search_symmetric(x, None, **best._SYM[QType.Q3_K])
    assert levels.max() <= 7 and sc.min() >= -32 and sc.max() <= 31
    from qformat.codecs.kquants_sym import q3_k_pack
    from qformat.codecs.bits import fp32_to_fp16_bits

    y = qformat.dequantize(q3_k_pack(levels, (sc + 32).astype(np.uint8), fp32_to_fp16_bits(d)), "Q3_K")
    expect = (d[:, None, None] * sc[:, :, None].astype(np.float32)) * (levels.reshape(16, 16, 16).astype(np.float32) - 4)
    np.testing.assert_array_equal(y.reshape(16, 16, 16), expect.astype(np.float32))


def test_q2_k_search_fields_stay_in_range():
    x = _sample("laplace", np.random.default_rng(6), 32 * 256, 1.0).reshape(32, 256)
    d, dmin, sc, m, codes, _ = best.search_scale_min(x, 3, groups=16, smax=15)
    assert sc.shape == m.shape == (32, 16) and sc.max() <= 15 and m.max() <= 15 and codes.max() <= 3
    y = qformat.dequantize(best.pack_blocks(QType.Q2_K, d, dmin, sc, m, codes), "Q2_K").reshape(32, 16, 16)
    expect = (d[:, None, None] * sc[:, :, None].astype(np.float32)) * codes.reshape(32, 16, 16) \
        - (dmin[:, None, None] * m[:, :, None].astype(np.float32))
    np.testing.assert_array_equal(y, expect.astype(np.float32))


@pytest.mark.parametrize("qt", ["Q5_1", "Q4_1"])
def test_affine_search_fields_pack_losslessly(qt):
    x = _sample("laplace", np.random.default_rng(4), 64 * 32, 1.0).reshape(64, 32)
    d, m, codes = best.search_affine(x, 31 if qt == "Q5_1" else 15)
    assert codes.max() <= (31 if qt == "Q5_1" else 15)
    assert (d.astype(np.float16).astype(np.float32) == d).all() and (m.astype(np.float16).astype(np.float32) == m).all()
    g = qformat.quantize(x, qt)
    y = qformat.dequantize(best.encode_best_affine(QType[qt], x, None, g), qt)
    assert ((y - x) ** 2).sum() < ((qformat.dequantize(g, qt) - x) ** 2).sum()


def test_unknown_mode_is_rejected():
    with pytest.raises(qformat.CodecError, match="mode"):
        qformat.quantize(np.zeros(256, np.float32), "Q4_K", mode="bestest")
    with pytest.raises(qformat.CodecError, match="mode"):
        qformat.quantize(np.zeros(256, np.float32), "Q4_0", mode="best")  # no search for Q4_0 (yet)


def test_q6_k_search_fields_pack_losslessly():
    x = _sample("t3", np.random.default_rng(8), 16 * 256, 1.0).reshape(16, 256)
    d, sc, levels = best.search_q6_k(x)
    assert levels.max() <= 63 and sc.dtype == np.int8
    assert (d.astype(np.float16).astype(np.float32) == d).all() and np.isfinite(d).all()
    from qformat.codecs.kquants_sym import q6_k_pack
    from qformat.codecs.bits import fp32_to_fp16_bits

    y = qformat.dequantize(q6_k_pack(levels, sc, fp32_to_fp16_bits(d)), "Q6_K").reshape(16, 16, 16)
    expect = (d[:, None, None] * sc[:, :, None].astype(np.float32)) * (levels.reshape(16, 16, 16).astype(np.float32) - 32)
    np.testing.assert_array_equal(y, expect.astype(np.float32))


def test_refit_picks_the_best_fp16_pair_for_its_codes():
    """Step 3b scores the rounded least-squares (d, dmin) and its one-ulp neighbours: for the codes it
    fits, the pair it returns is never worse than rounding each coordinate, and sometimes better."""
    x = _sample("normal", np.random.default_rng(21), 256 * 256, 1.0).reshape(256, 256)
    xt = np.ascontiguousarray(x.T).reshape(8, 32, 256)
    d, dmin, sc, m, _, _ = best.search_scale_min(x, 15, refits=1)
    d, dmin, sc, m = d.astype(np.float32), dmin.astype(np.float32), sc.T.astype(np.float32), m.T.astype(np.float32)
    q = np.empty_like(xt)
    d_new, dmin_new = best._refit_d_dmin(xt, None, 15, d, dmin, sc, m, q)  # leaves the codes it fitted in q
    x64, q64, sc64, m64 = (v.astype(np.float64) for v in (xt, q, sc, m))
    a, b = sc64[:, None] * q64, np.broadcast_to(m64[:, None], q64.shape)
    saa, sab, sbb = (a * a).sum(axis=(0, 1)), (a * b).sum(axis=(0, 1)), (b * b).sum(axis=(0, 1))
    sax, sbx = (a * x64).sum(axis=(0, 1)), (b * x64).sum(axis=(0, 1))
    det = saa * sbb - sab * sab  # least squares for x ~= d*a - dmin*b, solved independently here
    plain_d = ((sbb * sax - sab * sbx) / det).astype(np.float16).astype(np.float64)
    plain_m = ((sab * sax - saa * sbx) / det).astype(np.float16).astype(np.float64)

    def err(dd, mm):
        return ((dd * a - mm * b - x64) ** 2).sum(axis=(0, 1))

    ours, plain = err(d_new.astype(np.float64), dmin_new.astype(np.float64)), err(plain_d, plain_m)
    assert (ours <= plain * (1 + 1e-12)).all()
    assert (ours < plain * (1 - 1e-9)).any()


@pytest.mark.parametrize("kind", ["normal", "t3", "mixed_scales"])
def test_second_refit_round_never_loses_per_superblock(kind):
    x = _sample(kind, np.random.default_rng(22), 128 * 256, 1.0).reshape(128, 256)
    one = best.search_scale_min(x, 15, refits=1, first_moves=1)[5]
    two = best.search_scale_min(x, 15, refits=2, first_moves=1)[5]
    assert (two <= one).all()
    assert two.sum() < one.sum()
