"""The reader against the two independent readers, on the real files llama.cpp's converter wrote.

Every key, value type, element type and value that ``qformat.open`` reports must equal what
gguf-py's ``GGUFReader`` and ggml's C ``gguf_init_from_file`` report. ``gguf_py_view`` is also
used by test_writer.py / test_roundtrip_props.py to check written files.
"""
from __future__ import annotations

import numpy as np
import pytest

import qformat
from .conftest import shared_file

gguf = pytest.importorskip("gguf")

REAL = ["gguf/ggml-vocab-llama-spm.gguf", "gguf/ggml-vocab-bert-bge.gguf", "gguf/ggml-vocab-gpt-2.gguf"]


def gguf_py_view(path) -> dict:
    """What gguf-py reads: {"kv": {key: (type, elem_type, value)}, "tensors": {name: (...)}, ...}.

    Values: str; numpy scalar; for arrays a list of str or a 1-D numpy array (native byte order).
    Nested arrays are not supported by gguf-py's field model (it flattens them): value ``None``.
    """
    r = gguf.GGUFReader(str(path))
    kv = {}
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        t = int(f.types[0])
        elem = None
        if t == 9:
            elem = int(f.parts[3][0])  # parts: key length, key, type, elem type, count, ...
            if elem == 8:
                val = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            elif elem == 9:
                val = None
            elif f.data:
                val = np.concatenate([f.parts[i] for i in f.data])
                val = val.astype(val.dtype.newbyteorder("="))
            else:
                val = np.zeros(0)
        elif t == 8:
            val = bytes(f.parts[-1]).decode("utf-8")
        else:
            val = f.parts[-1][0]
            if t == 7:
                val = bool(val)
        kv[key] = (t, elem, val)
    tensors = {}
    for t in r.tensors:
        data = np.asarray(t.data)
        tensors[t.name] = dict(type=int(t.tensor_type), ne=tuple(int(x) for x in t.shape), offset=int(t.data_offset),
                               nbytes=int(t.n_bytes), data=data.astype(data.dtype.newbyteorder("=")))
    return {"kv": kv, "tensors": tensors, "byteorder": ">" if r.endianess.name == "BIG" else "<",
            "alignment": r.alignment}


def write_with_gguf_py(path, tensors=None, *, big=False, arch="llama", setup=None) -> None:
    """Write a file with gguf-py's GGUFWriter (llama.cpp's converter): ``setup(writer)`` adds the
    metadata after ``general.architecture``, then the tensors are added in order."""
    w = gguf.GGUFWriter(str(path), arch, endianess=gguf.GGUFEndian.BIG if big else gguf.GGUFEndian.LITTLE)
    if setup is not None:
        setup(w)
    for name, x in (tensors or {}).items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def same_value(a, b) -> bool:
    """Equal values of the same kind; numeric arrays compared bit for bit (NaN == NaN) and by dtype."""
    if isinstance(b, np.ndarray) or isinstance(a, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.size == 0 and b.size == 0:
            return True
        return a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=") and a.shape == b.shape and \
            a.astype(a.dtype.newbyteorder("=")).tobytes() == b.astype(b.dtype.newbyteorder("=")).tobytes()
    if isinstance(a, np.generic) or isinstance(b, np.generic):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=") and \
            a.astype(a.dtype.newbyteorder("=")).tobytes() == b.astype(b.dtype.newbyteorder("=")).tobytes()
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is bool and type(b) is bool and a == b
    return list(a) == list(b) if isinstance(b, list) else a == b


def assert_matches_gguf_py(f: qformat.GGUFFile, view: dict) -> None:
    assert list(f.metadata) == list(view["kv"])
    for key, (t, elem, val) in view["kv"].items():
        fld = f.field(key)
        assert (int(fld.type), None if fld.elem_type is None else int(fld.elem_type)) == (t, elem), key
        if val is not None:
            assert same_value(f.metadata[key], val), key
    assert list(f.tensors) == list(view["tensors"])
    for name, g in view["tensors"].items():
        ti = f.tensors[name]
        assert int(ti.qtype) == g["type"] and ti.shape == tuple(reversed(g["ne"])), name
        assert ti.offset == g["offset"] and ti.nbytes == g["nbytes"], name


def assert_matches_ggml(f: qformat.GGUFFile, ref: dict) -> None:
    assert ref is not None, "ggml rejected the file"
    assert ref["version"] == f.version and ref["alignment"] == f.alignment
    assert ref["data_offset"] == f.data_offset
    assert list(ref["kv"]) == list(f.metadata)
    for key, (t, val, at) in ref["kv"].items():
        fld = f.field(key)
        assert int(fld.type) == t and (at is None) == (fld.elem_type is None), key
        if at is not None:
            assert int(fld.elem_type) == at, key
            if at == 7:
                val = np.asarray(val, dtype=bool)
        assert same_value(f.metadata[key], val), key
    assert list(ref["tensors"]) == list(f.tensors)
    for name, (tid, off, size) in ref["tensors"].items():
        ti = f.tensors[name]
        assert (int(ti.qtype), ti.offset - f.data_offset, ti.nbytes) == (tid, off, size), name


@pytest.fixture(scope="module", params=REAL, ids=lambda r: r.split("/")[-1])
def real(request):
    path = shared_file(request.param)
    return path, gguf_py_view(path)  # gguf-py takes ~1-3 s per file: read once per module


def test_real_file_matches_gguf_py(real):
    path, view = real
    with qformat.open(path) as f:
        assert f.version == 3 and f.byteorder == "<" and f.alignment == view["alignment"]
        assert_matches_gguf_py(f, view)
        toks = f.metadata["tokenizer.ggml.tokens"]
        assert len(toks) == len(view["kv"]["tokenizer.ggml.tokens"][2]) > 30000
        # random access and slicing agree with sequential iteration
        assert toks[len(toks) // 2] == view["kv"]["tokenizer.ggml.tokens"][2][len(toks) // 2]
        assert toks[-3:] == view["kv"]["tokenizer.ggml.tokens"][2][-3:]


def test_real_file_matches_ggml(real, ggml_ref):
    path, _ = real
    with qformat.open(path) as f:
        assert_matches_ggml(f, ggml_ref.read_gguf(str(path)))


def test_metadata_is_read_only_and_typed(real):
    path, _ = real
    with qformat.open(path) as f:
        with pytest.raises(TypeError):
            f.metadata["general.name"] = "x"  # type: ignore[index]
        types = f.metadata["tokenizer.ggml.token_type"]
        assert types.dtype == np.int32 and not types.flags.writeable
        assert isinstance(f.metadata["general.file_type"], np.uint32)


def test_typed_metadata_rewrites_identical_header(real, tmp_path):
    """Read a real file, write its metadata back: every byte up to the data offset is identical."""
    path, _ = real
    out = tmp_path / "copy.gguf"
    with qformat.open(path) as f:
        qformat.write(out, {}, metadata=f.typed_metadata())
        n = f.data_offset
    orig = path.read_bytes()
    new = out.read_bytes()
    assert new[:n] == orig[:n]
    assert new[n:] == bytes(len(new) - n)  # only ggml's zero padding after the header
    assert len(new) % 32 == 0
