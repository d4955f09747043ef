"""ctypes binding to ggml's own C library, as shipped by the ``ggml-python`` package (extra ``ref``).

This is the *reference* that tests, ``tools/gen_vectors.py`` and the benchmarks compare qformat
against; qformat itself never needs it. ``available()`` tells whether it can be loaded. Only call
the GGUF parser on files believed valid: on some malformed inputs ggml aborts the process.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from .types import BLOCK, QType, QTypeLike, as_qtype

_c_float_p = ctypes.POINTER(ctypes.c_float)


@lru_cache(maxsize=1)
def _lib() -> Optional[ctypes.CDLL]:
    spec = importlib.util.find_spec("ggml")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        path = os.path.join(d, "lib", "libggml-base.so")
        if os.path.exists(path):
            lib = ctypes.CDLL(path)
            _declare(lib)
            return lib
    return None


def available() -> bool:
    try:
        return _lib() is not None
    except OSError:
        return False


def lib() -> ctypes.CDLL:
    L = _lib()
    if L is None:
        raise RuntimeError("ggml-python is not installed (pip install 'qformat[ref]')")
    return L


def _declare(L: ctypes.CDLL) -> None:
    vp, sz, i64, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_char_p
    L.ggml_quantize_chunk.argtypes = [ctypes.c_int, _c_float_p, vp, i64, i64, i64, _c_float_p]
    L.ggml_quantize_chunk.restype = sz
    L.ggml_type_size.restype = sz
    L.ggml_blck_size.restype = i64
    L.ggml_type_name.restype = cp
    L.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    L.gguf_init_from_file.argtypes = [cp, _InitParams]
    L.gguf_init_from_file.restype = vp
    L.gguf_free.argtypes = [vp]
    for name, res in [
        ("gguf_get_version", ctypes.c_uint32), ("gguf_get_alignment", sz), ("gguf_get_data_offset", sz),
        ("gguf_get_n_kv", i64), ("gguf_get_n_tensors", i64),
    ]:
        f = getattr(L, name)
        f.argtypes, f.restype = [vp], res
    for name, res in [
        ("gguf_get_key", cp), ("gguf_get_kv_type", ctypes.c_int), ("gguf_get_arr_type", ctypes.c_int),
        ("gguf_get_val_str", cp), ("gguf_get_val_data", vp), ("gguf_get_arr_n", sz), ("gguf_get_arr_data", vp),
        ("gguf_get_tensor_offset", sz), ("gguf_get_tensor_name", cp), ("gguf_get_tensor_type", ctypes.c_int),
        ("gguf_get_tensor_size", sz),
    ]:
        f = getattr(L, name)
        f.argtypes, f.restype = [vp, i64], res
    L.gguf_get_arr_str.argtypes, L.gguf_get_arr_str.restype = [vp, i64, sz], cp


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def _fn(name: str):
    return getattr(lib(), name)


# --- codecs ---------------------------------------------------------------------------------

def quantize(x: np.ndarray, qtype: QTypeLike, imatrix: Optional[np.ndarray] = None) -> np.ndarray:
    """ggml_quantize_chunk over rows of ``x`` (float32 ``(..., n)``) -> uint8 ``(..., row_bytes)``.

    Without ``imatrix`` this is what llama-quantize does without an importance matrix (for the
    k-quants: ``quantize_row_<t>_ref``).
    """
    qt = as_qtype(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    rows = x.size // n if n else 0
    elems, nbytes = BLOCK[qt]
    out = np.zeros(x.shape[:-1] + (n // elems * nbytes,), dtype=np.uint8)
    w = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        w = imatrix.ctypes.data_as(_c_float_p)
    lib().ggml_quantize_chunk(int(qt), x.ctypes.data_as(_c_float_p), out.ctypes.data, 0, rows, n, w)
    return out


def quantize_row_ref(x: np.ndarray, qtype: QTypeLike) -> np.ndarray:
    """``quantize_row_<t>_ref`` on the flattened input (float32, size a multiple of the block)."""
    qt = as_qtype(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    elems, nbytes = BLOCK[qt]
    out = np.zeros(x.size // elems * nbytes, dtype=np.uint8)
    f = _fn(f"quantize_row_{_cname(qt)}_ref")
    f.argtypes = [_c_float_p, ctypes.c_void_p, ctypes.c_int64]
    f(x.ctypes.data_as(_c_float_p), out.ctypes.data, x.size)
    return out


def dequantize(data: np.ndarray, qtype: QTypeLike) -> np.ndarray:
    """``dequantize_row_<t>`` (F16/BF16: ggml's row converters) over ``uint8 (..., row_bytes)``."""
    qt = as_qtype(qtype)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    elems, nbytes = BLOCK[qt]
    n = data.size // nbytes * elems
    out = np.zeros(n, dtype=np.float32)
    if qt == QType.F32:
        out[:] = data.view("<f4").reshape(-1)
    else:
        name = {QType.F16: "ggml_fp16_to_fp32_row", QType.BF16: "ggml_bf16_to_fp32_row"}.get(qt)
        f = _fn(name or f"dequantize_row_{_cname(qt)}")
        f.argtypes = [ctypes.c_void_p, _c_float_p, ctypes.c_int64]
        f(data.ctypes.data, out.ctypes.data_as(_c_float_p), n)
    return out.reshape(data.shape[:-1] + (data.shape[-1] // nbytes * elems,))


def type_geometry(type_id: int) -> tuple[int, int, str]:
    """(block elems, block bytes, name) as libggml reports them for a type id."""
    L = lib()
    return int(L.ggml_blck_size(type_id)), int(L.ggml_type_size(type_id)), L.ggml_type_name(type_id).decode()


def _cname(qt: QType) -> str:
    # ggml's function names keep the K suffix upper-case and everything else lower-case
    name = qt.name.lower()
    return name[:-2] + "_K" if name.endswith("_k") else name


# --- the GGUF parser llama.cpp links ----------------------------------------------------------

_GGUF_SCALAR = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
                10: "<u8", 11: "<i8", 12: "<f8"}


def read_gguf(path: str) -> Optional[dict[str, Any]]:
    """Parse a file with ``gguf_init_from_file`` (no tensor data); ``None`` where ggml rejects it.

    Returns ``{"version", "alignment", "data_offset", "kv": {key: (type, value, arr_type)},
    "tensors": {name: (type_id, offset, size)}}``; array values are lists, numeric values numpy
    scalars of the stored width, strings ``str``.
    """
    L = lib()
    ctx = L.gguf_init_from_file(os.fsencode(path), _InitParams(True, None))
    if not ctx:
        return None
    try:
        out: dict[str, Any] = {
            "version": int(L.gguf_get_version(ctx)),
            "alignment": int(L.gguf_get_alignment(ctx)),
            "data_offset": int(L.gguf_get_data_offset(ctx)),
            "kv": {},
            "tensors": {},
        }
        for i in range(L.gguf_get_n_kv(ctx)):
            key = L.gguf_get_key(ctx, i).decode("utf-8")
            t = L.gguf_get_kv_type(ctx, i)
            at = None
            if t == 9:
                at = L.gguf_get_arr_type(ctx, i)
                n = L.gguf_get_arr_n(ctx, i)
                if at == 8:
                    val: Any = [L.gguf_get_arr_str(ctx, i, j).decode("utf-8") for j in range(n)]
                else:
                    dt = np.dtype(_GGUF_SCALAR[at])
                    ptr = L.gguf_get_arr_data(ctx, i)
                    raw = ctypes.string_at(ptr, n * dt.itemsize) if n else b""
                    val = np.frombuffer(raw, dtype=dt).copy()
                    if at == 7:
                        val = val.astype(bool)
            elif t == 8:
                val = L.gguf_get_val_str(ctx, i).decode("utf-8")
            else:
                dt = np.dtype(_GGUF_SCALAR[t])
                val = np.frombuffer(ctypes.string_at(L.gguf_get_val_data(ctx, i), dt.itemsize), dtype=dt)[0]
                if t == 7:
                    val = bool(val)
            out["kv"][key] = (t, val, at)
        for i in range(L.gguf_get_n_tensors(ctx)):
            name = L.gguf_get_tensor_name(ctx, i).decode("utf-8")
            out["tensors"][name] = (
                int(L.gguf_get_tensor_type(ctx, i)),
                int(L.gguf_get_tensor_offset(ctx, i)),
                int(L.gguf_get_tensor_size(ctx, i)),
            )
        return out
    finally:
        L.gguf_free(ctx)
