"""The declarative schema and the reader's fast path describe the same bytes.

On the real files (and on written files with tensors), the construct schema parses the whole
metadata section to exactly what ``qformat.open`` reports, and building the parsed structure
again reproduces the original bytes -- so the schema the writer builds with is the format.
"""
from __future__ import annotations

import numpy as np
import pytest
from construct import ConstructError

import qformat
from qformat.container import schema
from qformat.container.values import StringArray

from .conftest import shared_file
from .test_real_files import REAL, write_with_gguf_py


def _plain(v):
    """A construct-parsed value in the reader's terms (lists for arrays)."""
    if hasattr(v, "items") and "elem_type" in v:
        return [_plain(x) for x in v["items"]]
    return v


def _reader_plain(v):
    if isinstance(v, StringArray):
        return list(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list):
        return [_reader_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def assert_schema_agrees(path, byteorder="<"):
    data = open(path, "rb").read()
    s = schema.LITTLE if byteorder == "<" else schema.BIG
    head = s.file_head.parse(data)
    with qformat.open(path) as f:
        assert head.header.version == f.version
        assert [kv.key for kv in head.kv] == list(f.metadata)
        for kv in head.kv:
            fld = f.field(kv.key)
            assert kv.type == int(fld.type)
            if kv.type == 9:
                assert kv.value.elem_type == int(fld.elem_type)
            assert _plain(kv.value) == _reader_plain(f.metadata[kv.key]), kv.key
            # building the parsed pair again gives back the very bytes of the file
            assert s.kv.build(kv) == data[fld.offset:fld.offset + fld.nbytes], kv.key
        assert [ti.name for ti in head.tensor_infos] == list(f.tensors)
        for ti in head.tensor_infos:
            t = f.tensors[ti.name]
            assert tuple(reversed(ti.ne)) == t.shape and ti.type == int(t.qtype)
            assert f.data_offset + ti.offset == t.offset
        end = len(s.file_head.build(head))
        assert end == len(data[:end]) and (f.data_offset == end or f.data_offset == schema.align_up(end, f.alignment))


@pytest.mark.parametrize("rel", REAL, ids=lambda r: r.split("/")[-1])
def test_schema_parses_real_files_like_the_reader(rel):
    assert_schema_agrees(shared_file(rel))


def test_schema_parses_written_files_with_tensors(tmp_path):
    p = tmp_path / "t.gguf"
    meta = {"a": np.uint8(3), "b": np.int16(-2), "c": np.float32(0.25), "d": "x", "e": [True, False],
            "f": [["p", "q"], ["r"]], "g": np.arange(5, dtype=np.uint64), "h": np.float64(-1.0)}
    qformat.write(p, {"w": np.ones((3, 4), np.float32), "v": np.arange(7, dtype=np.int16)}, meta, alignment=64)
    assert_schema_agrees(p)


def test_schema_parses_big_endian_file(tmp_path):
    p = tmp_path / "be.gguf"

    def setup(w):
        w.add_uint32("u", 7)
        w.add_array("sa", ["x", "yé"])
        w.add_array("ia", [1, -2, 3])
    write_with_gguf_py(p, {"t": np.arange(6, dtype=np.float32).reshape(2, 3)}, big=True, setup=setup)
    assert_schema_agrees(p, ">")


def test_value_switch_rejects_unknown_type_ids():
    with pytest.raises(ConstructError):
        schema.KV.build(dict(key="k", type=13, value=1))
    bad = schema.STRING.build("k") + (13).to_bytes(4, "little") + b"\0" * 8
    with pytest.raises(ConstructError):
        schema.KV.parse(bad)
    # an unknown element type inside an array, too
    with pytest.raises(ConstructError):
        schema.ARRAY.parse((99).to_bytes(4, "little") + (1).to_bytes(8, "little") + b"\0" * 8)


def test_nested_array_structure_round_trips():
    v = dict(elem_type=9, count=2, items=[dict(elem_type=8, count=1, items=["a"]),
                                           dict(elem_type=5, count=2, items=[-1, 2])])
    b = schema.ARRAY.build(v)
    assert schema.ARRAY.parse(b)["items"][1]["items"] == [-1, 2]
    assert len(b) == 12 + (12 + 9) + (12 + 8)
