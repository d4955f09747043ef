"""ggml tensor types: ids, names and the one table of block geometry.

Every other module asks this table how many elements a block holds and how many bytes it takes;
nothing else in qformat hard-codes those numbers. Ids and sizes follow ggml's ``enum ggml_type`` and
``type_traits`` (checked against libggml in ``tests/test_types.py``).
"""
from __future__ import annotations

import enum
from typing import NamedTuple, Union


class QType(enum.IntEnum):
    """A ggml tensor type; the int value is the id stored in GGUF tensor infos."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


#: Ids that ggml once assigned and has since removed; a file naming one is rejected.
REMOVED_IDS: dict[int, str] = {
    4: "Q4_2",
    5: "Q4_3",
    31: "Q4_0_4_4",
    32: "Q4_0_4_8",
    33: "Q4_0_8_8",
    36: "IQ4_NL_4_4",
    37: "IQ4_NL_4_8",
    38: "IQ4_NL_8_8",
}

#: One past the largest id ggml knows (GGML_TYPE_COUNT).
TYPE_COUNT = 42


class BlockGeometry(NamedTuple):
    elems: int  # values per block (1 for plain scalar types)
    nbytes: int  # bytes per block


_QK_K = 256

#: The one table of block geometry.
BLOCK: dict[QType, BlockGeometry] = {
    QType.F32: BlockGeometry(1, 4),
    QType.F16: BlockGeometry(1, 2),
    QType.Q4_0: BlockGeometry(32, 18),
    QType.Q4_1: BlockGeometry(32, 20),
    QType.Q5_0: BlockGeometry(32, 22),
    QType.Q5_1: BlockGeometry(32, 24),
    QType.Q8_0: BlockGeometry(32, 34),
    QType.Q8_1: BlockGeometry(32, 36),
    QType.Q2_K: BlockGeometry(_QK_K, 84),
    QType.Q3_K: BlockGeometry(_QK_K, 110),
    QType.Q4_K: BlockGeometry(_QK_K, 144),
    QType.Q5_K: BlockGeometry(_QK_K, 176),
    QType.Q6_K: BlockGeometry(_QK_K, 210),
    QType.Q8_K: BlockGeometry(_QK_K, 292),
    QType.IQ2_XXS: BlockGeometry(_QK_K, 66),
    QType.IQ2_XS: BlockGeometry(_QK_K, 74),
    QType.IQ3_XXS: BlockGeometry(_QK_K, 98),
    QType.IQ1_S: BlockGeometry(_QK_K, 50),
    QType.IQ4_NL: BlockGeometry(32, 18),
    QType.IQ3_S: BlockGeometry(_QK_K, 110),
    QType.IQ2_S: BlockGeometry(_QK_K, 82),
    QType.IQ4_XS: BlockGeometry(_QK_K, 136),
    QType.I8: BlockGeometry(1, 1),
    QType.I16: BlockGeometry(1, 2),
    QType.I32: BlockGeometry(1, 4),
    QType.I64: BlockGeometry(1, 8),
    QType.F64: BlockGeometry(1, 8),
    QType.IQ1_M: BlockGeometry(_QK_K, 56),
    QType.BF16: BlockGeometry(1, 2),
    QType.TQ1_0: BlockGeometry(_QK_K, 54),
    QType.TQ2_0: BlockGeometry(_QK_K, 66),
    QType.MXFP4: BlockGeometry(32, 17),
    QType.NVFP4: BlockGeometry(64, 36),
    QType.Q1_0: BlockGeometry(128, 18),
}

assert set(BLOCK) == set(QType), "every QType needs a block geometry"

QTypeLike = Union[QType, str, int]


def as_qtype(t: QTypeLike) -> QType:
    """Accept a QType, its name (any case, e.g. ``"q4_k"``) or its ggml id; raise ValueError otherwise."""
    if isinstance(t, QType):
        return t
    if isinstance(t, str):
        try:
            return QType[t.upper()]
        except KeyError:
            raise ValueError(f"unknown ggml type name {t!r}") from None
    if isinstance(t, int) and not isinstance(t, bool):
        try:
            return QType(t)
        except ValueError:
            if t in REMOVED_IDS:
                raise ValueError(f"ggml type id {t} ({REMOVED_IDS[t]}) has been removed") from None
            raise ValueError(f"unknown ggml type id {t}") from None
    raise TypeError(f"expected a QType, a type name or a type id, got {type(t).__name__}")


def row_nbytes(qtype: QType, n: int) -> int:
    """Bytes taken by a row of ``n`` values; ``n`` must be a multiple of the block size."""
    g = BLOCK[qtype]
    if n % g.elems:
        raise ValueError(f"{qtype.name}: row length {n} is not a multiple of the block size {g.elems}")
    return n // g.elems * g.nbytes


def bits_per_weight(qtype: QType) -> float:
    g = BLOCK[qtype]
    return 8.0 * g.nbytes / g.elems
