"""The GGUF container: declarative schema, strict mmap reader, streaming atomic writer."""
from __future__ import annotations

from .reader import GGUFFile, TensorInfo, open
from .values import Field, StringArray, TypedValue, ValueType
from .writer import Writer, write

__all__ = ["GGUFFile", "TensorInfo", "open", "Field", "StringArray", "TypedValue", "ValueType", "Writer", "write"]
