"""TQ1_0 / TQ2_0 against ggml's C code (encode byte-identical, decode bit-identical), every TQ1_0
byte's base-3 digits, and the property that both types store the same trits."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qformat
from qformat.codecs import ternary
from qformat.codecs.bits import fp16_bits_to_fp32, fp32_to_fp16_bits
from qformat.errors import CodecError
from qformat.types import BLOCK, QType

from .test_iquants import assert_random_bytes_decode_like_ggml, float_rows, same_bits

TYPES = [QType.TQ1_0, QType.TQ2_0]


@pytest.mark.parametrize("qt", TYPES)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_encode_matches_ggml(ggml_ref, qt, data):
    x = data.draw(float_rows(256, 4))
    assert np.array_equal(qformat.quantize(x, qt), ggml_ref.quantize(x, qt))


@pytest.mark.parametrize("qt", TYPES)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 32))
def test_decode_random_bytes_matches_ggml(ggml_ref, qt, seed, nblocks):
    assert_random_bytes_decode_like_ggml(ggml_ref, qt, seed, nblocks)


def test_tiny_scales_where_one_over_d_overflows(ggml_ref):
    """amax below ~2.9e-39 makes 1/amax inf; ggml's lroundf(inf or NaN) path stores trit 0."""
    u = np.arange(1, 0x00400000, 509, dtype=np.uint32)  # subnormal amax values
    amax = u.view(np.float32)
    x = np.zeros((amax.size, 256), np.float32)
    x[:, 0], x[:, 100], x[:, 255] = amax, -amax, amax * np.float32(0.5)
    for qt in TYPES:
        assert np.array_equal(qformat.quantize(x, qt), ggml_ref.quantize(x, qt))


def test_every_tq1_byte_decodes_like_ggml(ggml_ref):
    """Each of the 256 byte values in every qs/qh position, with scale 1.0."""
    blocks = np.zeros((256, 54), np.uint8)
    blocks[:, :52] = np.arange(256, dtype=np.uint8)[:, None]
    blocks[:, 52:] = [0x00, 0x3C]  # fp16 1.0
    assert same_bits(qformat.dequantize(blocks, QType.TQ1_0), ggml_ref.dequantize(blocks, QType.TQ1_0))


def test_base3_packing_inverts_for_all_243_digit_strings():
    n = np.arange(243)
    trits = np.stack([(n // 3 ** (4 - k)) % 3 for k in range(5)])  # most significant first
    packed = ternary._pack_base3(trits.astype(np.uint8))
    np.testing.assert_array_equal(ternary._unpack_base3(packed, 5), trits)
    four = trits[1:, :81]  # four trits: the qh bytes
    np.testing.assert_array_equal(ternary._unpack_base3(ternary._pack_base3(four.astype(np.uint8)), 4), four)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_both_types_store_the_same_trits(data):
    x = data.draw(float_rows(256, 4))
    y1 = qformat.dequantize(qformat.quantize(x, QType.TQ1_0), QType.TQ1_0)
    y2 = qformat.dequantize(qformat.quantize(x, QType.TQ2_0), QType.TQ2_0)
    assert same_bits(y1, y2)
    d = fp16_bits_to_fp32(fp32_to_fp16_bits(np.abs(x.reshape(-1, 256)).max(axis=1)))[:, None]
    yb = y1.reshape(-1, 256)
    with np.errstate(invalid="ignore"):
        ok = (yb == 0) | (yb == d) | (yb == -d) | np.isnan(yb)
    assert ok.all()  # every value is -d, 0 or +d with d = fp16(amax of its block)


@pytest.mark.parametrize("qt", TYPES)
def test_bad_input_raises_codec_error(qt):
    x = np.ones((1, 512), np.float32)
    with pytest.raises(CodecError):
        qformat.quantize(x[:, :300], qt)
    with pytest.raises(CodecError, match="non-finite"):
        qformat.quantize(np.full((1, 256), np.nan, np.float32), qt)
    with pytest.raises(CodecError, match="importance matrix"):  # ggml ignores weights for these types; we refuse them
        qformat.quantize(x, qt, imatrix=np.ones(512, np.float32))
    with pytest.raises(CodecError):
        qformat.dequantize(np.zeros((3, BLOCK[qt].nbytes * 2 + 1), np.uint8), qt)


@pytest.mark.parametrize("qt", TYPES)
def test_decode_across_registry_chunks_writes_every_block(qt):
    """The decoders write straight into the registry's output, several blocks-chunks per call; a
    tensor spanning chunk boundaries (and ending in a partial chunk) must decode block by block
    the same as each block alone."""
    codec = qformat.codecs.get_codec(qt)
    nbytes = BLOCK[qt][1]
    per_chunk = codec.decode_chunk_values // 256
    nblocks = 2 * per_chunk + 7
    rng = np.random.default_rng(11)
    raw = rng.integers(0, 256, size=(nblocks, nbytes), dtype=np.uint8)
    raw[:, -2:] = rng.choice(np.arange(0x3C00, 0x3C08, dtype=np.uint16), nblocks).view(np.uint8).reshape(-1, 2)
    whole = qformat.dequantize(raw.reshape(-1), qt).reshape(nblocks, 256)
    picks = [0, per_chunk - 1, per_chunk, per_chunk + 1, 2 * per_chunk, nblocks - 1]
    for i in picks:
        assert same_bits(whole[i], qformat.dequantize(raw[i], qt))
