"""The ``qformat`` command line: a thin argparse front end over the library.

Every command does its work through a library function (``qformat.convert``, ``qformat.stats``);
this module only parses arguments and prints. Conventions shared by all commands:

* exit status 0 = success, 1 = verification failed (``verify``, ``demo``), 2 = bad input or usage
  (unreadable, truncated or corrupt files, wrong extensions, missing files, bad arguments);
  141 (128 + SIGPIPE, as a C tool reports it) when the reader of stdout went away (``| head``),
  silently;
* an error is one line on stderr, ``qformat: error: <file>: <problem>``; ``--debug`` adds the
  traceback; no output file is left behind by a failed command;
* progress bars (``tqdm``) go to stderr, only when it is a terminal and ``--quiet`` is not given.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import traceback
from typing import Optional, Sequence

from . import __version__
from .errors import QFormatError

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2
EXIT_BROKEN_PIPE = 141

_EPILOG_ENCODE = """examples:
  qformat encode model.safetensors -o model-q4k.gguf --type Q4_K
  qformat encode model-f16.gguf -o model-q4km.gguf --type Q4_K_M --keep-metadata
  qformat encode weights.npz -o out.gguf --type Q8_0 --rule 'attn_v=Q6_K' --rule 'embed=F16'
  qformat encode model-f16.gguf -o model-q4km.gguf --type Q4_K_M --imatrix imatrix.gguf --mode best
"""
_EPILOG_INSPECT = """examples:
  qformat inspect model.gguf
  qformat inspect model.gguf --full          # whole arrays (e.g. every vocabulary token)
  qformat inspect model.gguf --json | jq '.tensors[] | .name'
"""
_EPILOG_DECODE = """examples:
  qformat decode model.gguf -o weights.npz
  qformat decode model.gguf -o one.npy --tensor blk.0.attn_q.weight
  qformat decode model.gguf -o half.safetensors --dtype float16
"""
_EPILOG_VERIFY = """exit status: 0 all tensors pass, 1 a tensor fails, 2 the file (or source) is unreadable.
examples:
  qformat verify model-q4k.gguf
  qformat verify model-q4k.gguf --against model.safetensors --max-nmse 0.01
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors keep exit status 2, on one line
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qformat", description="GGUF files and ggml quantization: encode, inspect, decode, verify.")
    p.add_argument("--version", action="version", version=f"qformat {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    e = sub.add_parser("encode", parents=[common], help="convert tensors to a quantized GGUF file",
                       description="Convert a .safetensors/.npz/.npy/.gguf file to GGUF, one tensor at a time, "
                                   "recording each tensor's round-trip error in the file.",
                       epilog=_EPILOG_ENCODE, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("source", metavar="SRC", help="input .safetensors, .npz, .npy or .gguf")
    e.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="output file")
    e.add_argument("-t", "--type", default="Q4_K", metavar="TYPE",
                   help="a ggml type (Q4_K, Q8_0, F16, ...) or a llama.cpp mix "
                        "(Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, Q8_0); default Q4_K")
    e.add_argument("--rule", action="append", default=[], metavar="REGEX=TYPE",
                   help="type for tensors whose name matches REGEX (first matching rule wins; repeatable)")
    e.add_argument("--keep-metadata", action="store_true", help="copy the metadata of a .gguf source")
    e.add_argument("-f", "--force", action="store_true", help="replace an existing output file")
    e.add_argument("--imatrix", metavar="FILE",
                   help="importance matrix from llama-imatrix (GGUF or legacy .dat), used by the types "
                        "whose encoder takes one (k-quants, Q4_0..Q5_1, IQ4_NL/IQ4_XS)")
    e.add_argument("--mode", choices=("ggml", "best"), default="ggml",
                   help="ggml: byte-identical to ggml's encoder (default); best: a search for lower "
                        "error where the type offers one (others use ggml's, with a note)")
    e.set_defaults(func=cmd_encode)

    i = sub.add_parser("inspect", parents=[common], help="show a GGUF file's header, metadata and tensors",
                       epilog=_EPILOG_INSPECT, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("file", metavar="FILE")
    i.add_argument("--full", action="store_true", help="show long arrays and strings whole")
    i.add_argument("--json", action="store_true", help="one JSON document (schema in the README)")
    i.set_defaults(func=cmd_inspect)

    d = sub.add_parser("decode", parents=[common], help="decode GGUF tensors to .npz/.safetensors/.npy",
                       epilog=_EPILOG_DECODE, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("file", metavar="FILE")
    d.add_argument("-o", "--output", required=True, metavar="OUT", help="output .npz, .safetensors or .npy")
    d.add_argument("--tensor", action="append", default=[], metavar="NAME", help="only this tensor (repeatable)")
    d.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    d.add_argument("-f", "--force", action="store_true", help="replace an existing output file")
    d.set_defaults(func=cmd_decode)

    v = sub.add_parser("verify", parents=[common], help="decode every tensor and check its recorded round-trip error",
                       epilog=_EPILOG_VERIFY, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("file", metavar="FILE")
    v.add_argument("--against", metavar="SRC", help="the source the file was encoded from")
    v.add_argument("--max-nmse", type=float, metavar="X", help="fail tensors whose nmse exceeds X")
    v.add_argument("--json", action="store_true", help="the report as one JSON document")
    v.set_defaults(func=cmd_verify)

    m = sub.add_parser("demo", parents=[common], help="encode the bundled sample weights and show the result",
                       description="Encode real weights shipped with qformat (a slice of all-MiniLM-L6-v2) to "
                                   "Q4_K, inspect the file, decode it and print each tensor's round-trip error.")
    m.add_argument("--out", metavar="DIR", help="keep the files in DIR (default: a temporary folder)")
    m.set_defaults(func=cmd_demo)
    return p


# --- commands ---------------------------------------------------------------------------------

def _progress(args, total: int, unit: str = "tensor"):
    """A callback advancing a tqdm bar on stderr, or None when there should be none."""
    if args.quiet or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False)

    def step(name: str, nbytes: int) -> None:
        bar.set_postfix_str(name[-40:], refresh=False)
        bar.update(1)
    return step, bar.close


def cmd_encode(args) -> int:
    from .convert import encode_file
    from .sources import open_source

    with open_source(args.source) as s:  # validates the source and counts tensors for the bar
        total = len(s)
    step, done = _progress(args, total)
    try:
        res = encode_file(args.source, args.output, args.type, rules=args.rule, keep_metadata=args.keep_metadata,
                          force=args.force, imatrix=args.imatrix, mode=args.mode, progress=step)
    finally:
        done()
    for t in res.tensors:
        for f in t.fallbacks + t.notes:
            print(f"note: {t.name}: {f}", file=sys.stderr)
    if not args.quiet:
        n_in = sum(math.prod(t.shape) for t in res.tensors)
        extra = f", mode {res.mode}" if res.mode != "ggml" else ""
        if res.imatrix:
            extra += f", imatrix used for {res.n_weighted} tensor(s)"
        print(f"wrote {res.path}: {len(res.tensors)} tensors, {res.nbytes:,} bytes of tensor data "
              f"({8 * res.nbytes / max(n_in, 1):.3f} bits per weight), target {res.target.name}, "
              f"{len(res.fallbacks)} fallback(s){extra}")
        _print_table(res)
    return EXIT_OK


def _print_table(res) -> None:
    rows = [(t.name, "x".join(map(str, t.shape)), t.qtype.name,
             "copied" if t.stats is None else f"{t.stats.rmse:.3g}",
             "" if t.stats is None else _fmt_db(t.stats.snr_db),
             "" if t.stats is None else f"{t.stats.nmse:.3g}") for t in res.tensors]
    _table(("tensor", "shape", "type", "rmse", "snr_db", "nmse"), rows)


def _fmt_db(x: float) -> str:
    return "exact" if x == math.inf else f"{x:.2f}"


def _table(head, rows) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _short(v, full: bool, limit: int = 72) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)
    return s if full or len(s) <= limit else s[:limit - 3] + "..."


def print_description(d: dict, full: bool) -> None:
    print(f"{d['path']}: GGUF v{d['version']}, {d['byteorder']}-endian, alignment {d['alignment']}, "
          f"data offset {d['data_offset']}, {d['file_size']:,} bytes")
    print(f"metadata: {d['n_kv']} keys")
    for m in d["metadata"]:
        typ = m["type"] if m["elem_type"] is None else f"{m['type']}[{m['elem_type']}]"
        val = _short(m["value"], full)
        if m["count"] is not None:
            val = f"({m['count']} items{', truncated' if m['truncated'] else ''}) {val}"
        print(f"  {m['key']}: {typ} = {val}")
    print(f"tensors: {d['n_tensors']}")
    _table(("name", "shape", "type", "offset", "bytes", "bpw"),
           [(t["name"], "x".join(map(str, t["shape"])), t["type"], t["offset"], t["nbytes"],
             f"{t['bits_per_weight']:.3f}") for t in d["tensors"]])
    tot = d["totals"]
    bpw = "-" if tot["bits_per_weight"] is None else f"{tot['bits_per_weight']:.3f}"
    kinds = ", ".join(f"{k}: {v['tensors']}" for k, v in tot["by_type"].items())
    print(f"total: {tot['elements']:,} weights in {tot['nbytes']:,} bytes, {bpw} bits per weight ({kinds})")


def cmd_inspect(args) -> int:
    from .convert import describe

    d = describe(args.file, full=args.full)
    if args.json:
        json.dump(d, sys.stdout, ensure_ascii=False, indent=1)
        print()
    else:
        print_description(d, args.full)
    return EXIT_OK


def cmd_decode(args) -> int:
    from .convert import decode_file

    names = decode_file(args.file, args.output, names=args.tensor or None, dtype=args.dtype, force=args.force)
    if not args.quiet:
        print(f"wrote {args.output}: {len(names)} tensor(s) as {args.dtype}")
    return EXIT_OK


def print_report(rep) -> None:
    rows = []
    for t in rep.tensors:
        st = t.recomputed or t.recorded or {}
        rows.append((t.name, t.qtype, t.status.upper(),
                     f"{st['mse'] ** 0.5:.3g}" if "mse" in st else "",
                     _fmt_db(st["snr_db"]) if "snr_db" in st else "",
                     "; ".join(t.problems)))
    _table(("tensor", "type", "result", "rmse", "snr_db", "problems"), rows)
    n_fail = len(rep.failures)
    how = f"against {rep.against}" if rep.against else "self-consistency (no source given)"
    print(f"{'FAIL' if n_fail else 'PASS'}: {len(rep.tensors) - n_fail}/{len(rep.tensors)} tensors pass ({how})")


def cmd_verify(args) -> int:
    from .stats import verify

    rep = verify(args.file, against=args.against, max_nmse=args.max_nmse)
    if args.json:
        json.dump(rep.as_dict(), sys.stdout, indent=1)
        print()
    elif not args.quiet or not rep.ok:
        print_report(rep)
    return EXIT_OK if rep.ok else EXIT_FAIL


def cmd_demo(args) -> int:
    from .convert import describe, encode_file, sample_path
    from .stats import verify

    src = sample_path()
    tmpdir = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        out_dir = args.out
    else:
        tmpdir = tempfile.TemporaryDirectory(prefix="qformat-demo-")
        out_dir = tmpdir.name
    try:
        out = os.path.join(out_dir, "minilm-sample-q4k.gguf")
        print(f"== encode {os.path.basename(src)} (a slice of all-MiniLM-L6-v2) to Q4_K")
        res = encode_file(src, out, "Q4_K", force=True)
        for t in res.fallbacks:
            for f in t.fallbacks:
                print(f"   fallback: {t.name}: {f}")
        print(f"\n== inspect {out}")
        print_description(describe(out), full=False)
        print("\n== decode and verify against the source")
        from .convert import decode_file
        decoded = os.path.join(out_dir, "minilm-sample-q4k-decoded.npz")
        decode_file(out, decoded, force=True)
        rep = verify(out, against=src)
        print_report(rep)
        print(f"\nfiles in {out_dir}" + (" (temporary, removed now)" if tmpdir else ""))
        return EXIT_OK if rep.ok else EXIT_FAIL
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


# --- entry point ------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # whoever read our output stopped (`qformat inspect --json | head`): nothing is wrong with
        # the input, so no error line; point stdout at devnull so the exit-time flush stays quiet
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_BROKEN_PIPE
    except (QFormatError, OSError, ValueError) as e:
        # ValueError covers bad --type/--rule values (mixes.PlanError) and numpy's own refusals
        if args.debug:
            traceback.print_exc()
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"qformat: error: {' '.join(msg.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("qformat: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input; still one line and a documented exit status
        if args.debug:
            traceback.print_exc()
        print(f"qformat: internal error ({type(e).__name__}: {' '.join(str(e).split())}); "
              f"rerun with --debug and report it", file=sys.stderr)
        return EXIT_BAD_INPUT


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
