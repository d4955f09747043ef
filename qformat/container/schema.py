"""The GGUF container as declarative ``construct`` structures, one block per section of the spec.

The writer builds every structure through these definitions; the reader parses the same
structures with a hand-unrolled ``struct.unpack_from`` fast path (``reader.py``), and
``tests/test_schema.py`` checks on real files that both parse the same thing. Bulk bodies
(numeric arrays, string arrays, tensor data) are described here too but are produced and consumed
as whole buffers, never element by element (``ARRAY_HEAD`` is the part that is built per array).

Everything is little-endian unless a file proves otherwise (see ``reader.py``); :func:`build`
returns the same structures for either byte order. Two construct pitfalls avoided on purpose:
``Switch`` is keyed on the *integer* type id (keying on an Enum field silently falls through on
parse), and no ``Aligned`` is used (it pads the sub-structure, not the file offset) -- padding to
the alignment is computed from absolute offsets by the reader and writer.
"""
from __future__ import annotations

from types import SimpleNamespace

from construct import (
    Array, Const, Error, Flag, Float32b, Float32l, Float64b, Float64l, Int8sb, Int8sl, Int8ub, Int8ul,
    Int16sb, Int16sl, Int16ub, Int16ul, Int32sb, Int32sl, Int32ub, Int32ul, Int64sb, Int64sl, Int64ub,
    Int64ul, LazyBound, PascalString, Struct, Switch, this,
)

MAGIC = b"GGUF"
VERSION = 3
DEFAULT_ALIGNMENT = 32


def build(byteorder: str = "<") -> SimpleNamespace:
    """The schema for one byte order ("<" little, ">" big)."""
    le = byteorder == "<"
    u32, u64 = (Int32ul, Int64ul) if le else (Int32ub, Int64ub)

    # ==== String ==================================================================================
    # u64 byte length, then that many bytes of UTF-8; no terminating NUL.
    string = PascalString(u64, "utf8")

    # ==== Typed value =============================================================================
    # The u32 type id selects the encoding; unknown ids MUST be rejected (Switch default=Error).
    # BOOL is a single byte 0 or 1 (Flag builds 0/1; the reader additionally rejects 2..255).
    scalar_cases = {
        0: Int8ul if le else Int8ub, 1: Int8sl if le else Int8sb,
        2: Int16ul if le else Int16ub, 3: Int16sl if le else Int16sb,
        4: u32, 5: Int32sl if le else Int32sb,
        6: Float32l if le else Float32b, 7: Flag, 8: string,
        10: u64, 11: Int64sl if le else Int64sb, 12: Float64l if le else Float64b,
    }

    # ==== Array ===================================================================================
    # u32 element type, u64 count, then `count` elements of that type back to back. Elements MAY be
    # arrays themselves (nesting); qformat's reader allows at most 8 levels.
    array_head = Struct("elem_type" / u32, "count" / u64)
    array = Struct(
        "elem_type" / u32,
        "count" / u64,
        "items" / Array(this.count, Switch(this.elem_type, {**scalar_cases, 9: LazyBound(lambda: array)},
                                           default=Error)),
    )
    value_cases = {**scalar_cases, 9: array}

    # ==== Key/value pair ==========================================================================
    # string key (non-empty, unique in the file), u32 value type, value.
    kv = Struct("key" / string, "type" / u32, "value" / Switch(this.type, value_cases, default=Error))

    # ==== Header ==================================================================================
    # magic "GGUF", u32 version (2 or 3; v1 used u32 counts and is not supported),
    # u64 tensor count, u64 key/value count. The key/value pairs follow, then the tensor infos.
    header = Struct("magic" / Const(MAGIC), "version" / u32, "n_tensors" / u64, "n_kv" / u64)

    # ==== Tensor info =============================================================================
    # string name (1..63 bytes), u32 n_dims (1..4), n_dims x u64 ne (innermost first), u32 ggml
    # type, u64 data offset relative to the data section (a multiple of the alignment).
    tensor_info = Struct(
        "name" / string,
        "n_dims" / u32,
        "ne" / Array(this.n_dims, u64),
        "type" / u32,
        "offset" / u64,
    )

    # ==== Everything before the data =============================================================
    # header, n_kv key/value pairs, n_tensors tensor infos (the padding and data follow).
    file_head = Struct(
        "header" / header,
        "kv" / Array(this.header.n_kv, kv),
        "tensor_infos" / Array(this.header.n_tensors, tensor_info),
    )

    # ==== Padding and data ========================================================================
    # After the last tensor info: zero bytes up to the next multiple of the alignment
    # (`general.alignment`, UINT32 power of two, default 32). Then each tensor's bytes at its offset,
    # each followed by zero padding to the alignment (the layout ggml writes and requires).

    return SimpleNamespace(
        byteorder=byteorder, u32=u32, u64=u64, string=string, scalar_cases=scalar_cases,
        array_head=array_head, array=array, value_cases=value_cases, kv=kv, header=header,
        tensor_info=tensor_info, file_head=file_head,
    )


LITTLE = build("<")
BIG = build(">")

HEADER = LITTLE.header
STRING = LITTLE.string
KV = LITTLE.kv
ARRAY = LITTLE.array
ARRAY_HEAD = LITTLE.array_head
TENSOR_INFO = LITTLE.tensor_info
U32 = LITTLE.u32
FILE_HEAD = LITTLE.file_head


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment
