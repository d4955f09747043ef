"""Q2_K: differential tests against ggml's C code on fresh inputs, real weights, layout, bad input.

Input families and comparison helpers are shared with test_q4_k.py (the contract every scale+min
k-quant meets); the committed golden vectors are checked by test_codec_vectors.py.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import qformat
from qformat.codecs import kquants
from qformat.search.ggml import make_qkx2_quants
from qformat.types import BLOCK, QType

from .test_kquants_sym import imatrices
from .test_q4_k import QK_K, SETTINGS, KQuantContract, assert_same_floats, check_encode_vs_ggml, float_inputs, \
    make_input

Q2 = QType.Q2_K


class TestQ2K(KQuantContract):
    qt = Q2
    seed_base = 200


@SETTINGS
@given(data=st.data())
def test_imatrix_families_match_ggml(ggml_ref, data):
    """Importance vectors spanning 20 decades, sparse ones (0 * inf weights on overflowing x), and
    tiny ones whose products underflow to signed zeros: the weighted encoder still matches ggml."""
    x = data.draw(float_inputs(max_rows=2, max_blocks=2))
    w = data.draw(imatrices(x.shape[1]))
    if data.draw(st.booleans()):
        w[::7] = -0.0  # passes the non-negativity check; its sign must not leak into any byte
    check_encode_vs_ggml(ggml_ref, Q2, x, imatrix=w)


def test_shapes():
    x = make_input("normal", 3, 2, 0.0, seed=21).reshape(3, 1, 512)
    q = qformat.quantize(x, "q2_k")
    assert q.dtype == np.uint8 and q.shape == (3, 1, 2 * 84) and BLOCK[Q2] == (QK_K, 84)
    y = qformat.dequantize(q, Q2)
    assert y.dtype == np.float32 and y.shape == x.shape


def test_layout_of_one_hand_built_block():
    """scales @0 (scale low nibble, min high nibble), qs @16 (value 128h+32k+l at qs[32h+l] bits 2k),
    d @80, dmin @82, exactly as spec/codecs/q2_k.md says."""
    rng = np.random.default_rng(22)
    sc = rng.integers(0, 16, 16).astype(np.uint8)
    mn = rng.integers(0, 16, 16).astype(np.uint8)
    codes = rng.integers(0, 4, QK_K).astype(np.uint8)
    block = np.zeros((1, 84), np.uint8)
    block[0, 0:16] = sc | (mn << 4)
    for e in range(QK_K):
        h, k, l = e // 128, (e % 128) // 32, e % 32
        block[0, 16 + 32 * h + l] |= codes[e] << (2 * k)
    block[0, 80:82] = np.frombuffer(np.float16(0.75).tobytes(), np.uint8)
    block[0, 82:84] = np.frombuffer(np.float16(-0.0625).tobytes(), np.uint8)
    y = qformat.dequantize(block, Q2)[0]
    sub = np.arange(QK_K) // 16
    expect = (np.float32(0.75) * sc[sub].astype(np.float32)) * codes.astype(np.float32) \
        - np.float32(-0.0625) * mn[sub].astype(np.float32)
    assert_same_floats(y, expect, "hand-built block")


def test_code_planes_round_trip():
    codes = np.random.default_rng(23).integers(0, 4, (7, QK_K), dtype=np.uint8)
    packed = kquants._q2_k_pack_codes(codes)
    assert packed.shape == (7, 64)
    assert packed[0, 5] == codes[0, 5] | (codes[0, 37] << 2) | (codes[0, 69] << 4) | (codes[0, 101] << 6)
    assert np.array_equal(kquants._q2_k_codes(packed), codes)


def test_reference_search_needs_the_absolute_error(ggml_ref):
    """ggml's Q2_K reference search compares candidates by weighted |error| (use_mad): with the
    squared error instead, some blocks of ordinary data come out different. Guards the flag."""
    x = make_input("laplace", 8, 4, 0.0, seed=24).reshape(-1, QK_K)
    xc = kquants._columns(x, 16)
    args = (xc, np.abs(xc), 3, -0.5, 0.1, 15)
    mad = make_qkx2_quants(*args, use_mad=True)
    sq = make_qkx2_quants(*args, use_mad=False)
    assert not np.array_equal(mad[1], sq[1])
    check_encode_vs_ggml(ggml_ref, Q2, x)
