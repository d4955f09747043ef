"""Shared fixtures: where the real data lives, and whether the C reference is installed."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from qformat import _ggml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec"
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(rel: str) -> Path:
    """A file under ../shared/data, or skip the test with a message when it is absent."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"real test data not present: {p} (../shared/data is absent on a fresh clone)")
    return p


def load_tool(name: str) -> ModuleType:
    """A script of tools/ imported from its path (tools/ is not a package), e.g. ``load_tool("gen_imatrix")``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def ggml_ref():
    """The ctypes binding to ggml's C library; skips when ggml-python is not installed."""
    if not _ggml.available():
        pytest.skip("ggml-python (extra 'ref') not installed: differential test against ggml's C code skipped")
    return _ggml
