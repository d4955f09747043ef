"""Q5_K: differential tests against ggml's C code on fresh inputs, real weights, layout, bad input.

Input families and comparison helpers are shared with test_q4_k.py (same 8 x 32 sub-block design).
"""
from __future__ import annotations

import numpy as np

import qformat
from qformat.codecs import bits
from qformat.types import QType

from .test_q4_k import QK_K, KQuantContract, assert_same_floats, make_input

Q5 = QType.Q5_K


class TestQ5K(KQuantContract):
    qt = Q5
    seed_base = 100


def test_shapes():
    x = make_input("laplace", 4, 3, 0.0, seed=2)
    q = qformat.quantize(x, "Q5_K")
    assert q.dtype == np.uint8 and q.shape == (4, 3 * 176)
    y = qformat.dequantize(q, "q5_k")
    assert y.dtype == np.float32 and y.shape == x.shape


def test_layout_of_one_hand_built_block():
    """d @0, dmin @2, scales @4, qh @16 (bit 2c+h = high bit of chunk c half h), qs @48 (spec/codecs/q5_k.md)."""
    sc = np.array([7, 0, 63, 1, 40, 2, 9, 31], np.uint8)
    mn = np.array([1, 2, 3, 4, 5, 63, 0, 32], np.uint8)
    codes = (np.arange(QK_K, dtype=np.uint32) * 7 % 32).astype(np.uint8)
    block = np.zeros((1, 176), np.uint8)
    block[0, 0:2] = np.frombuffer(np.float16(-1.5).tobytes(), np.uint8)
    block[0, 2:4] = np.frombuffer(np.float16(0.125).tobytes(), np.uint8)
    block[0, 4:16] = bits.pack_scale_min_k4(sc[None], mn[None])[0]
    for c in range(4):
        for j in range(32):
            lo, hi = codes[64 * c + j], codes[64 * c + 32 + j]
            block[0, 48 + 32 * c + j] = (lo & 15) | ((hi & 15) << 4)
            block[0, 16 + j] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1))
    y = qformat.dequantize(block, Q5)[0]
    sub = np.arange(QK_K) // 32
    expect = (np.float32(-1.5) * sc[sub].astype(np.float32)) * codes.astype(np.float32) \
        - np.float32(0.125) * mn[sub].astype(np.float32)
    assert_same_floats(y, expect, "hand-built block")


def test_high_bit_plane_round_trips():
    codes = np.random.default_rng(8).integers(0, 32, (5, QK_K), dtype=np.uint8)
    qh = bits.pack_high_bits_k(codes)
    assert np.array_equal(bits.unpack_high_bits_k(qh) | bits.unpack_nibbles_k(bits.pack_nibbles_k(codes & 15)), codes)
