"""The examples run, tiny, and do what they say (examples/cupy_sgd.py: the loss goes down)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--steps", "60", "--batch", "8", "--seq-len", "8", "--hidden", "8"]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cupy_sgd_learns_on_numpy(capsys):
    losses = load("cupy_sgd").main([*TINY, "--cpu"])
    assert "arrays: numpy" in capsys.readouterr().out
    assert len(losses) == 60 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])


def test_cupy_sgd_runs_as_a_script():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(EXAMPLES / "cupy_sgd.py"), "--steps", "3", "--cpu"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step    2  loss" in done.stdout


@pytest.mark.gpu
def test_cupy_sgd_learns_on_cupy(capsys):
    losses = load("cupy_sgd").main(TINY)
    assert "arrays: cupy" in capsys.readouterr().out
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
