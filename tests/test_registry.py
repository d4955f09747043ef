"""The codec registry's own contract: shape handling, validation, chunking, duplicates."""
from __future__ import annotations

import numpy as np
import pytest

import qformat
from qformat.codecs import CHUNK_VALUES, REGISTRY, Codec, register
from qformat.errors import CodecError, UnsupportedType
from qformat.types import BLOCK, QType


def test_every_registered_codec_matches_the_type_table():
    for qt, codec in REGISTRY.items():
        assert codec.qtype is qt
        assert qt in BLOCK


def test_duplicate_registration_is_refused():
    with pytest.raises(RuntimeError, match="twice"):
        register(Codec(QType.Q4_K, REGISTRY[QType.Q4_K].decode))


def test_shapes_round_trip_through_leading_axes():
    x = np.random.default_rng(0).standard_normal((2, 3, 512)).astype(np.float32)
    q = qformat.quantize(x, "Q8_0")
    assert q.shape == (2, 3, 512 // 32 * 34) and q.dtype == np.uint8
    assert qformat.dequantize(q, "Q8_0").shape == x.shape


def test_float16_and_strided_input_encode_like_float32():
    x = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float16)
    want = qformat.quantize(x.astype(np.float32), "Q4_K")
    assert np.array_equal(qformat.quantize(x, "Q4_K"), want)
    wide = np.zeros((64, 2048), np.float32)
    wide[:, ::2] = x
    assert np.array_equal(qformat.quantize(wide[:, ::2], "Q4_K"), want)


def test_non_finite_value_is_reported_at_its_flat_index_beyond_the_first_chunk():
    x = np.zeros(4 * CHUNK_VALUES, np.float32)
    at = 3 * CHUNK_VALUES + 77
    x[at] = np.nan
    with pytest.raises(CodecError, match=f"flat index {at}"):
        qformat.quantize(x, "Q4_K")
    x[at] = 0
    x[-1] = -np.inf
    with pytest.raises(CodecError, match=f"flat index {x.size - 1}"):
        qformat.quantize(x, "Q8_0")


def test_bad_arguments():
    x = np.zeros(256, np.float32)
    with pytest.raises(CodecError, match="mode"):
        qformat.quantize(x, "Q8_0", mode="nope")
    with pytest.raises(CodecError, match="importance"):
        qformat.quantize(x, "Q8_0", imatrix=np.ones(256))
    with pytest.raises(CodecError, match="imatrix has shape"):
        qformat.quantize(x, "Q4_K", imatrix=np.ones(255))
    with pytest.raises(CodecError, match="non-negative"):
        qformat.quantize(x, "Q4_K", imatrix=-np.ones(256))
    with pytest.raises(CodecError, match="floating-point"):
        qformat.quantize(x.astype(np.int32), "Q4_K")
    with pytest.raises(CodecError, match="multiple of the block size"):
        qformat.quantize(np.zeros(100, np.float32), "Q4_K")
    with pytest.raises(CodecError, match="unknown ggml type"):
        qformat.quantize(x, "Q4_Z")
    with pytest.raises(CodecError, match="uint8"):
        qformat.dequantize(np.zeros(144, np.int8), "Q4_K")
    with pytest.raises(CodecError, match="144-byte block"):
        qformat.dequantize(np.zeros(100, np.uint8), "Q4_K")
    with pytest.raises(UnsupportedType):
        qformat.quantize(x, "IQ2_XXS")


def test_weighted_chunks_start_on_row_boundaries():
    # rows wider than one chunk and rows that do not divide it: the imatrix must line up per column
    rng = np.random.default_rng(2)
    for rows, n in ((300, 256 * 3), (3, CHUNK_VALUES + 256), (2, 2 * CHUNK_VALUES)):
        x = rng.standard_normal((rows, n)).astype(np.float32)
        w = rng.random(n).astype(np.float32)
        row_by_row = np.stack([qformat.quantize(r, "Q4_K", imatrix=w) for r in x])
        assert np.array_equal(qformat.quantize(x, "Q4_K", imatrix=w), row_by_row)
