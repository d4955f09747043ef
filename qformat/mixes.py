"""Which ggml type each tensor gets: plain targets, llama.cpp's named mixes, user rules, fallbacks.

The rules follow llama.cpp's ``llama-quantize`` (``src/llama-quant.cpp``: the loop that decides
whether to quantize a tensor, and ``llama_tensor_get_type``), restated here:

Which tensors are quantized at all (the others keep a float type):

* Only tensors with 2 or more dimensions. 1-D tensors (norms, biases, scales) are stored F32
  whatever the target, F16 and BF16 included (as llama-quantize does).
* Never: names containing ``_norm.weight``, ``ffn_gate_inp.weight``, ``ssm_conv1d.weight``,
  ``attn_rel_b.weight``, ``time_mix_first/w1/w2/decay_w1/decay_w2/lerp_fused.weight``, or equal to
  ``position_embd.weight`` / ``token_types.weight``: they stay F32.
  (llama.cpp also requires the name to end in ``weight``; qformat does not, because its sources
  -- .npz, .npy -- have arbitrary names; a 2-D tensor with another name is quantized.)
* Integer tensors are copied with their own type (I8..I64); tensors of a GGUF source already of a
  quantized type are copied unchanged (no re-quantization, like llama-quantize without
  ``--allow-requantize``).

Named mixes (``--type Q4_K_M`` etc.); ``i`` is a tensor's layer (``blk.<i>.`` in its name, else its
rank among tensors of that kind), ``n`` the number of layers, and
``more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2``:

=========  =======  ===========================================================================
mix        default  bumps
=========  =======  ===========================================================================
Q3_K_M     Q3_K     attn_v: Q5_K for the first 2, then Q4_K; ffn_down: Q5_K if i < n/16 else
                    Q4_K; attn_output, attn_qkv: Q4_K; output: Q6_K
Q4_K_S     Q4_K     attn_v: Q5_K for the first 4; ffn_down: Q5_K if i < n/8; output: Q6_K
Q4_K_M     Q4_K     attn_v, ffn_down: Q6_K where more_bits; attn_qkv: Q5_K; output: Q6_K
Q5_K_S     Q5_K     output: Q6_K
Q5_K_M     Q5_K     attn_v, ffn_down: Q6_K where more_bits; attn_qkv: Q6_K; output: Q6_K
Q6_K       Q6_K     output: Q6_K
Q8_0       Q8_0     (none)
=========  =======  ===========================================================================

"output" is ``output.weight``, or ``token_embd.weight`` when the model has no ``output.weight``
(tied embeddings); if its rows do not fit the 256-value block it becomes Q8_0 (llama.cpp's rule).
Not modelled (qformat does not read hyperparameters): the Falcon, 70B, grouped-query (n_gqa >= 4)
and 8-expert special cases.

A plain type (``--type Q4_K``) is "pure": every quantizable tensor gets that type (llama-quantize
``--pure``), subject to the fallbacks below.

User rules (``--rule 'REGEX=TYPE'``): the first whose regex matches (``re.search``) the tensor name
sets its type, over the mix; they apply to the tensors chosen for quantization, like
llama-quantize's ``--tensor-type``.

Fallbacks, applied in this order and reported per tensor:

1. Row length: a tensor whose row (innermost dimension) is not a multiple of the chosen type's
   block size takes llama.cpp's substitute: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K/
   IQ*-256 -> IQ4_NL, TQ1_0/TQ2_0 -> Q4_0; and F16 if the substitute's block does not fit either.
   (Any other type with a misfitting row also goes to F16.)
2. No encoder: a type qformat cannot encode yet moves up :data:`WIDER` (never to fewer bits) until
   one can be encoded -- e.g. Q4_K -> Q5_0 -> Q8_0 -> F16 -- re-checking the row length each time.
   F16 is always encodable, so the chain ends.

``general.file_type`` is llama.cpp's ``enum llama_ftype`` value (:data:`FTYPE`): a mix writes its
own; a plain type writes the value llama.cpp's loader guesses for a file mostly of that type
(Q4_K -> MOSTLY_Q4_K_M = 15, Q3_K -> MOSTLY_Q3_K_M, Q5_K -> MOSTLY_Q5_K_M); types with no
llama_ftype (F64, I*, Q8_1, Q8_K) write none. ``general.quantization_version`` is 2
(``GGML_QNT_VERSION``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from .codecs import can_encode
from .types import BLOCK, QType, as_qtype

QUANTIZATION_VERSION = 2

#: llama.cpp ``enum llama_ftype`` (include/llama.h)
FTYPE: dict[str, int] = {
    "ALL_F32": 0, "MOSTLY_F16": 1, "MOSTLY_Q4_0": 2, "MOSTLY_Q4_1": 3, "MOSTLY_Q8_0": 7,
    "MOSTLY_Q5_0": 8, "MOSTLY_Q5_1": 9, "MOSTLY_Q2_K": 10, "MOSTLY_Q3_K_S": 11, "MOSTLY_Q3_K_M": 12,
    "MOSTLY_Q3_K_L": 13, "MOSTLY_Q4_K_S": 14, "MOSTLY_Q4_K_M": 15, "MOSTLY_Q5_K_S": 16,
    "MOSTLY_Q5_K_M": 17, "MOSTLY_Q6_K": 18, "MOSTLY_IQ2_XXS": 19, "MOSTLY_IQ2_XS": 20,
    "MOSTLY_Q2_K_S": 21, "MOSTLY_IQ3_XS": 22, "MOSTLY_IQ3_XXS": 23, "MOSTLY_IQ1_S": 24,
    "MOSTLY_IQ4_NL": 25, "MOSTLY_IQ3_S": 26, "MOSTLY_IQ3_M": 27, "MOSTLY_IQ2_S": 28,
    "MOSTLY_IQ2_M": 29, "MOSTLY_IQ4_XS": 30, "MOSTLY_IQ1_M": 31, "MOSTLY_BF16": 32,
    "MOSTLY_TQ1_0": 36, "MOSTLY_TQ2_0": 37,
}

#: the ftype written for a plain (pure) target type: what llama.cpp's loader guesses for a file
#: whose most common type it is, extended to the single-type ftypes it has since gained
PLAIN_FTYPE: dict[QType, str] = {
    QType.F32: "ALL_F32", QType.F16: "MOSTLY_F16", QType.BF16: "MOSTLY_BF16",
    QType.Q4_0: "MOSTLY_Q4_0", QType.Q4_1: "MOSTLY_Q4_1", QType.Q5_0: "MOSTLY_Q5_0",
    QType.Q5_1: "MOSTLY_Q5_1", QType.Q8_0: "MOSTLY_Q8_0", QType.Q2_K: "MOSTLY_Q2_K",
    QType.Q3_K: "MOSTLY_Q3_K_M", QType.Q4_K: "MOSTLY_Q4_K_M", QType.Q5_K: "MOSTLY_Q5_K_M",
    QType.Q6_K: "MOSTLY_Q6_K", QType.IQ2_XXS: "MOSTLY_IQ2_XXS", QType.IQ2_XS: "MOSTLY_IQ2_XS",
    QType.IQ3_XXS: "MOSTLY_IQ3_XXS", QType.IQ1_S: "MOSTLY_IQ1_S", QType.IQ4_NL: "MOSTLY_IQ4_NL",
    QType.IQ3_S: "MOSTLY_IQ3_S", QType.IQ2_S: "MOSTLY_IQ2_S", QType.IQ4_XS: "MOSTLY_IQ4_XS",
    QType.IQ1_M: "MOSTLY_IQ1_M", QType.TQ1_0: "MOSTLY_TQ1_0", QType.TQ2_0: "MOSTLY_TQ2_0",
}

#: named mixes: (default type, llama_ftype name)
MIXES: dict[str, tuple[QType, str]] = {
    "Q3_K_M": (QType.Q3_K, "MOSTLY_Q3_K_M"),
    "Q4_K_S": (QType.Q4_K, "MOSTLY_Q4_K_S"),
    "Q4_K_M": (QType.Q4_K, "MOSTLY_Q4_K_M"),
    "Q5_K_S": (QType.Q5_K, "MOSTLY_Q5_K_S"),
    "Q5_K_M": (QType.Q5_K, "MOSTLY_Q5_K_M"),
    "Q6_K": (QType.Q6_K, "MOSTLY_Q6_K"),
    "Q8_0": (QType.Q8_0, "MOSTLY_Q8_0"),
}

#: llama.cpp's substitute when a row does not fit the chosen type's block
ROW_FALLBACK: dict[QType, QType] = {
    QType.TQ1_0: QType.Q4_0, QType.TQ2_0: QType.Q4_0,
    QType.IQ2_XXS: QType.IQ4_NL, QType.IQ2_XS: QType.IQ4_NL, QType.IQ2_S: QType.IQ4_NL,
    QType.IQ3_XXS: QType.IQ4_NL, QType.IQ3_S: QType.IQ4_NL, QType.IQ1_S: QType.IQ4_NL,
    QType.IQ1_M: QType.IQ4_NL, QType.Q2_K: QType.IQ4_NL, QType.Q3_K: QType.IQ4_NL,
    QType.IQ4_XS: QType.IQ4_NL,
    QType.Q4_K: QType.Q5_0, QType.Q5_K: QType.Q5_1, QType.Q6_K: QType.Q8_0,
}

#: the next type up when qformat has no encoder for one: never fewer bits per weight
WIDER: dict[QType, QType] = {
    QType.TQ1_0: QType.TQ2_0, QType.TQ2_0: QType.Q4_0, QType.IQ1_S: QType.IQ1_M,
    QType.IQ1_M: QType.IQ2_XXS, QType.IQ2_XXS: QType.IQ2_XS, QType.IQ2_XS: QType.IQ2_S,
    QType.IQ2_S: QType.IQ3_XXS, QType.IQ3_XXS: QType.IQ3_S, QType.IQ3_S: QType.IQ4_XS,
    QType.IQ4_XS: QType.IQ4_NL, QType.IQ4_NL: QType.Q5_0,
    QType.Q2_K: QType.Q3_K, QType.Q3_K: QType.Q4_K, QType.Q4_K: QType.Q5_0,
    QType.Q5_K: QType.Q5_1, QType.Q6_K: QType.Q8_0,
    QType.Q4_0: QType.Q5_0, QType.Q4_1: QType.Q5_1, QType.Q5_0: QType.Q8_0, QType.Q5_1: QType.Q8_0,
    QType.MXFP4: QType.Q5_0, QType.NVFP4: QType.Q5_0, QType.Q1_0: QType.Q4_0,
    QType.Q8_0: QType.F16, QType.Q8_1: QType.Q8_0, QType.Q8_K: QType.Q8_0,
    QType.BF16: QType.F32, QType.F16: QType.F32,
}

_KEEP_F32_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d.weight", "attn_rel_b.weight",
    "time_mix_first.weight", "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
)
_KEEP_F32_NAMES = ("position_embd.weight", "token_types.weight")
_FLOAT_TARGETS = (QType.F32, QType.F16, QType.BF16)
_LAYER = re.compile(r"(?:^|\.)blk\.(\d+)\.")


class PlanError(ValueError):
    """A target or rule that names no type (raised for user input)."""


@dataclass(frozen=True)
class Target:
    """What the user asked for: a plain type or a named mix."""

    name: str
    default: QType
    mix: Optional[str]
    ftype: Optional[int]

    @staticmethod
    def parse(text: str) -> "Target":
        key = text.strip().upper()
        if key in MIXES:
            t, ft = MIXES[key]
            return Target(key, t, key, FTYPE[ft])
        try:
            qt = as_qtype(key)
        except ValueError:
            raise PlanError(f"unknown type or mix {text!r} (types: {', '.join(encodable_types())}; "
                            f"mixes: {', '.join(MIXES)})") from None
        ft = PLAIN_FTYPE.get(qt)
        return Target(qt.name, qt, None, FTYPE[ft] if ft else None)


def encodable_types() -> list[str]:
    return [t.name for t in QType if can_encode(t)]


def parse_rule(text: str) -> tuple[re.Pattern, QType]:
    """``'REGEX=TYPE'`` -> (compiled regex, type); the last ``=`` separates them."""
    pat, sep, typ = text.rpartition("=")
    if not sep or not pat:
        raise PlanError(f"rule {text!r} is not of the form REGEX=TYPE")
    try:
        rx = re.compile(pat)
    except re.error as e:
        raise PlanError(f"rule {text!r}: bad regular expression ({e})") from None
    try:
        return rx, as_qtype(typ.strip())
    except ValueError as e:
        raise PlanError(f"rule {text!r}: {e}") from None


@dataclass
class Choice:
    """The type chosen for one tensor and how it was reached."""

    name: str
    qtype: QType
    #: the type the mix or rule asked for, before fallbacks (None: not quantized at all)
    wanted: Optional[QType]
    #: one line per fallback step, e.g. "Q4_K -> Q5_0: row of 384 is not a multiple of 256"
    fallbacks: list[str] = field(default_factory=list)
    #: "copy" for tensors written as they are (integer or already-quantized sources)
    copy: bool = False


def more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _kind_index(name: str, counters: dict, kind: str) -> int:
    m = _LAYER.search(name)
    if m:
        return int(m.group(1))
    i = counters.get(kind, 0)
    counters[kind] = i + 1
    return i


class Planner:
    """Chooses types for the tensors of one model (needs all names first, as llama-quantize does)."""

    def __init__(self, target: Target, tensors: Sequence[tuple[str, tuple, str]],
                 rules: Iterable[tuple[re.Pattern, QType]] = ()):
        """``tensors``: (name, numpy-order shape, kind) where kind is "float", "int" or "quantized"."""
        self.target = target
        self.rules = list(rules)
        names = [t[0] for t in tensors]
        self.has_output = "output.weight" in names
        self.n_attn_v = sum(1 for n in names if "attn_v.weight" in n or "attn_qkv.weight" in n)
        layers = [int(m.group(1)) for n in names for m in [_LAYER.search(n)] if m]
        n_down = sum(1 for n in names if "ffn_down" in n)
        self.n_layer = max(layers) + 1 if layers else n_down
        self._counters: dict[str, int] = {}
        self._i_attn_v = 0

    def quantizable(self, name: str, shape: tuple) -> bool:
        if len(shape) < 2:
            return False
        if any(s in name for s in _KEEP_F32_SUBSTRINGS) or name in _KEEP_F32_NAMES:
            return False
        return True

    def _mix_type(self, name: str, ncols: int) -> QType:
        t = self.target.default
        mix = self.target.mix
        if mix is None:
            return t
        is_output = name == "output.weight" or (not self.has_output and name == "token_embd.weight")
        if is_output:
            if ncols % BLOCK[t].elems:
                return QType.Q8_0
            return t if t == QType.Q8_0 else QType.Q6_K
        if "attn_v.weight" in name:
            i = self._i_attn_v
            self._i_attn_v += 1
            if mix == "Q3_K_M":
                return QType.Q5_K if i < 2 else QType.Q4_K
            if mix in ("Q4_K_M", "Q5_K_M") and more_bits(i, self.n_attn_v):
                return QType.Q6_K
            if mix == "Q4_K_S" and i < 4:
                return QType.Q5_K
            return t
        if "ffn_down" in name:
            i, n = _kind_index(name, self._counters, "ffn_down"), self.n_layer
            if mix == "Q3_K_M":
                return QType.Q5_K if i < n // 16 else QType.Q4_K
            if mix in ("Q4_K_M", "Q5_K_M") and more_bits(i, n):
                return QType.Q6_K
            if mix == "Q4_K_S" and i < n // 8:
                return QType.Q5_K
            return t
        if "attn_output.weight" in name:
            return QType.Q4_K if mix == "Q3_K_M" else t
        if "attn_qkv.weight" in name:
            return {"Q3_K_M": QType.Q4_K, "Q4_K_M": QType.Q5_K, "Q5_K_M": QType.Q6_K}.get(mix, t)
        return t

    def choose(self, name: str, shape: tuple, kind: str = "float") -> Choice:
        if kind == "int":
            return Choice(name, QType.F32, None, copy=True)
        if kind == "quantized":
            return Choice(name, QType.F32, None, copy=True)
        if not self.quantizable(name, shape) or self.target.default == QType.F32:
            return Choice(name, QType.F32, None)
        ncols = int(shape[-1])
        wanted = None
        for rx, qt in self.rules:
            if rx.search(name):
                wanted = qt
                break
        if wanted is None:
            if self.target.default in _FLOAT_TARGETS:
                wanted = self.target.default
            else:
                wanted = self._mix_type(name, ncols)
        return Choice(name, *resolve(wanted, ncols))

    def choose_all(self, tensors: Sequence[tuple[str, tuple, str]]) -> list[Choice]:
        return [self.choose(n, s, k) for n, s, k in tensors]


def resolve(wanted: QType, ncols: int) -> tuple[QType, QType, list[str]]:
    """Apply the row-length and no-encoder fallbacks: (final type, wanted, steps)."""
    steps: list[str] = []
    t = wanted
    if ncols % BLOCK[t].elems:
        sub = ROW_FALLBACK.get(t, QType.F16)
        if ncols % BLOCK[sub].elems:
            sub = QType.F16
        steps.append(f"{t.name} -> {sub.name}: row of {ncols} is not a multiple of {BLOCK[t].elems}")
        t = sub
    seen = {t}
    while not can_encode(t):
        up = WIDER.get(t, QType.F16)
        if ncols % BLOCK[up].elems:
            up = QType.F16
        if up in seen:  # cannot happen with the table above; guards against a cycle
            up = QType.F16
        steps.append(f"{t.name} -> {up.name}: qformat cannot encode {t.name} yet")
        seen.add(up)
        t = up
    return t, wanted, steps
