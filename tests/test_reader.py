"""Reader strictness (a smoke test per rule; the full corpus lives in spec/vectors) and the API.

Files are assembled byte by byte here so every rule can be broken on purpose; each must raise its
own QFormatError subclass naming the byte offset, and nothing else may escape the reader.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qformat
from qformat import errors as E


def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)
def s(x): b = x.encode() if isinstance(x, str) else x; return u64(len(b)) + b  # noqa: E702
def kv(key, t, payload): return s(key) + u32(t) + payload


def ti(name, ne, t=0, off=0):
    return s(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(t) + u64(off)


def gguf(kvs=(), infos=(), data=b"", *, n_kv=None, n_tensors=None, version=3, align=32, pad=True):
    head = b"GGUF" + u32(version) + u64(len(infos) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos)
    if pad and infos:
        head += bytes(-len(head) % align)
    return head + data


@pytest.fixture
def opener(tmp_path):
    counter = iter(range(10**6))

    def _open(blob):
        p = tmp_path / f"f{next(counter)}.gguf"
        p.write_bytes(blob)
        return qformat.open(p)
    return _open


def raises(opener, blob, cls, offset=None):
    with pytest.raises(cls) as ei:
        opener(blob)
    assert type(ei.value) is cls, f"{type(ei.value).__name__}: {ei.value}"
    if offset is not None:
        assert ei.value.offset == offset, str(ei.value)
    assert f"[{cls.rule}]" in str(ei.value) and "byte " in str(ei.value)
    return ei.value


# --- header ---------------------------------------------------------------------------------

def test_magic_and_version(opener):
    raises(opener, b"GGUX" + bytes(20), E.BadMagic, 0)
    raises(opener, b"", E.Truncated, 0)
    raises(opener, b"GGU", E.Truncated, 0)
    raises(opener, b"GGUF\x03\x00", E.Truncated, 4)
    for v in (0, 1, 4, 0x01000000, 0x04000000, 0xFFFFFFFF):
        raises(opener, gguf(version=v), E.UnsupportedVersion, 4)
    assert opener(gguf(version=2)).version == 2


def test_counts_too_large_fail_fast(opener):
    for n in (1 << 63, (1 << 64) - 1, 1000):
        raises(opener, gguf(n_kv=n), E.CountTooLarge, 16)
        raises(opener, gguf(n_tensors=n), E.CountTooLarge, 8)
        raises(opener, gguf([kv("a", 9, u32(8) + u64(n))]), E.CountTooLarge, 24 + 9 + 4 + 4)
        raises(opener, gguf([kv("a", 9, u32(4) + u64(n))]), E.CountTooLarge, 24 + 9 + 4 + 4)
        raises(opener, gguf([kv("a", 8, u64(n))]), E.CountTooLarge, 24 + 9 + 4)
        raises(opener, gguf([u64(n) + b"a" + bytes(16)]), E.CountTooLarge, 24)
    # a string inside a string array whose length runs past the end
    raises(opener, gguf([kv("a", 9, u32(8) + u64(2) + s("x") + u64(100) + b"yy")]), E.CountTooLarge,
           24 + 9 + 4 + 12 + 9)
    raises(opener, gguf([kv("a", 9, u32(8) + u64(2) + s("x") + u64(1000) + b"yy")]), E.CountTooLarge)
    for huge in (1 << 62, 1 << 63, (1 << 64) - 1):  # the walk must not overflow an offset
        raises(opener, gguf([kv("a", 9, u32(8) + u64(3) + s("x") + u64(huge) + bytes(20))]), E.CountTooLarge,
               24 + 9 + 4 + 12 + 9)


def test_truncated_at_every_byte_raises_format_errors(opener, tmp_path):
    p = tmp_path / "full.gguf"
    qformat.write(p, {"w": np.arange(8, dtype=np.float32)},
                  {"s": "text", "n": np.int16(-3), "a": ["x", "yz"], "b": [True, False], "f": np.arange(3.0)})
    blob = p.read_bytes()
    seen = set()
    for cut in range(len(blob)):
        with pytest.raises(E.FormatError) as ei:
            opener(blob[:cut])
        assert ei.value.offset is not None and 0 <= ei.value.offset <= cut
        seen.add(type(ei.value))
    assert {E.Truncated, E.CountTooLarge, E.TensorDataTruncated} <= seen


# --- values ---------------------------------------------------------------------------------

def test_value_types_bools_and_nesting(opener):
    raises(opener, gguf([kv("a", 13, b"\0")]), E.UnknownValueType, 24 + 9)
    raises(opener, gguf([kv("a", 9, u32(77) + u64(0))]), E.UnknownValueType, 24 + 13)
    raises(opener, gguf([kv("a", 7, b"\x02")]), E.BadBool, 24 + 13)
    raises(opener, gguf([kv("a", 9, u32(7) + u64(4) + b"\x01\x00\x01\xff")]), E.BadBool, 24 + 13 + 12 + 3)

    def nested(depth):  # `depth` levels of arrays, innermost an empty UINT8 array
        body = u32(0) + u64(0)
        for _ in range(depth - 1):
            body = u32(9) + u64(1) + body
        return gguf([kv("a", 9, body)])
    f = opener(nested(8))
    v = f.metadata["a"]
    for _ in range(7):
        v = v[0]
    assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.size == 0
    raises(opener, nested(9), E.NestingTooDeep, 24 + 13 + 12 * 8)


def test_keys_and_utf8(opener):
    raises(opener, gguf([kv("", 0, b"\0")]), E.EmptyKey, 24)
    raises(opener, gguf([kv("a", 0, b"\0"), kv("a", 0, b"\1")]), E.DuplicateKey, 24 + 14)
    raises(opener, gguf([kv(b"\xff", 0, b"\0")]), E.BadUTF8, 32)
    raises(opener, gguf([kv("a", 8, s(b"ok\xc3"))]), E.BadUTF8, 24 + 13 + 8 + 2)
    raises(opener, gguf([kv("a", 9, u32(8) + u64(2) + s("fine") + s(b"\xe2\x82"))]), E.BadUTF8, 24 + 13 + 12 + 12 + 8)
    # an incomplete sequence at the end of one string must not borrow the next length field's bytes:
    # 0xC3 followed by the length byte 0x85 would form the valid pair "Å" if scanned as one region
    long = "é" * 66  # 132 bytes = 0x84 (continuation-range byte in the length field)
    raises(opener, gguf([kv("a", 9, u32(8) + u64(2) + s(b"x\xc3") + s(long + "a"))]), E.BadUTF8)
    ok = ["", "a", "é" * 70, "x" * 300, "日本", "\U0001F600"]
    body = u32(8) + u64(len(ok)) + b"".join(s(x) for x in ok)
    assert opener(gguf([kv("a", 9, body)])).metadata["a"] == ok


def test_alignment_rule(opener):
    raises(opener, gguf([kv("general.alignment", 10, u64(32))]), E.BadAlignment, 24)
    for bad in (0, 3, 48, 1 << 25):
        raises(opener, gguf([kv("general.alignment", 4, u32(bad))]), E.BadAlignment, 24 + 8 + 17 + 4)
    for good in (1, 2, 64, 1 << 24):
        f = opener(gguf([kv("general.alignment", 4, u32(good))], [ti("t", [4])], bytes(16), align=good))
        assert f.alignment == good and f.tensors["t"].offset % good == 0


# --- tensor infos ---------------------------------------------------------------------------

def test_tensor_info_rules(opener):
    d = bytes(64)
    raises(opener, gguf([], [ti("", [4])], d), E.BadTensorName, 24)
    raises(opener, gguf([], [ti("x" * 64, [4])], d), E.BadTensorName, 24)
    assert "x" * 63 in opener(gguf([], [ti("x" * 63, [4])], d)).tensors
    raises(opener, gguf([], [ti(b"\xc0", [4])], d), E.BadUTF8, 32)
    raises(opener, gguf([], [ti("a", [4]), ti("a", [4], off=32)], d), E.DuplicateTensor, 24 + 33)
    raises(opener, gguf([], [ti("a", [])], d), E.BadDims, 33)
    raises(opener, gguf([], [ti("a", [1] * 5)], d), E.BadDims, 33)
    raises(opener, gguf([], [ti("a", [4, 0])], d), E.BadDims, 37 + 8)
    raises(opener, gguf([], [ti("a", [1 << 63])], d), E.BadDims, 37)
    raises(opener, gguf([], [ti("a", [1 << 32, 1 << 31])], d), E.BadDims, 33)
    raises(opener, gguf([], [ti("a", [4], t=4)], d), E.BadTensorType, 45)
    raises(opener, gguf([], [ti("a", [4], t=42)], d), E.BadTensorType, 45)
    raises(opener, gguf([], [ti("a", [33], t=2)], d), E.BadRowLength)
    assert opener(gguf([], [ti("a", [32], t=2)], d)).tensors["a"].nbytes == 18
    raises(opener, gguf([], [ti("a", [4], off=8)], d), E.BadTensorOffset, 49)
    raises(opener, gguf([], [ti("a", [16]), ti("b", [4], off=32)], d), E.BadTensorOffset)
    raises(opener, gguf([], [ti("a", [4], off=32), ti("b", [4], off=0)], d), E.BadTensorOffset)
    raises(opener, gguf([], [ti("a", [8], t=28, off=(1 << 64) - 32)], d), E.BadTensorOffset)
    raises(opener, gguf([], [ti("a", [17])], d), E.TensorDataTruncated, 49)
    # a gap between tensors is allowed (ggml's writer never leaves one, but the rule is no overlap)
    f = opener(gguf([], [ti("a", [4]), ti("b", [4], off=64)], bytes(96)))
    assert [t.offset - f.data_offset for t in f.tensors.values()] == [0, 64]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_corrupted_bytes_raise_only_format_errors(opener, data):
    blob = bytearray(gguf([kv("general.alignment", 4, u32(16)), kv("k", 9, u32(8) + u64(2) + s("ab") + s("é")),
                           kv("b", 9, u32(7) + u64(2) + b"\x00\x01"), kv("n", 9, u32(9) + u64(1) + u32(5) + u64(1) + u32(7))],
                          [ti("t", [2, 2], 0), ti("q", [32], 8, 16)], bytes(64), align=16))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        f = opener(bytes(blob))
    except E.FormatError as e:
        assert e.offset is not None and 0 <= e.offset <= len(blob)
        return
    for name in f.tensors:  # anything accepted is fully usable
        assert f.raw(name).size == f.tensors[name].nbytes
    for v in f.metadata.values():
        if isinstance(v, qformat.StringArray):
            list(v)


# --- API ------------------------------------------------------------------------------------

def test_api_views_and_close(tmp_path):
    p = tmp_path / "a.gguf"
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    qformat.write(p, {"x": x, "h": x.astype(np.float16)}, {"ids": np.arange(4, dtype=np.int32)})
    f = qformat.open(p)
    raw = f.raw("x")
    assert raw.dtype == np.uint8 and not raw.flags.writeable and not raw.flags.owndata
    assert np.array_equal(raw.view("<f4").reshape(2, 3, 4), x)
    assert np.array_equal(f.read("x"), x) and f.read("x").dtype == np.float32
    assert np.array_equal(f.read("h"), x)
    fld = f.field("ids")
    assert (fld.type, fld.elem_type, fld.offset) == (qformat.ValueType.ARRAY, qformat.ValueType.INT32, 24)
    assert fld.nbytes == 8 + 3 + 4 + 12 + 16
    ids = f.metadata["ids"]
    f.close()  # views stay valid: the mapping is released when they die
    assert ids.tolist() == [0, 1, 2, 3] and raw.view("<f4")[5] == 5.0
    with pytest.raises(ValueError):
        f.raw("x")
    with qformat.open(p) as g:
        assert g.tensors["x"].shape == (2, 3, 4)


def test_read_unsupported_type_raises(opener):
    undecodable = [q for q in qformat.QType if not qformat.can_decode(q)]
    if not undecodable:
        pytest.skip("every ggml type decodes now")
    qt = undecodable[0]
    elems, nbytes = qformat.BLOCK[qt]
    f = opener(gguf([], [ti("a", [elems], t=int(qt))], bytes(-(-nbytes // 32) * 32)))
    assert f.raw("a").size == nbytes
    with pytest.raises(E.UnsupportedType):
        f.read("a")


def test_big_endian_file_from_gguf_py(tmp_path):
    pytest.importorskip("gguf")
    from .test_real_files import write_with_gguf_py

    p = tmp_path / "be.gguf"
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)

    def setup(w):
        w.add_uint32("u", 0x01020304)
        w.add_float64("d", -0.1)
        w.add_array("ints", [1, -2, 300000])
        w.add_array("strs", ["a", "bé", ""])
        w.add_bool("flag", True)
    write_with_gguf_py(p, {"x": x, "h": x.astype(np.float16), "i": np.arange(-3, 3, dtype=np.int16)},
                       big=True, setup=setup)
    assert p.read_bytes()[4:8] == b"\0\0\0\3"
    with qformat.open(p) as f:
        assert f.byteorder == ">" and f.version == 3
        m = f.metadata
        assert m["u"] == 0x01020304 and isinstance(m["u"], np.uint32)
        assert m["d"] == np.float64(-0.1)
        assert m["ints"].dtype == np.int32 and m["ints"].dtype.isnative and m["ints"].tolist() == [1, -2, 300000]
        assert m["strs"] == ["a", "bé", ""] and m["flag"] is True
        assert np.array_equal(f.read("x"), x) and f.read("x").dtype.isnative
        assert np.array_equal(f.read("h"), x.astype(np.float16).astype(np.float32))
        assert f.raw("i").view(">i2").tolist() == [-3, -2, -1, 0, 1, 2]
