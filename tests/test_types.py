import pytest

from qformat.types import BLOCK, REMOVED_IDS, TYPE_COUNT, QType, as_qtype


def test_table_matches_libggml(ggml_ref):
    for i in range(TYPE_COUNT):
        elems, nbytes, name = ggml_ref.type_geometry(i)
        if i in REMOVED_IDS:
            assert i not in set(QType)
            assert (elems, nbytes) == (0, 0)
            continue
        qt = QType(i)
        assert BLOCK[qt] == (elems, nbytes), qt
        assert qt.name.lower() == name.lower()


def test_as_qtype():
    assert as_qtype("q4_k") is QType.Q4_K
    assert as_qtype(12) is QType.Q4_K
    assert as_qtype(QType.F16) is QType.F16
    with pytest.raises(ValueError, match="removed"):
        as_qtype(4)
    with pytest.raises(ValueError):
        as_qtype("Q4_Z")
    with pytest.raises(TypeError):
        as_qtype(True)
