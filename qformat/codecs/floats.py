"""Plain element types: F32 (placeholder; the full family lands with issue 5)."""
from __future__ import annotations

import numpy as np

from ..types import QType
from . import Codec, register


def _f32_encode(x, *, mode="ggml", weights=None):
    return np.ascontiguousarray(x, dtype="<f4").view(np.uint8).reshape(x.shape[0], 4)


def _f32_decode(blocks):
    return np.ascontiguousarray(blocks).view("<f4").astype(np.float32).reshape(-1, 1)


register(Codec(QType.F32, _f32_decode, _f32_encode, finite_only=False))
