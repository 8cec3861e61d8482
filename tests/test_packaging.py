"""A built wheel carries the kernels (cuda_src/ as package data), not only an editable install."""

from __future__ import annotations

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
