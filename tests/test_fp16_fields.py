"""Every fp16 field of every block codec decodes through ggml's own fp16 -> fp32 conversion.

ggml's ``GGML_FP16_TO_FP32`` turns a signalling-NaN half into a QUIET float NaN (the conversion
goes through float arithmetic), while numpy's float16 -> float32 cast keeps the quiet bit clear;
the two differ on the 1,022 half patterns with a NaN exponent, a non-zero mantissa and the quiet
bit (bit 9) clear. Here each NaN half (and +-inf, +-0, a subnormal) is planted in each fp16 field
of a block whose other bytes are random, and the decode is compared bit for bit with ggml's C.
Field offsets are read off ``ggml-common.h``'s block structs.
"""
from __future__ import annotations

import numpy as np
import pytest

import qformat
from qformat.codecs import can_decode, floats
from qformat.types import BLOCK, QType

#: byte offsets of the ggml_half fields of each block type (ggml-common.h)
FP16_FIELDS = {
    "Q1_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "TQ1_0": (52,), "TQ2_0": (64,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ3_XXS": (0,), "IQ1_S": (0,),
    "IQ4_NL": (0,), "IQ3_S": (0,), "IQ2_S": (0,), "IQ4_XS": (0,),
}
CASES = [(t, off) for t, offs in FP16_FIELDS.items() for off in offs]

_ALL = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
#: every NaN half, both signs, plus the other non-finite and edge values
SPECIAL_HALVES = np.concatenate([_ALL[(_ALL & 0x7C00) == 0x7C00], np.array([0, 0x8000, 1, 0x83FF, 0x3C00], np.uint16)])
SIGNALLING = int((((SPECIAL_HALVES & 0x7FFF) > 0x7C00) & ((SPECIAL_HALVES & 0x0200) == 0)).sum())


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_the_pattern_set_is_what_the_doc_says():
    assert SPECIAL_HALVES.size == 2048 + 5 and SIGNALLING == 1022
    assert np.unique(SPECIAL_HALVES).size == SPECIAL_HALVES.size


def test_one_converter_matches_ggml_on_every_half(ggml_ref):
    """The converter the codecs share equals ggml's F16 decode on all 65,536 patterns, where
    numpy's own cast does not (the difference this whole file is about)."""
    want = ggml_ref.dequantize(_ALL.view(np.uint8).reshape(-1, 2), "F16").reshape(-1)
    assert np.array_equal(_bits(floats.decode_fp16(_ALL)), _bits(want))
    numpy_cast = _ALL.view(np.float16).astype(np.float32)
    assert int((_bits(numpy_cast) != _bits(want)).sum()) == SIGNALLING


@pytest.mark.parametrize("name,offset", CASES, ids=[f"{t}@{o}" for t, o in CASES])
def test_each_special_half_in_each_field_decodes_as_ggml(ggml_ref, name, offset):
    qt = QType[name]
    if not can_decode(qt):
        pytest.skip(f"qformat has no {name} decoder")
    nbytes = BLOCK[qt].nbytes
    rng = np.random.default_rng(offset + 1000 * int(qt))
    blocks = rng.integers(0, 256, (SPECIAL_HALVES.size, nbytes), dtype=np.uint8)
    for other in FP16_FIELDS[name]:  # the other half fields finite, so the planted one decides
        blocks[:, other:other + 2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    blocks[:, offset:offset + 2] = SPECIAL_HALVES.astype("<u2").view(np.uint8).reshape(-1, 2)
    with np.errstate(all="ignore"):
        want = ggml_ref.dequantize(blocks, qt)
    got = qformat.dequantize(blocks, qt)
    diff = _bits(got) != _bits(want)
    assert not diff.any(), f"{name}: {int(diff.any(axis=-1).sum())} blocks differ from ggml"
