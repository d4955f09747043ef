#!/usr/bin/env python3
"""Extract the IQ lattice tables from ggml's ``ggml-common.h`` into ``qformat/codecs/iq_grids.npz``.

    python tools/gen_iq_tables.py [path/to/ggml-common.h]

The IQ2/IQ3/IQ1 types index fixed "grids" of 8 (or 4) small values per entry; ggml ships them as
C arrays of uint64/uint32 words whose little-endian bytes are the values. We store each table as
``uint8 (entries, 8 or 4)`` (IQ1's int8 values {-1, 0, 1} as their two's-complement bytes), which
is what the decoders index, compressed (about 9 KB for the six tables). The file is data taken
from ggml (MIT licence); re-running this tool on the same header reproduces it byte for byte, and
tests/test_iquants.py checks every entry against ggml's own decoders.

Tables: ``iq2xxs_grid`` (256x8), ``iq2xs_grid`` (512x8), ``iq2s_grid`` (1024x8), ``iq3xxs_grid``
(256x4), ``iq3s_grid`` (512x4), ``iq1s_grid`` (2048x8, the CPU variant). ``ksigns_iq2xs`` is read
too, but only to check that it follows the parity rule qformat computes it by.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "qformat" / "codecs" / "iq_grids.npz"
DEFAULT_HEADER = Path("/tmp/ggsrc/ggml_python-0.0.45/vendor/ggml/src/ggml-common.h")

WANTED = {
    "iq2xxs_grid": ("uint64_t", 256),
    "iq2xs_grid": ("uint64_t", 512),
    "iq2s_grid": ("uint64_t", 1024),
    "iq3xxs_grid": ("uint32_t", 256),
    "iq3s_grid": ("uint32_t", 512),
    "iq1s_grid": ("uint64_t", 2048),
    "ksigns_iq2xs": ("uint8_t", 128),
}
_WORD = {"uint64_t": "<u8", "uint32_t": "<u4", "uint8_t": "u1"}
_TABLE = re.compile(r"GGML_TABLE_BEGIN\(\s*(\w+)\s*,\s*(\w+)\s*,\s*(\w+)\s*\)(.*?)GGML_TABLE_END\(\)", re.S)


def parse_tables(text: str) -> dict[str, np.ndarray]:
    """The WANTED tables as uint8 arrays; the first definition of a name wins (the CPU one)."""
    out: dict[str, np.ndarray] = {}
    for ctype, name, _size, body in _TABLE.findall(text):
        if name not in WANTED or name in out:
            continue
        want_type, count = WANTED[name]
        if ctype != want_type:
            raise SystemExit(f"{name}: expected {want_type}, header says {ctype}")
        body = re.sub(r"//[^\n]*", "", body)
        words = [int(tok, 0) for tok in re.findall(r"0x[0-9a-fA-F]+|\d+", body)]
        if len(words) != count:
            raise SystemExit(f"{name}: {len(words)} entries, expected {count}")
        arr = np.array(words, dtype=np.uint64).astype(_WORD[ctype])
        width = arr.dtype.itemsize
        out[name] = arr.view(np.uint8).reshape(count, width) if width > 1 else arr.astype(np.uint8)
    missing = set(WANTED) - set(out)
    if missing:
        raise SystemExit(f"not found in header: {', '.join(sorted(missing))}")
    return out


def write_npz(tables: dict[str, np.ndarray], path: Path) -> None:
    """np.savez_compressed, but with fixed zip timestamps so the output is reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(tables):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(tables[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    path.write_bytes(buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("header", nargs="?", type=Path, default=DEFAULT_HEADER)
    args = ap.parse_args(argv)
    if not args.header.exists():
        print(f"{args.header}: not found (pass the path to ggml/src/ggml-common.h)", file=sys.stderr)
        return 2
    tables = parse_tables(args.header.read_text())
    # ksigns_iq2xs is a rule, not data: 7 sign bits plus an 8th that makes the count of set bits even
    i = np.arange(128)
    parity = np.array([bin(v).count("1") & 1 for v in i])
    if not np.array_equal(tables["ksigns_iq2xs"], (i | parity << 7).astype(np.uint8)):
        raise SystemExit("ksigns_iq2xs does not follow the even-parity rule")
    del tables["ksigns_iq2xs"]  # qformat computes it from the rule; no need to ship it
    write_npz(tables, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): " + ", ".join(f"{k} {v.shape}" for k, v in sorted(tables.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
