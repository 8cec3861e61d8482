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


def test_ddp_parity_gradients_equal_one_process_on_cpu():
    """Two gloo processes on the CPU (vanilla): DDP's averaged gradients equal one process on the global batch."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")])}
    args = ["--device", "cpu", "--world-size", "2", "--check", "--steps", "4", "--batch", "8", "--length", "6",
            "--eval-length", "12", "--heads", "2", "--head-dim", "8", "--repeats", "1"]
    done = subprocess.run([sys.executable, str(EXAMPLES / "ddp_parity.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gradients after one step, DDP on 2 x 4 vs one process on 8: equal" in done.stdout
    assert "step     4  loss" in done.stdout


def test_readme_first_command_runs_the_parity_demo():
    """The README's first command installs and runs examples/parity.py (issue 9: the demo is the main job)."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "pip install" in first_block and first_block.strip().endswith("python examples/parity.py")
