"""One exception hierarchy: every rule a file or an input can break has its own class.

A reader error carries the absolute byte offset where the rule was broken and a short rule name;
its message reads ``<path>: byte <offset>: <what> [<rule>]``.
"""
from __future__ import annotations

from typing import Optional


class QFormatError(Exception):
    """Base of every error qformat raises on bad input."""

    rule = "qformat"

    def __init__(self, message: str, *, offset: Optional[int] = None, path: Optional[str] = None):
        self.message = message
        self.offset = offset
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.offset is not None:
            where.append(f"byte {self.offset}")
        prefix = ": ".join(where)
        return f"{prefix + ': ' if prefix else ''}{self.message} [{self.rule}]"


# --- container: structure -------------------------------------------------------------------
class FormatError(QFormatError):
    """The bytes do not form a valid GGUF file (base of all reader errors)."""

    rule = "format"


class BadMagic(FormatError):
    """The file does not start with the 4 bytes ``GGUF``."""

    rule = "magic"


class UnsupportedVersion(FormatError):
    """The version is not 2 or 3."""

    rule = "version"


class Truncated(FormatError):
    """The file ends inside a field."""

    rule = "truncated"


class CountTooLarge(FormatError):
    """A count or length claims more items than the remaining bytes can hold."""

    rule = "count-too-large"


class UnknownValueType(FormatError):
    """A metadata value type or array element type id is not one of the 13 GGUF types."""

    rule = "value-type"


class NestingTooDeep(FormatError):
    """Arrays nest deeper than the documented limit."""

    rule = "nesting"


class BadBool(FormatError):
    """A BOOL byte is neither 0 nor 1."""

    rule = "bool"


class BadUTF8(FormatError):
    """A key, string value or tensor name is not valid UTF-8."""

    rule = "utf8"


class EmptyKey(FormatError):
    """A metadata key is the empty string."""

    rule = "empty-key"


class DuplicateKey(FormatError):
    """A metadata key appears twice."""

    rule = "duplicate-key"


class BadAlignment(FormatError):
    """``general.alignment`` is not a UINT32 power of two within the documented bound."""

    rule = "alignment"


class DuplicateTensor(FormatError):
    """A tensor name appears twice."""

    rule = "duplicate-tensor"


class BadTensorName(FormatError):
    """A tensor name is empty or longer than 63 bytes."""

    rule = "tensor-name"


class BadDims(FormatError):
    """n_dims is 0 or over 4, a dimension is zero, or the element count overflows."""

    rule = "dims"


class BadTensorType(FormatError):
    """A tensor's ggml type id is unknown or removed."""

    rule = "tensor-type"


class BadRowLength(FormatError):
    """A tensor's row length (ne[0]) is not a multiple of its type's block size."""

    rule = "row-length"


class BadTensorOffset(FormatError):
    """A tensor offset is misaligned, out of order, overlapping, or wraps."""

    rule = "tensor-offset"


class TensorDataTruncated(FormatError):
    """A tensor's data runs past the end of the file."""

    rule = "tensor-data"


# --- writer and API arguments --------------------------------------------------------------
class WriteError(QFormatError, ValueError):
    """Arguments given to the writer break a rule of the format."""

    rule = "write"


class ValueOutOfRange(WriteError):
    """A metadata value does not fit the GGUF type it must be written as."""

    rule = "value-range"


# --- codecs ---------------------------------------------------------------------------------
class CodecError(QFormatError, ValueError):
    """Input to a codec is unusable (wrong length, dtype, shape, or non-finite values)."""

    rule = "codec"


class UnsupportedType(QFormatError, NotImplementedError):
    """qformat cannot encode (or decode) this ggml type yet."""

    rule = "unsupported-type"


class VerificationError(QFormatError):
    """A file no longer reproduces the round-trip statistics recorded in it, or exceeds a bound."""

    rule = "verify"


# --- sources and command-line outputs (qformat.sources, qformat.convert) ----------------------
class SourceError(QFormatError):
    """A tensor source file (.safetensors, .npz, .npy) is malformed or unusable."""

    rule = "source"


class SafetensorsError(SourceError):
    """A .safetensors file breaks a rule of its format (header length, JSON header, offsets, dtype)."""

    rule = "safetensors"


class NumpyFileError(SourceError):
    """A .npy or .npz file cannot be read as plain numeric arrays."""

    rule = "npy"


class UnsupportedSource(SourceError):
    """The file is not of a kind qformat reads tensors from (by extension), or is missing."""

    rule = "source-kind"


class OutputConflict(QFormatError):
    """The output path exists (without ``force``) or is the input file itself."""

    rule = "output"


# --- importance matrices (qformat.imatrix) ----------------------------------------------------
class ImatrixError(QFormatError):
    """An importance-matrix file (llama.cpp's legacy ``imatrix.dat`` or GGUF imatrix) breaks a rule."""

    rule = "imatrix"


class ImatrixTruncated(ImatrixError):
    """A legacy imatrix file ends inside a field, or has bytes after its last field."""

    rule = "imatrix-truncated"


class ImatrixBadEntry(ImatrixError):
    """An imatrix entry has a bad name, count, length, type or value (negative, NaN, inf)."""

    rule = "imatrix-entry"


class ImatrixMismatch(ImatrixError):
    """An imatrix entry's length does not fit the tensor it is applied to."""

    rule = "imatrix-mismatch"
