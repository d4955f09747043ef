"""qformat: GGUF v3 files and ggml's block-quantization codecs.

The public API is re-exported here; see README.md for a tour.
"""
from __future__ import annotations

from .codecs import can_decode, can_encode, dequantize, quantize
from .container import Field, GGUFFile, StringArray, TensorInfo, TypedValue, ValueType, Writer, open, write
from .errors import *  # noqa: F401,F403  (one class per rule; all derive from QFormatError)
from .errors import QFormatError
from .types import BLOCK, QType, as_qtype, bits_per_weight
from .stats import RoundTripStats, roundtrip_stats, verify
from .convert import encode_file, decode_file

__version__ = "0.1.0"
