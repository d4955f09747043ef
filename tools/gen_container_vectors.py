#!/usr/bin/env python3
"""Write the GGUF container vector corpus under spec/vectors/{valid,invalid}/ (rules: spec/container.md).

Every byte is packed here with ``struct`` -- never with qformat's writer -- so the corpus is independent
of the code it tests. Output is deterministic: rerunning reproduces the same bytes, and
``tests/test_container_vectors.py`` checks the committed files against a fresh ``generate()``.

    python tools/gen_container_vectors.py          # (re)write both folders and their manifest.json
    python tools/gen_container_vectors.py --probe  # how ggml's C reader and gguf-py treat each vector
                                                   # (the evidence for spec/container.md §16)

* ``valid/<name>.gguf`` + ``valid/manifest.json``: what a reader must report for each file (version,
  alignment, byte order, data offset, every key with its type and value, every tensor with shape, type,
  absolute offset, size, sha256 of its bytes and -- for plain element types -- its values), and whether
  ggml's C reader and gguf-py can be expected to read the file too.
* ``invalid/<name>.gguf`` + ``invalid/manifest.json``: each file breaks exactly one rule of spec §14;
  the manifest names the ``qformat.errors`` class a reader raises, the spec section, the byte offset
  the error must carry (by §14's conventions, computed from the fields packed here) and why.

JSON encoding of values: integers and booleans as JSON numbers/booleans, strings as strings, floats as
``float.hex()`` strings (``"nan"``, ``"inf"``, ``"-inf"`` included) so no value depends on decimal
printing; an ARRAY is ``{"elem_type": NAME, "value": [...]}`` whose items are themselves such objects
when the element type is ARRAY.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
VALID_DIR = Path("spec/vectors/valid")
INVALID_DIR = Path("spec/vectors/invalid")

# --- the 13 metadata value types (spec §4) ------------------------------------------------------
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
VT_NAME = ["UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY",
           "UINT64", "INT64", "FLOAT64"]
# struct codes of the fixed-width types; BOOL is packed as an unsigned byte so 0/1 are explicit
VT_FMT = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f", BOOL: "B",
          UINT64: "Q", INT64: "q", FLOAT64: "d"}

# --- the few ggml tensor types the corpus uses (ids and geometry as in spec §11) ----------------------
F32, F16, Q4_0, Q8_0, I8, I16, I32, I64, F64, Q4_K, BF16 = 0, 1, 2, 8, 24, 25, 26, 27, 28, 12, 30
TT_NAME = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q8_0: "Q8_0", I8: "I8", I16: "I16", I32: "I32", I64: "I64",
           F64: "F64", Q4_K: "Q4_K", BF16: "BF16"}
TT_BLOCK = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q8_0: (32, 34), I8: (1, 1), I16: (1, 2), I32: (1, 4),
            I64: (1, 8), F64: (1, 8), Q4_K: (256, 144), BF16: (1, 2)}
TT_FMT = {F32: "f", F16: "e", I8: "b", I16: "h", I32: "i", I64: "q", F64: "d"}
FLOAT_TYPES = (F32, F16, F64, BF16)

U64_MAX = 2**64 - 1


class V(NamedTuple):
    """A typed metadata value: ``type`` is a value-type id; for ARRAY, ``value`` is ``(elem_type, items)``."""

    type: int
    value: Any


def arr(elem_type: int, items: Sequence[Any]) -> V:
    return V(ARRAY, (elem_type, list(items)))


class Buf:
    """Bytes under construction in one byte order; remembers where every field starts and ends."""

    def __init__(self, endian: str = "<"):
        self.e = endian
        self.b = bytearray()
        self.fields: list[tuple[str, int, int]] = []

    def __len__(self) -> int:
        return len(self.b)

    def span(self, label: str) -> tuple[int, int]:
        """(start, end) of the first field with this label."""
        for lab, start, end in self.fields:
            if lab == label:
                return start, end
        raise KeyError(label)

    def at(self, label: str) -> int:
        return self.span(label)[0]

    def put(self, label: str, fmt: str, *vals: Any) -> None:
        start = len(self.b)
        self.b += struct.pack(self.e + fmt, *vals)
        self.fields.append((label, start, len(self.b)))

    def raw(self, label: str, data: bytes) -> None:
        start = len(self.b)
        self.b += data
        self.fields.append((label, start, len(self.b)))

    def string(self, label: str, s: Any, length: Optional[int] = None) -> None:
        data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        self.put(f"{label}.len", "Q", len(data) if length is None else length)
        self.raw(f"{label}.bytes", data)

    def header(self, n_tensors: int, n_kv: int, version: int = 3, magic: bytes = b"GGUF") -> None:
        self.raw("magic", magic)
        self.put("version", "I", version)
        self.put("n_tensors", "Q", n_tensors)
        self.put("n_kv", "Q", n_kv)

    def value(self, label: str, v: V) -> None:
        if v.type == STRING:
            self.string(label, v.value)
        elif v.type == ARRAY:
            elem_type, items = v.value
            self.put(f"{label}.elem_type", "I", elem_type)
            self.put(f"{label}.count", "Q", len(items))
            for i, item in enumerate(items):
                self.value(f"{label}[{i}]", item if elem_type == ARRAY else V(elem_type, item))
        else:
            self.put(label, VT_FMT[v.type], v.value)

    def kv(self, key: Any, v: V, label: str = "kv") -> None:
        self.string(f"{label}.key", key)
        self.put(f"{label}.type", "I", v.type)
        self.value(f"{label}.value", v)

    def tensor_info(self, name: Any, ne: Sequence[int], ttype: int, offset: int, label: str = "ti",
                    n_dims: Optional[int] = None) -> None:
        self.string(f"{label}.name", name)
        self.put(f"{label}.n_dims", "I", len(ne) if n_dims is None else n_dims)
        for j, d in enumerate(ne):
            self.put(f"{label}.ne[{j}]", "Q", d)
        self.put(f"{label}.type", "I", ttype)
        self.put(f"{label}.offset", "Q", offset)

    def pad(self, alignment: int, label: str = "padding", fill: int = 0) -> None:
        n = -len(self.b) % alignment
        if n:
            self.raw(label, bytes([fill]) * n)


# --- tensors ---------------------------------------------------------------------------------------

class T(NamedTuple):
    """A tensor to store: ``ne`` in file order (ne[0] innermost); ``values`` for plain types, else raw bytes."""

    name: str
    ne: tuple[int, ...]
    type: int
    values: Any  # list of numbers (plain types) or bytes (block types)


def nbytes_of(t: T) -> int:
    elems, size = TT_BLOCK[t.type]
    n = math.prod(t.ne)
    return n // elems * size


def tensor_bytes(t: T, endian: str) -> bytes:
    if t.type == BF16:  # the upper half of the float32 bits (values are chosen exactly representable)
        halves = [struct.unpack("<I", struct.pack("<f", x))[0] >> 16 for x in t.values]
        assert all(struct.unpack("<f", struct.pack("<I", h << 16))[0] == x for h, x in zip(halves, t.values))
        return struct.pack(f"{endian}{len(halves)}H", *halves)
    if t.type in TT_FMT:
        return struct.pack(f"{endian}{len(t.values)}{TT_FMT[t.type]}", *t.values)
    assert len(t.values) == nbytes_of(t)
    return bytes(t.values)


def pattern(n: int, seed: int) -> bytes:
    """Deterministic filler bytes (block-quantized tensor data whose content does not matter)."""
    return bytes((i * 37 + seed * 11 + (i >> 3)) & 0xFF for i in range(n))


def build(kvs: Sequence[tuple[Any, V]], tensors: Sequence[T] = (), *, endian: str = "<", version: int = 3,
          alignment: int = 32, offsets: Optional[Sequence[int]] = None, trailing: bytes = b"",
          fill: int = 0) -> Buf:
    """A complete, well-formed file: header, KVs, tensor infos, zero padding, tensor data.

    ``offsets`` (relative to the data section) default to ggml's packed layout: each tensor starts at
    the previous one's end rounded up to the alignment. ``fill`` is the padding byte (MUST be 0 for a
    writer; one valid vector uses another to pin down that readers do not inspect padding).
    """
    buf = Buf(endian)
    buf.header(len(tensors), len(kvs), version)
    for i, (k, v) in enumerate(kvs):
        buf.kv(k, v, f"kv{i}")
    if offsets is None:
        offsets, pos = [], 0
        for t in tensors:
            offsets.append(pos)
            pos += nbytes_of(t) + (-nbytes_of(t) % alignment)
    for i, (t, off) in enumerate(zip(tensors, offsets)):
        buf.tensor_info(t.name, t.ne, t.type, off, f"ti{i}")
    if tensors:
        buf.pad(alignment, "padding.data", fill)
        data_start = len(buf)
        for i, (t, off) in enumerate(zip(tensors, offsets)):
            gap = data_start + off - len(buf)
            assert gap >= 0, "offsets must be increasing and non-overlapping"
            if gap:
                buf.raw(f"padding.t{i}", bytes([fill]) * gap)
            buf.raw(f"data.t{i}", tensor_bytes(t, endian))
        buf.pad(alignment, "padding.end", fill)
    if trailing:
        buf.raw("trailing", trailing)
    return buf


# --- manifest encoding -----------------------------------------------------------------------------

def enc_scalar(vtype: int, x: Any) -> Any:
    if vtype in (FLOAT32, FLOAT64):
        return float(x).hex()
    if vtype == BOOL:
        return bool(x)
    return x


def enc_array(v: V) -> dict:
    elem_type, items = v.value
    if elem_type == ARRAY:
        return {"elem_type": VT_NAME[ARRAY], "value": [enc_array(it) for it in items]}
    return {"elem_type": VT_NAME[elem_type], "value": [enc_scalar(elem_type, it) for it in items]}


def enc_kv(key: str, v: V) -> dict:
    out: dict[str, Any] = {"key": key, "type": VT_NAME[v.type]}
    if v.type == ARRAY:
        out.update(enc_array(v))
    else:
        out["value"] = enc_scalar(v.type, v.value)
    return out


def f32(x: float) -> float:
    """x rounded to float32 (so the manifest states the value actually stored)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f16(x: float) -> float:
    return struct.unpack("<e", struct.pack("<e", x))[0]


# --- the valid corpus -------------------------------------------------------------------------------

class Valid(NamedTuple):
    name: str
    about: str
    kvs: list
    tensors: list
    endian: str = "<"
    version: int = 3
    alignment: int = 32
    offsets: Optional[list] = None
    trailing: bytes = b""
    fill: int = 0
    ggml_c: Optional[str] = None  # None: ggml's C reader reads it; else why it cannot
    gguf_py: Optional[str] = None  # None: gguf-py reads it with the same values; else why not


def _every_type_kvs() -> list:
    return [
        ("general.architecture", V(STRING, "llama")),
        ("t.uint8", V(UINT8, 255)),
        ("t.int8", V(INT8, -128)),
        ("t.uint16", V(UINT16, 65535)),
        ("t.int16", V(INT16, -32768)),
        ("t.uint32", V(UINT32, 2**32 - 1)),
        ("t.int32", V(INT32, -(2**31))),
        ("t.float32", V(FLOAT32, f32(3.4028234663852886e38))),
        ("t.float32.denormal", V(FLOAT32, 2.0**-149)),
        ("t.float32.negzero", V(FLOAT32, -0.0)),
        ("t.float32.nan", V(FLOAT32, math.nan)),
        ("t.float32.inf", V(FLOAT32, math.inf)),
        ("t.bool.true", V(BOOL, 1)),
        ("t.bool.false", V(BOOL, 0)),
        ("t.string", V(STRING, "h\u00e9llo \u2713 \U0001f600")),
        ("t.string.empty", V(STRING, "")),
        ("t.string.nul", V(STRING, "a\x00b")),
        ("t.uint64", V(UINT64, U64_MAX)),
        ("t.int64", V(INT64, -(2**63))),
        ("t.float64", V(FLOAT64, math.pi)),
        ("t.float64.neginf", V(FLOAT64, -math.inf)),
        ("a.uint8", arr(UINT8, [0, 1, 255])),
        ("a.int8", arr(INT8, [-128, 0, 127])),
        ("a.uint16", arr(UINT16, [0, 65535])),
        ("a.int16", arr(INT16, [-32768, 32767])),
        ("a.uint32", arr(UINT32, [0, 2**32 - 1, 7])),
        ("a.int32", arr(INT32, [-(2**31), 2**31 - 1])),
        ("a.float32", arr(FLOAT32, [f32(0.1), -2.5, 0.0])),
        ("a.bool", arr(BOOL, [1, 0, 1, 1])),
        ("a.string", arr(STRING, ["", "a", "\u00fc\u00f1\u00ee", "tab\tnewline\n"])),
        ("a.uint64", arr(UINT64, [U64_MAX, 0])),
        ("a.int64", arr(INT64, [-(2**63), 2**63 - 1])),
        ("a.float64", arr(FLOAT64, [1e308, -1e-308, 0.5])),
        ("a.empty.int32", arr(INT32, [])),
        ("a.empty.string", arr(STRING, [])),
        ("general.quantization_version", V(UINT32, 2)),
        ("general.file_type", V(UINT32, 0)),
        ("split.no", V(UINT16, 0)),
        ("split.count", V(UINT16, 1)),
        ("split.tensors.count", V(INT32, 1)),
        ("\u00fcnicode.\u952e", V(UINT8, 1)),
    ]


def _f32_tensor(name: str, ne: tuple, seed: int = 0) -> T:
    n = math.prod(ne)
    return T(name, ne, F32, [f32((i - n / 2) * 0.25 + seed) for i in range(n)])


def _f16_tensor(name: str, ne: tuple, seed: int = 0) -> T:
    n = math.prod(ne)
    return T(name, ne, F16, [f16((i % 17 - 8) * 0.125 + seed) for i in range(n)])


def _nested_kvs() -> list:
    def deep(levels: int) -> V:
        v = arr(UINT8, [levels])
        for _ in range(levels - 1):
            v = arr(ARRAY, [v])
        return v

    return [
        ("n.int16x2", arr(ARRAY, [arr(INT16, [1, -2, 3]), arr(INT16, []), arr(INT16, [32767])])),
        ("n.mixed", arr(ARRAY, [arr(UINT8, [1, 2]), arr(STRING, ["x", ""]), arr(FLOAT64, [0.25])])),
        ("n.strings", arr(ARRAY, [arr(STRING, ["a", "bc"]), arr(STRING, ["\u00e9"])])),
        ("n.depth3", arr(ARRAY, [arr(ARRAY, [arr(BOOL, [1, 0])]), arr(ARRAY, [])])),
        ("n.depth8", deep(8)),  # the deepest nesting qformat accepts (spec §5)
        ("n.empty_outer", arr(ARRAY, [])),
    ]


VALID: list[Valid] = [
    Valid("every_value_type", "every scalar type with boundary values, arrays of every element type, empty "
          "string and arrays, NaN/inf/-0.0, NUL inside a string, a non-ASCII key, the standard keys",
          _every_type_kvs(), [_f32_tensor("t", (4,))]),
    Valid("nested_arrays", "ARRAY of ARRAY: same and mixed inner types, empty inner/outer, depth 8 (the limit)",
          [("general.architecture", V(STRING, "test"))] + _nested_kvs(), [],
          ggml_c="ggml's C reader rejects nested arrays",
          gguf_py="gguf-py flattens nested arrays and keeps only the first inner array's type"),
    Valid("zero_tensors", "metadata only; the file ends right after the last KV (no padding), as gguf-py "
          "writes vocab files", [("general.architecture", V(STRING, "llama")), ("x", V(UINT32, 7))], []),
    Valid("header_only", "no KV pairs, no tensors: the 24-byte header is the whole file", [], []),
    Valid("ranks_1_to_4", "tensors of rank 1..4 incl. a scalar-like ne=[1], every plain element type (BF16 too), two "
          "block types, a 63-byte name and a non-ASCII name; packed layout, default alignment",
          [("general.architecture", V(STRING, "llama"))], [
              T("scalar", (1,), F32, [f32(-1.5)]),
              _f32_tensor("rank2", (3, 2)),
              _f16_tensor("rank3", (5, 3, 2)),
              _f32_tensor("rank4", (2, 3, 1, 2), 1),
              T("i8", (5,), I8, [-128, -1, 0, 1, 127]),
              T("i16", (3,), I16, [-32768, 0, 32767]),
              T("i32", (2, 2), I32, [-(2**31), 0, 1, 2**31 - 1]),
              T("i64", (2,), I64, [-(2**63), 2**63 - 1]),
              T("f64", (3,), F64, [math.pi, -0.0, 1e-300]),
              T("bf16", (4,), BF16, [1.0, -2.5, 0.15625, 3.0 * 2.0**100]),
              T("q4_0", (64, 2), Q4_0, pattern(4 * 18, 1)),
              T("q8_0", (32,), Q8_0, pattern(34, 2)),
              T("n" * 63, (2,), F16, [f16(0.5), f16(-2.0)]),
              T("\u00e9t\u00e9.weight", (1, 1), F32, [f32(7.0)]),
          ]),
    Valid("align_1", "general.alignment = 1: no padding anywhere, odd-sized tensors back to back",
          [("general.alignment", V(UINT32, 1))],
          [_f16_tensor("a", (3,)), T("b", (5,), I8, [1, 2, 3, 4, 5]), _f32_tensor("c", (1,))], alignment=1),
    Valid("align_64", "general.alignment = 64, placed after other keys",
          [("general.architecture", V(STRING, "llama")), ("general.alignment", V(UINT32, 64))],
          [_f32_tensor("a", (3,)), _f16_tensor("b", (40,)), _f32_tensor("c", (2, 2))], alignment=64),
    Valid("align_max_zero_tensors", "general.alignment = 2^24 (qformat's bound) with no tensors",
          [("general.alignment", V(UINT32, 2**24))], [], alignment=2**24),
    Valid("big_endian", "every number big-endian, tensor data included (gguf-py's endianess=BIG layout)",
          [("general.architecture", V(STRING, "llama")), ("b.uint16", V(UINT16, 0x1234)),
           ("b.int32", V(INT32, -2)), ("b.float32", V(FLOAT32, f32(1.1))), ("b.float64", V(FLOAT64, -math.e)),
           ("b.uint64", V(UINT64, 0x0102030405060708)), ("b.bool", V(BOOL, 1)),
           ("b.a.uint32", arr(UINT32, [1, 0x01020304])), ("b.a.string", arr(STRING, ["big", "endian"])),
           ("b.a.float32", arr(FLOAT32, [f32(0.3), -1.0]))],
          [_f32_tensor("w", (4, 2)), _f16_tensor("h", (3,)), T("q", (32,), Q8_0, pattern(34, 3)),
           T("bf", (2,), BF16, [-1.0, 0.5]), T("i", (2,), I32, [1, -2])],
          endian=">", ggml_c="ggml's C reader reads only host byte order"),
    Valid("version2", "GGUF version 2 (same layout as 3)",
          [("general.architecture", V(STRING, "llama")), ("v", arr(INT32, [2]))], [_f32_tensor("t", (2,))],
          version=2),
    Valid("trailing_bytes", "bytes after the last tensor's padding are ignored",
          [("general.architecture", V(STRING, "llama"))], [_f32_tensor("t", (3,))], trailing=b"TRAILER\xff"),
    Valid("nonzero_padding", "every padding byte is 0xA5: readers do not inspect padding (spec §9.2), "
          "though writers MUST write zeros", [("general.architecture", V(STRING, "llama"))],
          [_f32_tensor("a", (3,)), _f16_tensor("b", (5,))], fill=0xA5),
    Valid("tensor_name_nul", "a tensor name with a NUL inside is read whole (writers MUST NOT write one)",
          [("general.architecture", V(STRING, "llama"))], [_f32_tensor("a\x00b", (2,))],
          ggml_c="ggml's C reader truncates tensor names at the first NUL"),
    Valid("gapped_offsets", "aligned, increasing offsets with unused gaps (first tensor at 32, second at 128): "
          "any non-overlapping increasing layout is valid, not only ggml's packed one",
          [("general.architecture", V(STRING, "llama"))],
          [_f32_tensor("a", (3,)), _f32_tensor("b", (9,))], offsets=[32, 128],
          ggml_c="ggml's C reader requires the packed layout (offset = sum of previous padded sizes)"),
]


def _tensor_entry(t: T, abs_offset: int, endian: str) -> dict:
    data = tensor_bytes(t, endian)
    entry: dict[str, Any] = {
        "name": t.name,
        "shape": list(reversed(t.ne)),
        "type": TT_NAME[t.type],
        "offset": abs_offset,
        "nbytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if t.type in TT_FMT or t.type == BF16:
        entry["values"] = [float(x).hex() if t.type in FLOAT_TYPES else x for x in t.values]
    return entry


def valid_files() -> tuple[dict[str, bytes], list[dict]]:
    files, manifest = {}, []
    for v in VALID:
        declared = dict(v.kvs).get("general.alignment", V(UINT32, 32)).value
        assert declared == v.alignment, f"{v.name}: general.alignment and the layout's alignment differ"
        buf = build(v.kvs, v.tensors, endian=v.endian, version=v.version, alignment=v.alignment,
                    offsets=v.offsets, trailing=v.trailing, fill=v.fill)
        data = bytes(buf.b)
        starts = {lab: s for lab, s, _ in buf.fields}
        # end of the last KV / tensor info (the header when there are none)
        infos_end = max((e for lab, _, e in buf.fields if lab.startswith(("ti", "kv"))), default=24)
        # spec §10: with tensors the data section starts at the next multiple of the alignment; with none
        # it is empty and starts right after the last KV (ggml's answer; no padding is required)
        data_offset = infos_end + (-infos_end % v.alignment) if v.tensors else infos_end
        tensors = []
        for i, t in enumerate(v.tensors):
            tensors.append(_tensor_entry(t, starts[f"data.t{i}"], v.endian))
        files[f"{v.name}.gguf"] = data
        manifest.append({
            "file": f"{v.name}.gguf",
            "about": v.about,
            "version": v.version,
            "byteorder": v.endian,
            "alignment": v.alignment,
            "data_offset": data_offset,
            "file_size": len(data),
            "ggml_c": v.ggml_c,
            "gguf_py": v.gguf_py,
            "keys": [enc_kv(k, val) for k, val in v.kvs],
            "tensors": tensors,
        })
    return files, manifest


# --- the invalid corpus -----------------------------------------------------------------------------

class Bad(NamedTuple):
    file: str
    error: str  # class name in qformat.errors
    why: str
    data: bytes
    offset: int  # where the rule is broken, by the conventions of spec §14

    @property
    def rule(self) -> str:
        return RULE_NUMBERS[self.error]


# spec §14 numbering, one rule per class (tests/test_container_vectors.py checks it against the spec)
RULE_NUMBERS = {
    "BadMagic": "14.1", "UnsupportedVersion": "14.2", "Truncated": "14.3", "CountTooLarge": "14.4",
    "UnknownValueType": "14.5", "NestingTooDeep": "14.6", "BadBool": "14.7", "BadUTF8": "14.8",
    "EmptyKey": "14.9", "DuplicateKey": "14.10", "BadAlignment": "14.11", "DuplicateTensor": "14.12",
    "BadTensorName": "14.13", "BadDims": "14.14", "BadTensorType": "14.15", "BadRowLength": "14.16",
    "BadTensorOffset": "14.17", "TensorDataTruncated": "14.18",
}


class Cases:
    """Collects invalid vectors; ``at`` is an absolute offset or the label of a field of ``data``."""

    def __init__(self) -> None:
        self.items: list[Bad] = []

    def add(self, name: str, error: str, why: str, data: Any, at: Any) -> None:
        if isinstance(at, str):
            at = data.at(at)
        raw = bytes(data.b) if isinstance(data, Buf) else bytes(data)
        self.items.append(Bad(name + ".gguf", error, why, raw, at))


def _one_kv(key: Any, v: V, endian: str = "<", **hdr: Any) -> Buf:
    """Header + one KV pair labelled ``kv.*`` (``n_kv``/``n_tensors`` may be overridden)."""
    buf = Buf(endian)
    buf.header(hdr.get("n_tensors", 0), hdr.get("n_kv", 1), hdr.get("version", 3))
    buf.kv(key, v)
    return buf


def _one_tensor(name: Any = "t", ne: Sequence[int] = (4,), ttype: int = F32, offset: int = 0, *,
                data_len: Optional[int] = None, kvs: Sequence[tuple[str, V]] = (), alignment: int = 32,
                n_dims: Optional[int] = None) -> Buf:
    """One tensor info (labelled ``ti.*``), padding and ``data_len`` bytes of data (default 64)."""
    buf = Buf("<")
    buf.header(1, len(kvs))
    for i, (k, v) in enumerate(kvs):
        buf.kv(k, v, f"kv{i}")
    buf.tensor_info(name, ne, ttype, offset, n_dims=n_dims)
    buf.pad(alignment)
    buf.raw("data", pattern(64 if data_len is None else data_len, 5))
    return buf


def _two_tensors(off0: int, n0: int, off1: int, n1: int, file_data: int) -> Buf:
    """Two F32 tensors (``ti0``, ``ti1``) of n0/n1 elements at the given relative offsets."""
    buf = Buf("<")
    buf.header(2, 0)
    buf.tensor_info("a", (n0,), F32, off0, "ti0")
    buf.tensor_info("b", (n1,), F32, off1, "ti1")
    buf.pad(32)
    buf.raw("data", pattern(file_data, 6))
    return buf


def _truncation_base() -> Buf:
    """A valid file in which a cut anywhere after its first KV leaves every count check satisfiable.

    The first KV is a long string and the first tensor has a long name, so a reader that checks n_kv and
    n_tensors against the remaining bytes with any correct lower bound per item (spec §14.4) still
    reaches the cut and reports it as Truncated -- the vectors do not depend on that bound.
    """
    kvs = [
        ("general.description", V(STRING, "filler " * 100)),
        ("u32", V(UINT32, 0xDEADBEEF)),
        ("arr.u8", arr(UINT8, [1, 2, 3, 4, 5, 6, 7, 8])),
        ("arr.str", arr(STRING, ["alpha", "beta", "gamma"])),
        ("flag", V(BOOL, 1)),
    ]
    tensors = [_f32_tensor("first.tensor.with.a.long.name.to.keep.the.bounds.satisfiable", (4, 2)),
               _f32_tensor("w", (3, 2))]
    return build(kvs, tensors)


# (field of the base file to cut inside, "mid"/"start", expected class, field the error points at).
# A cut inside a field whose length was announced by a count (string bytes, array elements) is a count
# the remaining bytes cannot hold: CountTooLarge at that count; a cut inside a fixed-width field is
# Truncated at that field; a cut in the data (or the padding before it) is TensorDataTruncated at the
# offset field of the first tensor whose bytes are missing.
_CUTS = [
    ("magic", "mid", "Truncated", "magic"),
    ("version", "mid", "Truncated", "version"),
    ("n_tensors", "mid", "Truncated", "n_tensors"),
    ("kv1.key.len", "mid", "Truncated", "kv1.key.len"),
    ("kv1.key.bytes", "mid", "CountTooLarge", "kv1.key.len"),
    ("kv1.type", "mid", "Truncated", "kv1.type"),
    ("kv1.value", "mid", "Truncated", "kv1.value"),
    ("kv2.value.elem_type", "mid", "Truncated", "kv2.value.elem_type"),
    ("kv2.value.count", "mid", "Truncated", "kv2.value.count"),
    ("kv2.value[7]", "start", "CountTooLarge", "kv2.value.count"),
    ("kv3.value[2].len", "mid", "Truncated", "kv3.value[2].len"),
    ("kv3.value[2].bytes", "mid", "CountTooLarge", "kv3.value[2].len"),
    ("kv4.value", "start", "Truncated", "kv4.value"),
    ("ti1.name.len", "mid", "Truncated", "ti1.name.len"),
    ("ti1.name.bytes", "start", "CountTooLarge", "ti1.name.len"),
    ("ti1.n_dims", "mid", "Truncated", "ti1.n_dims"),
    ("ti1.ne[0]", "mid", "Truncated", "ti1.ne[0]"),
    ("ti1.ne[1]", "mid", "Truncated", "ti1.ne[1]"),
    ("ti1.type", "mid", "Truncated", "ti1.type"),
    ("ti1.offset", "mid", "Truncated", "ti1.offset"),
    ("padding.data", "mid", "TensorDataTruncated", "ti0.offset"),
    ("data.t0", "mid", "TensorDataTruncated", "ti0.offset"),
    ("data.t1", "mid", "TensorDataTruncated", "ti1.offset"),
]


def _truncations(c: Cases) -> None:
    base = _truncation_base()
    c.add("truncated_empty_file", "Truncated", "zero-byte file", b"", 0)
    for label, where, error, at in _CUTS:
        s, e = base.span(label)
        cut = s if where == "start" or e - s < 2 else s + (e - s) // 2
        safe = label.replace("[", "_").replace("]", "").replace(".", "_")
        c.add(f"truncated_in_{safe}", error, f"the base file cut at byte {cut}, inside field {label} "
              f"(bytes {s}..{e})", base.b[:cut], base.at(at))
    # the n_kv field is cut in a file announcing no tensors: with tensors announced, a reader that checks
    # n_tensors right after reading it (spec §14.4) reports CountTooLarge first, so that cut is ambiguous
    c.add("truncated_in_n_kv", "Truncated", "header cut at byte 20, inside n_kv (n_tensors=0)",
          _header(0, 5).b[:20], 16)
    # big-endian twin of one cut, so the byte-order detection path is covered too
    be = build([("k", V(UINT32, 1)), ("s", V(STRING, "x" * 40))], [], endian=">")
    c.add("truncated_big_endian", "Truncated", "big-endian file cut inside a KV type",
          be.b[:be.at("kv1.type") + 2], be.at("kv1.type"))


def _header(n_tensors: int, n_kv: int, version: int = 3, endian: str = "<", magic: bytes = b"GGUF") -> Buf:
    buf = Buf(endian)
    buf.header(n_tensors, n_kv, version, magic)
    return buf


def _array_kv_head(elem_type: int, count: int, key: str = "k") -> Buf:
    """A one-KV file up to and including an ARRAY value's count; the caller appends (or omits) elements."""
    b = _header(0, 1)
    b.string("key", key)
    b.put("type", "I", ARRAY)
    b.put("elem", "I", elem_type)
    b.put("count", "Q", count)
    return b


def invalid_cases() -> list[Bad]:
    c = Cases()
    add = c.add
    ok_kv = [("general.architecture", V(STRING, "llama"))]

    # 14.1 magic
    add("magic_ggml", "BadMagic", "starts with 'GGML' (a legacy ggml file)", _header(0, 0, magic=b"GGML"), 0)
    add("magic_lowercase", "BadMagic", "starts with 'gguf'", _header(0, 0, magic=b"gguf"), 0)
    add("magic_reversed", "BadMagic", "magic read as a big-endian word ('FUGG')", _header(0, 0, magic=b"FUGG"), 0)
    add("magic_short_garbage", "BadMagic", "two bytes that are not a prefix of 'GGUF'", b"PK", 0)

    # 14.2 version
    for ver, why in [(0, "version 0"), (1, "version 1 (counts were u32)"), (4, "version 4 (newer than 3)"),
                     (0xFFFFFFFF, "version 2^32-1"), (0x00010003, "version 65539")]:
        add(f"version_{ver}", "UnsupportedVersion", why, build(ok_kv, [], version=ver), 4)
    add("version_1_with_u32_counts", "UnsupportedVersion", "a real GGUFv1 layout (u32 counts)",
        b"GGUF" + struct.pack("<III", 1, 0, 0), 4)
    add("version_4_big_endian", "UnsupportedVersion", "big-endian file claiming version 4",
        build(ok_kv, [], version=4, endian=">"), 4)
    add("version_0_big_endian_counts", "UnsupportedVersion",
        "version field 0 followed by big-endian counts (0 is never a byte order hint)",
        b"GGUF" + struct.pack(">IQQ", 0, 0, 0), 4)

    # 14.3 truncation at every field
    _truncations(c)

    # 14.4 counts the remaining bytes cannot hold. The string-length files carry 40 more bytes so that the
    # n_kv / n_tensors check (one item) passes and the length itself is what is too large.
    for n, tag in [(2**40, "2p40"), (2**63, "2p63"), (U64_MAX, "2p64m1")]:
        add(f"count_n_kv_{tag}", "CountTooLarge", f"n_kv = {n}", _header(0, n), 16)
        add(f"count_n_tensors_{tag}", "CountTooLarge", f"n_tensors = {n}", _header(n, 0), 8)
        b = _array_kv_head(UINT8, n)
        b.raw("elems", b"\x01\x02\x03")
        add(f"count_array_u8_{tag}", "CountTooLarge", f"ARRAY of UINT8 with count {n}", b, "count")
        b = _array_kv_head(STRING, n)
        b.string("s0", "a")
        add(f"count_array_string_{tag}", "CountTooLarge", f"ARRAY of STRING with count {n}", b, "count")
        b = _header(0, 1)
        b.string("key", "k" * 40, length=n)
        add(f"count_key_length_{tag}", "CountTooLarge", f"key length {n}", b, "key.len")
        b = _header(0, 1)
        b.string("key", "k")
        b.put("type", "I", STRING)
        b.string("val", "abc", length=n)
        add(f"count_string_length_{tag}", "CountTooLarge", f"STRING value length {n}", b, "val.len")
        b = _header(1, 0)
        b.string("name", "t" * 40, length=n)
        add(f"count_tensor_name_length_{tag}", "CountTooLarge", f"tensor name length {n}", b, "name.len")
    b = _array_kv_head(ARRAY, 2**40)
    add("count_array_of_arrays_2p40", "CountTooLarge", "ARRAY of ARRAY with count 2^40", b, "count")
    b = _array_kv_head(STRING, 2)
    b.string("s0", "ok")
    b.string("s1", "xy", length=2**63)
    add("count_array_string_elem_length_2p63", "CountTooLarge", "second string of a string array has length 2^63",
        b, "s1.len")
    add("count_n_kv_1000_small_file", "CountTooLarge", "n_kv = 1000 in a 41-byte file",
        _one_kv("k", V(UINT32, 1), n_kv=1000), "n_kv")
    b = _array_kv_head(UINT64, 4)
    b.raw("elems", bytes(16))
    add("count_array_u64_short", "CountTooLarge", "ARRAY of 4 UINT64 with 16 bytes left", b, "count")

    # 14.5 value types
    for t in (13, 255, 0xFFFFFFFF):
        b = _header(0, 1)
        b.string("key", "k")
        b.put("type", "I", t)
        b.raw("val", bytes(8))
        add(f"value_type_{t}", "UnknownValueType", f"KV value type {t}", b, "type")
    b = _array_kv_head(13, 1)
    b.raw("val", bytes(8))
    add("value_type_array_elem_13", "UnknownValueType", "array element type 13", b, "elem")
    b = _array_kv_head(ARRAY, 1)
    b.put("inner.elem", "I", 99)
    b.put("inner.count", "Q", 1)
    b.raw("val", bytes(8))
    add("value_type_nested_elem_99", "UnknownValueType", "inner array element type 99", b, "inner.elem")

    # 14.6 nesting: the error points at the first array that is one level too deep (its element type)
    def nested(levels: int) -> Buf:
        b = _header(0, 1)
        b.string("key", "deep")
        b.put("type", "I", ARRAY)
        for depth in range(1, levels):
            b.put(f"depth{depth}.elem", "I", ARRAY)
            b.put(f"depth{depth}.count", "Q", 1)
        b.put(f"depth{levels}.elem", "I", UINT8)
        b.put(f"depth{levels}.count", "Q", 1)
        b.raw("val", b"\x07")
        return b

    add("nesting_9", "NestingTooDeep", "arrays nested 9 deep (limit 8)", nested(9), "depth9.elem")
    add("nesting_5000", "NestingTooDeep", "arrays nested 5000 deep (must not recurse)", nested(5000), "depth9.elem")

    # 14.7 bool: the offending byte
    add("bool_2", "BadBool", "BOOL value byte 2", _one_kv("b", V(BOOL, 2)), "kv.value")
    add("bool_255", "BadBool", "BOOL value byte 0xFF", _one_kv("b", V(BOOL, 255)), "kv.value")
    add("bool_array", "BadBool", "a 2 inside an array of BOOL", _one_kv("b", arr(BOOL, [0, 1, 1, 2, 0])),
        "kv.value[3]")
    add("bool_big_endian", "BadBool", "BOOL value 3 in a big-endian file", _one_kv("b", V(BOOL, 3), endian=">"),
        "kv.value")

    # 14.8 UTF-8: the first byte of the first invalid sequence
    for tag, raw, bad_at in [("lone_continuation", b"k\x80", 1), ("overlong", b"\xc0\x80", 0),
                             ("surrogate", b"\xed\xa0\x80", 0), ("cut_multibyte", b"ab\xe2\x82", 2),
                             ("ff", b"\xff", 0)]:
        b = _one_kv(raw, V(UINT8, 1))
        add(f"utf8_key_{tag}", "BadUTF8", f"key bytes {raw!r}", b, b.at("kv.key.bytes") + bad_at)
    b = _one_kv("s", V(STRING, b"a\xfeb"))
    add("utf8_string_value", "BadUTF8", "STRING value with byte 0xFE", b, b.at("kv.value.bytes") + 1)
    b = _one_kv("s", arr(STRING, ["a", "b", b"\xc3\x28"]))
    add("utf8_string_array_elem", "BadUTF8", "third string of a string array is invalid", b,
        b.at("kv.value[2].bytes"))
    b = _one_tensor(b"w\x80")
    add("utf8_tensor_name", "BadUTF8", "tensor name with byte 0x80", b, b.at("ti.name.bytes") + 1)

    # 14.9 / 14.10 keys: the start of the (second) key
    add("empty_key", "EmptyKey", "a key of length 0", _one_kv("", V(UINT8, 1)), "kv.key.len")
    b = _header(0, 2)
    b.kv("dup", V(UINT32, 1), "first")
    b.kv("dup", V(UINT32, 1), "second")
    add("duplicate_key", "DuplicateKey", "the same key twice with the same type", b, "second.key.len")
    b = _header(0, 3)
    b.kv("dup", V(UINT32, 1), "first")
    b.kv("other", V(UINT8, 1), "other")
    b.kv("dup", V(STRING, "x"), "second")
    add("duplicate_key_other_type", "DuplicateKey", "a key repeated with another type", b, "second.key.len")

    # 14.11 alignment: a wrong type points at the pair, a wrong value at the value
    for tag, v in [("int32", V(INT32, 32)), ("uint64", V(UINT64, 32)), ("string", V(STRING, "32")),
                   ("array", arr(UINT32, [32])), ("zero", V(UINT32, 0)), ("3", V(UINT32, 3)),
                   ("48", V(UINT32, 48)), ("2p25", V(UINT32, 2**25)), ("2p31", V(UINT32, 2**31))]:
        add(f"alignment_{tag}", "BadAlignment", f"general.alignment = {v}", _one_kv("general.alignment", v),
            "kv.value" if v.type == UINT32 else "kv.key.len")

    # 14.12 / 14.13 tensor names: the start of the tensor info
    b = _header(2, 0)
    b.tensor_info("w", (4,), F32, 0, "ti0")
    b.tensor_info("w", (4,), F32, 32, "ti1")
    b.pad(32)
    b.raw("data", bytes(64))
    add("duplicate_tensor", "DuplicateTensor", "two tensors named 'w'", b, "ti1.name.len")
    add("tensor_name_empty", "BadTensorName", "a tensor name of length 0", _one_tensor(""), "ti.name.len")
    add("tensor_name_64_bytes", "BadTensorName", "a 64-byte tensor name (max 63)", _one_tensor("x" * 64),
        "ti.name.len")
    add("tensor_name_64_bytes_utf8", "BadTensorName", "32 two-byte characters = 64 bytes",
        _one_tensor("\u00e9" * 32), "ti.name.len")

    # 14.14 dims: n_dims and overflows point at n_dims, a bad dimension at itself
    add("dims_n_dims_0", "BadDims", "n_dims = 0", _one_tensor(ne=(), n_dims=0), "ti.n_dims")
    add("dims_n_dims_5", "BadDims", "n_dims = 5", _one_tensor(ne=(1, 1, 1, 1, 4)), "ti.n_dims")
    add("dims_n_dims_2p32m1", "BadDims", "n_dims = 2^32-1", _one_tensor(ne=(4,), n_dims=0xFFFFFFFF), "ti.n_dims")
    add("dims_zero_ne0", "BadDims", "ne[0] = 0", _one_tensor(ne=(0,)), "ti.ne[0]")
    add("dims_zero_ne1", "BadDims", "ne = [4, 0] (ggml's C reader dies of SIGFPE here)", _one_tensor(ne=(4, 0)),
        "ti.ne[1]")
    add("dims_zero_ne3", "BadDims", "ne = [4, 1, 1, 0]", _one_tensor(ne=(4, 1, 1, 0)), "ti.ne[3]")
    add("dims_ne0_2p63", "BadDims", "ne[0] = 2^63 (negative as int64)", _one_tensor(ne=(2**63,)), "ti.ne[0]")
    add("dims_elements_overflow", "BadDims", "ne = [2^32, 2^32]: 2^64 elements", _one_tensor(ne=(2**32, 2**32)),
        "ti.n_dims")
    add("dims_bytes_overflow", "BadDims", "F32 ne = [2^62]: elements fit int64, 2^64 bytes do not",
        _one_tensor(ne=(2**62,)), "ti.n_dims")

    # 14.15 tensor types: the type field
    for t, why in [(42, "id 42 (one past the table)"), (4, "removed id 4 (Q4_2)"), (31, "removed id 31 (Q4_0_4_4)"),
                   (38, "removed id 38 (IQ4_NL_8_8)"), (2**31, "id 2^31 (negative as int32)"),
                   (0xFFFFFFFF, "id 2^32-1")]:
        add(f"tensor_type_{t}", "BadTensorType", why, _one_tensor(ne=(32,), ttype=t, data_len=1024), "ti.type")

    # 14.16 row length: ne[0]
    add("row_length_q4_0_16", "BadRowLength", "Q4_0 with ne[0] = 16 (block 32)", _one_tensor(ne=(16, 2), ttype=Q4_0),
        "ti.ne[0]")
    add("row_length_q4_k_128", "BadRowLength", "Q4_K with ne[0] = 128 (block 256)",
        _one_tensor(ne=(128,), ttype=Q4_K, data_len=256), "ti.ne[0]")

    # 14.17 / 14.18 layout: the offending tensor's offset field
    add("offset_misaligned", "BadTensorOffset", "offset 4 with alignment 32", _one_tensor(offset=4), "ti.offset")
    add("offset_misaligned_custom_alignment", "BadTensorOffset", "offset 32 with alignment 64",
        _one_tensor(offset=32, kvs=[("general.alignment", V(UINT32, 64))], alignment=64, data_len=128), "ti.offset")
    add("offset_out_of_order", "BadTensorOffset", "second tensor at 0 after a first at 64",
        _two_tensors(64, 8, 0, 8, 128), "ti1.offset")
    add("offset_overlap", "BadTensorOffset", "second tensor (at 32) overlaps the first (0..64)",
        _two_tensors(0, 16, 32, 8, 128), "ti1.offset")
    add("offset_same", "BadTensorOffset", "two tensors at the same offset", _two_tensors(0, 4, 0, 4, 64), "ti1.offset")
    add("offset_wraps", "BadTensorOffset", "offset 2^64-32 + 64 bytes wraps past 2^64",
        _one_tensor(ne=(16,), offset=2**64 - 32), "ti.offset")
    add("data_past_eof", "TensorDataTruncated", "16-byte tensor with 8 data bytes in the file",
        _one_tensor(ne=(4,), data_len=8), "ti.offset")
    add("data_offset_2p63", "TensorDataTruncated", "aligned offset 2^63 (no wrap, far past EOF)",
        _one_tensor(offset=2**63), "ti.offset")
    b = _header(1, 0)
    b.tensor_info("t", (4,), F32, 0)
    add("data_none", "TensorDataTruncated", "one tensor, the file ends right after its info", b, "ti.offset")
    add("data_second_tensor_past_eof", "TensorDataTruncated", "second tensor ends past EOF",
        _two_tensors(0, 8, 32, 8, 40), "ti1.offset")
    return c.items


def invalid_files() -> tuple[dict[str, bytes], list[dict]]:
    files, manifest = {}, []
    for c in invalid_cases():
        assert c.file not in files, f"duplicate vector name {c.file}"
        assert 0 <= c.offset <= len(c.data), c
        files[c.file] = c.data
        manifest.append({"file": c.file, "error": c.error, "rule": c.rule, "offset": c.offset, "why": c.why})
    return files, manifest


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=True) + "\n").encode("ascii")


def generate() -> dict[Path, bytes]:
    """Every corpus file (path relative to the repo root) and its bytes."""
    out: dict[Path, bytes] = {}
    for folder, (files, manifest) in [(VALID_DIR, valid_files()), (INVALID_DIR, invalid_files())]:
        for name, data in files.items():
            out[folder / name] = data
        out[folder / "manifest.json"] = _json(manifest)
    return out


# gguf_init_from_file itself (not _ggml.read_gguf, whose Python side would fail on invalid UTF-8 that ggml
# accepted); metadata only, as llama.cpp opens a model
_PROBE_GGML = """import os
from qformat import _ggml
L = _ggml.lib()
ctx = L.gguf_init_from_file(os.fsencode({p!r}), _ggml._InitParams(True, None))
print(bool(ctx))
if ctx:
    L.gguf_free(ctx)"""
_PROBE_GGUF_PY = """import gguf
try:
    gguf.GGUFReader({p!r}); print('accepted')
except Exception as e:
    print(type(e).__name__)"""


def probe_references() -> int:
    """Run every committed vector through ggml's C reader and gguf-py, each in its own subprocess
    (ggml aborts the process on some inputs; gguf-py hangs on some), and print what each did."""
    import subprocess

    def run(code: str, timeout: float) -> str:
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"hangs (>{timeout:g} s)"
        if r.returncode < 0:
            return f"killed by signal {-r.returncode}"
        if r.returncode:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            return f"exit {r.returncode}: {last[:60]}"
        return {"True": "accepted", "False": "rejected"}.get(r.stdout.strip(), r.stdout.strip())

    for folder in (VALID_DIR, INVALID_DIR):
        for e in json.loads((ROOT / folder / "manifest.json").read_text()):
            p = str(ROOT / folder / e["file"])
            ggml = run(_PROBE_GGML.format(p=p), 30)
            gpy = run(_PROBE_GGUF_PY.format(p=p), 5)
            want = e.get("error", "valid")
            print(f"{folder.name:7s} {e['file']:44s} {want:20s} ggml: {ggml:24s} gguf-py: {gpy}")
    return 0


def main() -> int:
    if "--probe" in sys.argv[1:]:
        return probe_references()
    wanted = generate()
    for folder in (VALID_DIR, INVALID_DIR):
        (ROOT / folder).mkdir(parents=True, exist_ok=True)
        for old in (ROOT / folder).glob("*.gguf"):
            if folder / old.name not in wanted:
                old.unlink()
    for rel, data in wanted.items():
        (ROOT / rel).write_bytes(data)
    n_valid = sum(1 for p in wanted if p.parent == VALID_DIR and p.suffix == ".gguf")
    n_invalid = sum(1 for p in wanted if p.parent == INVALID_DIR and p.suffix == ".gguf")
    print(f"wrote {n_valid} valid and {n_invalid} invalid vectors under spec/vectors/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
