"""Q4_K: differential tests against ggml's C code, real weights, the shared helpers, bad input.

The committed golden vectors are checked by test_codec_vectors.py; here every test draws FRESH
inputs (hypothesis) and compares with ``qformat._ggml`` (skipped when ggml-python is absent).
The helpers at the top are reused by test_q5_k.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qformat
from qformat.codecs import CHUNK_VALUES, REGISTRY, bits
from qformat.errors import CodecError
from qformat.search.ggml import nearest_int, seqsum
from qformat.types import BLOCK, QType

from .conftest import shared_file

QK_K = 256
# differing_executors: the contract's methods run once per type subclass; a replayed example from
# one type is just another valid input for the other, so sharing the example database is harmless
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])

KINDS = ["normal", "laplace", "t1", "uniform", "ints", "positive", "negative", "offset", "sparse",
         "sub16", "sub32", "zeros", "signed_zeros", "outlier", "denormal", "mixed_scales", "huge"]


def make_input(kind: str, rows: int, nblocks: int, log_scale: float, seed: int) -> np.ndarray:
    """float32 ``(rows, nblocks*256)`` of one distribution family, scaled by ``10**log_scale``."""
    rng = np.random.default_rng(seed)
    shape = (rows, nblocks * QK_K)
    scale = 10.0 ** log_scale
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "laplace":
        x = rng.laplace(size=shape)
    elif kind == "t1":  # Cauchy: extreme outliers everywhere
        x = rng.standard_t(1, size=shape)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, shape)
    elif kind == "ints":
        x = rng.integers(-9, 9, shape)
    elif kind == "positive":
        x = np.abs(rng.standard_normal(shape))
    elif kind == "negative":
        x = -np.abs(rng.standard_normal(shape))
    elif kind == "offset":
        x = rng.standard_normal(shape) + rng.uniform(-50, 50)
    elif kind == "sparse":
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.05)
    elif kind == "sub16":
        x = np.repeat(rng.standard_normal((rows, shape[1] // 16)), 16, axis=1)
    elif kind == "sub32":
        x = np.repeat(rng.standard_normal((rows, shape[1] // 32)), 32, axis=1)
        x[:, 32:64] = 0.0
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "signed_zeros":
        x = np.where(rng.random(shape) < 0.5, -0.0, 0.0)
    elif kind == "outlier":
        x = rng.standard_normal(shape) * 1e-3
        x[np.arange(rows), rng.integers(0, shape[1], rows)] = rng.choice([-1.0, 1.0], rows) * 1e3
    elif kind == "denormal":
        return (rng.standard_normal(shape) * 1e-39).astype(np.float32)
    elif kind == "mixed_scales":  # sub-blocks of wildly different magnitude inside one super-block
        x = rng.standard_normal(shape) * 10.0 ** rng.integers(-20, 20, (rows, shape[1] // 32)).repeat(32, axis=1)
    elif kind == "huge":  # near the float32 limit, where (max - min) and the scales overflow
        return (rng.uniform(-1, 1, shape) * 3.4e38).astype(np.float32)
    else:
        raise AssertionError(kind)
    with np.errstate(over="ignore"):
        return np.clip(x * scale, -3.4e38, 3.4e38).astype(np.float32)


@st.composite
def float_inputs(draw, max_rows=3, max_blocks=3):
    kind = draw(st.sampled_from(KINDS))
    return make_input(kind, draw(st.integers(1, max_rows)), draw(st.integers(1, max_blocks)),
                      draw(st.floats(-38, 38)), draw(st.integers(0, 2**32 - 1)))


@st.composite
def importance(draw, n):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.random(n) ** draw(st.sampled_from([1, 3])) * 10.0 ** draw(st.integers(-3, 3))
    if draw(st.booleans()):
        w[rng.random(n) < 0.3] = 0.0
    return w.astype(np.float32)


def bits32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_same_bytes(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    bad = np.flatnonzero((got != want).reshape(-1, got.shape[-1]).any(axis=-1))
    assert bad.size == 0, f"{what}: rows {bad[:10].tolist()} differ from ggml"


def assert_same_floats(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    diff = bits32(got) != bits32(want)
    assert not diff.any(), f"{what}: {int(diff.sum())} values differ bitwise from ggml"


def check_encode_vs_ggml(ggml_ref, qt: QType, x: np.ndarray, imatrix=None) -> None:
    got = qformat.quantize(x, qt, imatrix=imatrix)
    want = ggml_ref.quantize(x, qt, imatrix=imatrix)
    assert_same_bytes(got, want, f"{qt.name} encode{' (imatrix)' if imatrix is not None else ''}")
    assert_same_floats(qformat.dequantize(got, qt), ggml_ref.dequantize(want, qt), f"{qt.name} decode")


def check_decode_random_bytes(ggml_ref, qt: QType, seed: int, nblocks: int) -> None:
    """Arbitrary bytes (fp16 fields hit NaN, inf, subnormals) decode bit-identically."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (nblocks, BLOCK[qt].nbytes), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        want = ggml_ref.dequantize(data, qt)
    assert_same_floats(qformat.dequantize(data, qt), want, f"{qt.name} decode of random bytes")


def check_real_weights(ggml_ref, qt: QType) -> int:
    from safetensors.numpy import load_file

    tensors = load_file(str(shared_file("weights/minilm-l6-layer0.safetensors")))
    rows = 0
    rng = np.random.default_rng(5)
    for name in sorted(tensors):
        flat = tensors[name].astype(np.float32).reshape(-1)
        if flat.size < QK_K:
            continue
        x = flat[: flat.size // QK_K * QK_K].reshape(-1, QK_K)
        check_encode_vs_ggml(ggml_ref, qt, x)
        imatrix = (rng.random(QK_K) * 4).astype(np.float32)
        check_encode_vs_ggml(ggml_ref, qt, x, imatrix=imatrix)
        rows += x.shape[0]
    return rows


def check_bad_input(qt: QType) -> None:
    nbytes = BLOCK[qt].nbytes
    good = np.zeros((2, QK_K), np.float32)
    with pytest.raises(CodecError, match="multiple of the block size"):
        qformat.quantize(np.zeros((2, 100), np.float32), qt)
    for bad_value in (np.nan, np.inf, -np.inf):
        x = good.copy()
        x[1, 7] = bad_value
        with pytest.raises(CodecError, match="non-finite"):
            qformat.quantize(x, qt)
    with pytest.raises(CodecError, match="floating-point"):
        qformat.quantize(good.astype(np.int32), qt)
    with pytest.raises(CodecError, match="imatrix"):
        qformat.quantize(good, qt, imatrix=np.ones(QK_K - 1, np.float32))
    with pytest.raises(CodecError, match="imatrix"):
        qformat.quantize(good, qt, imatrix=np.full(QK_K, np.nan, np.float32))
    with pytest.raises(CodecError, match="mode"):
        qformat.quantize(good, qt, mode="no-such-mode")
    with pytest.raises(CodecError, match="multiple of the"):
        qformat.dequantize(np.zeros((1, nbytes + 1), np.uint8), qt)
    with pytest.raises(CodecError, match="uint8"):
        qformat.dequantize(np.zeros((1, nbytes), np.float32), qt)
    with pytest.raises(CodecError, match="uint8"):
        qformat.dequantize(np.zeros((1, nbytes), np.int16), qt)
    with pytest.raises(CodecError, match="at least one dimension"):
        qformat.dequantize(np.uint8(3), qt)


# ---- the contract every 8 x 32 k-quant (Q4_K, Q5_K) meets; subclasses set ``qt`` ------------------

class KQuantContract:
    qt: QType
    #: seeds differ per type so the two types see different fixed inputs
    seed_base = 0

    @SETTINGS
    @given(x=float_inputs())
    def test_encode_matches_ggml_ref(self, ggml_ref, x):
        check_encode_vs_ggml(ggml_ref, self.qt, x)

    @SETTINGS
    @given(data=st.data())
    def test_encode_with_imatrix_matches_ggml(self, ggml_ref, data):
        x = data.draw(float_inputs(max_rows=2, max_blocks=2))
        check_encode_vs_ggml(ggml_ref, self.qt, x, imatrix=data.draw(importance(x.shape[1])))

    @pytest.mark.parametrize("kind", KINDS)
    def test_every_input_family_at_extreme_scales(self, ggml_ref, kind):
        ramp = np.linspace(0, 3, 512, dtype=np.float32)
        for i, log_scale in enumerate((-38.0, -30.0, -6.0, 0.0, 4.8, 30.0, 37.5)):
            x = make_input(kind, 2, 2, log_scale, seed=self.seed_base + i)
            check_encode_vs_ggml(ggml_ref, self.qt, x)
            check_encode_vs_ggml(ggml_ref, self.qt, x, imatrix=ramp if i % 2 else ramp[::-1].copy())

    @SETTINGS
    @given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 40))
    def test_decode_random_bytes_matches_ggml(self, ggml_ref, seed, nblocks):
        check_decode_random_bytes(ggml_ref, self.qt, seed, nblocks)

    def test_inputs_spanning_several_chunks(self, ggml_ref):
        """The registry hands codecs chunks (256 blocks to encode, 1024 to decode here): seams too."""
        codec = REGISTRY[self.qt]
        nblocks = 2 * max(codec.decode_chunk_values, CHUNK_VALUES) // QK_K + 7
        check_decode_random_bytes(ggml_ref, self.qt, seed=self.seed_base + 11, nblocks=nblocks)
        x = make_input("laplace", 2, 150, 0.0, seed=self.seed_base + 12)  # 300 blocks, rows of 150
        check_encode_vs_ggml(ggml_ref, self.qt, x)
        check_encode_vs_ggml(ggml_ref, self.qt, x, imatrix=np.linspace(0.5, 2, x.shape[1], dtype=np.float32))

    def test_real_weights_byte_identical(self, ggml_ref):
        assert check_real_weights(ggml_ref, self.qt) > 1000

    @SETTINGS
    @given(x=float_inputs(max_rows=2, max_blocks=2))
    def test_decode_equals_gguf_py(self, x):
        gguf = pytest.importorskip("gguf")
        data = qformat.quantize(x, self.qt)
        with np.errstate(invalid="ignore", over="ignore"):
            want = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[self.qt.name])
        assert_same_floats(qformat.dequantize(data, self.qt), want.astype(np.float32), "gguf-py decode")

    def test_bad_input_raises_codec_error(self):
        check_bad_input(self.qt)


# ---- Q4_K ---------------------------------------------------------------------------------------

Q4 = QType.Q4_K


class TestQ4K(KQuantContract):
    qt = Q4


def test_shapes_and_leading_axes():
    x = make_input("normal", 6, 2, 0.0, seed=1).reshape(2, 3, 512)
    q = qformat.quantize(x, Q4)
    assert q.dtype == np.uint8 and q.shape == (2, 3, 2 * 144)
    assert np.array_equal(q.reshape(6, -1), qformat.quantize(x.reshape(6, 512), "q4_k"))
    y = qformat.dequantize(q, Q4)
    assert y.dtype == np.float32 and y.shape == (2, 3, 512)
    # float64 input is rounded to float32 first, as llama.cpp's converter does
    assert np.array_equal(qformat.quantize(x.astype(np.float64), Q4), q)


def test_layout_of_one_hand_built_block():
    """d @0, dmin @2, 6-bit scale/min packing @4, nibble order @16, exactly as spec/codecs/q4_k.md says."""
    sc = np.array([1, 2, 3, 4, 33, 47, 63, 0], np.uint8)
    mn = np.array([0, 5, 0, 63, 16, 1, 2, 3], np.uint8)
    codes = np.arange(QK_K, dtype=np.uint8) % 16
    block = np.zeros((1, 144), np.uint8)
    block[0, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    block[0, 2:4] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
    block[0, 4:16] = bits.pack_scale_min_k4(sc[None], mn[None])[0]
    for c in range(4):
        for j in range(32):
            block[0, 16 + 32 * c + j] = codes[64 * c + j] | (codes[64 * c + 32 + j] << 4)
    y = qformat.dequantize(block, Q4)[0]
    sub = np.arange(QK_K) // 32
    expect = (np.float32(0.5) * sc[sub].astype(np.float32)) * codes.astype(np.float32) \
        - np.float32(0.25) * mn[sub].astype(np.float32)
    assert_same_floats(y, expect, "hand-built block")


# ---- shared helpers ---------------------------------------------------------------------------

def test_scale_min_packing_round_trips_every_value():
    values = np.arange(64, dtype=np.uint8)
    # each of the 8 slots takes every 6-bit value for both scales and mins
    sc = np.stack([np.roll(values, k)[:8] for k in range(64)])
    mn = np.stack([np.roll(values, 3 * k + 1)[:8] for k in range(64)])
    sm = bits.unpack_scale_min_k4(bits.pack_scale_min_k4(sc, mn))
    assert np.array_equal(sm[:, 0], sc) and np.array_equal(sm[:, 1], mn)


def test_scale_min_unpack_follows_the_byte_diagram():
    rng = np.random.default_rng(3)
    packed = rng.integers(0, 256, (500, 12), dtype=np.uint8)
    sm = bits.unpack_scale_min_k4(packed)
    for j in range(8):  # the diagram in spec/codecs/q4_k.md, read one field at a time
        if j < 4:
            want_sc, want_m = packed[:, j] & 63, packed[:, j + 4] & 63
        else:
            want_sc = (packed[:, j + 4] & 15) | ((packed[:, j - 4] >> 6) << 4)
            want_m = (packed[:, j + 4] >> 4) | ((packed[:, j] >> 6) << 4)
        assert np.array_equal(sm[:, 0, j], want_sc) and np.array_equal(sm[:, 1, j], want_m)


def test_nibble_planes_round_trip():
    codes = np.random.default_rng(4).integers(0, 16, (9, QK_K), dtype=np.uint8)
    packed = bits.pack_nibbles_k(codes)
    assert packed[0, 5] == codes[0, 5] | (codes[0, 37] << 4)
    assert packed[0, 64 + 3] == codes[0, 128 + 3] | (codes[0, 160 + 3] << 4)
    assert np.array_equal(bits.unpack_nibbles_k(packed), codes)


def test_fp16_conversion_matches_ggml(ggml_ref):
    rng = np.random.default_rng(6)
    patterns = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x477FEFFF, 0x477FF000,
                         0x33000000, 0x33000001, 0x387FC000, 0x38800000], np.uint32)
    x = np.concatenate([patterns, specials]).view(np.float32)
    want = ggml_ref.quantize(x, "F16").view(np.uint16)
    assert np.array_equal(bits.fp32_to_fp16_bits(x), want)


@SETTINGS
@given(st.integers(0, 2**32 - 1))
def test_nearest_int_is_round_half_even_in_range(seed):
    rng = np.random.default_rng(seed)
    v = np.concatenate([rng.uniform(-4e6, 4e6, 1000), np.arange(-40, 40) + 0.5]).astype(np.float32)
    assert np.array_equal(nearest_int(v), np.rint(v).astype(np.int32))


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_seqsum_adds_left_to_right(rows, cols, seed):
    """Both C loop forms: ``s = 0; s += t[i]`` (default) and ``s = t[0]; s += t[i], i >= 1``."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, cols)) * np.exp(rng.standard_normal((rows, cols)) * 8)).astype(np.float32)
    a[:, rng.random(cols) < 0.2] = -0.0  # columns of only -0.0: the one place the two forms differ
    acc = a[0].copy()
    for i in range(1, rows):
        acc = (acc + a[i]).astype(np.float32)
    assert np.array_equal(bits32(seqsum(a, from_first=True)), bits32(acc))
    acc = np.zeros(cols, np.float32)
    for i in range(rows):
        acc = (acc + a[i]).astype(np.float32)
    assert np.array_equal(bits32(seqsum(a)), bits32(acc))
