"""A built wheel carries the kernels (cuda_src/ as package data), not only an editable install; every name the
project's own code imports from itself exists."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_every_kernel_source(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("flashrnn_core-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"flashrnn_core/cuda_src/{p.relative_to(ROOT / 'cuda_src')}" for p in (ROOT / "cuda_src").rglob("*")
               if p.suffix in (".cu", ".cuh")}
    assert sources and sources <= names, sorted(sources - names)
    assert "flashrnn_core/runtime/compile.py" in names and "flashrnn_core/cells/lstm.py" in names


PROJECT_PACKAGES = ("flashrnn_core", "bench", "examples", "tests")


def _project_imports(path: Path):
    """(module, name, line) of each ``from <project module> import name`` in ``path``, at any depth: the GPU tests
    and benchmarks import inside their functions, where a CPU run never reaches."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in PROJECT_PACKAGES:
            yield from ((node.module, alias.name, node.lineno) for alias in node.names)


def test_every_project_import_resolves():
    # A GPU test importing a name that moved fails only on a GPU, where the whole suite runs seldom; this finds it
    # on CI, which has none.
    files = sorted(p for d in PROJECT_PACKAGES for p in (ROOT / d).rglob("*.py"))
    missing = []
    for path in files:
        for module, name, line in _project_imports(path):
            target = importlib.import_module(module)
            if name != "*" and not hasattr(target, name) \
                    and importlib.util.find_spec(f"{module}.{name}") is None:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert len(files) > 50 and not missing, missing
