"""The parity demo (examples/parity.py) on the CPU: its gradients are right, and a tiny run learns."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "parity.py"


@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("parity_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cell", ["lstm", "slstm", "gru", "elman"])
def test_model_gradients_match_finite_differences(parity, cell):
    """Projection, cell (vanilla, float64), readout and loss: analytic gradients equal central differences."""
    cfg = replace(parity.Config(), cell=cell, heads=2, head_dim=3)
    params = {k: v.astype(np.float64) for k, v in parity.init_params(cfg).items()}
    bits, target = parity.parity_batch(np, np.random.default_rng(0), 3, 6)

    def loss_and_grad(p):
        logits, cache = parity.model_forward(p, bits, cfg)
        loss, dlogits = parity.bce_with_logits(np, logits, target)
        return loss, dlogits, cache

    _, dlogits, cache = loss_and_grad(params)
    grads = parity.model_backward(params, dlogits, cache, cfg)
    rng = np.random.default_rng(1)
    for name, value in params.items():
        flat = value.reshape(-1)
        for i in rng.choice(flat.size, min(4, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + 1e-6
            up = loss_and_grad(params)[0]
            flat[i] = old - 1e-6
            down = loss_and_grad(params)[0]
            flat[i] = old
            numeric = (up - down) / 2e-6
            assert grads[name].reshape(-1)[i] == pytest.approx(numeric, rel=1e-4, abs=1e-8), (name, i)


def test_tiny_run_learns_parity(parity):
    """150 steps on strings of length 8: far above chance (0.5) on the training lengths (measured: 1.00)."""
    cfg = replace(parity.Config(), cell="lstm", steps=150, batch=16, train_len=8, eval_len=16, eval_batch=128)
    summary, acc = parity.run(cfg, show_progress=False)
    assert acc.shape == (16,)
    assert summary["train"] > 0.9, summary
    assert summary["at_train_len"] > 0.8, summary


def test_accuracy_by_length_reads_every_prefix(parity, monkeypatch):
    """A readout that knows the parity of every prefix scores 1 at every length; one a step late scores ~0.5."""
    def oracle(params, bits, cfg, shift=0):
        prefix = np.cumsum(bits, axis=1) % 2
        prefix = np.roll(prefix, shift, axis=1)
        return 2.0 * prefix - 1.0, None

    cfg = replace(parity.Config(), eval_len=30, eval_batch=300)
    monkeypatch.setattr(parity, "model_forward", oracle)
    assert np.array_equal(parity.accuracy_by_length(None, cfg), np.ones(30))
    monkeypatch.setattr(parity, "model_forward", lambda p, b, c: oracle(p, b, c, shift=1))
    late = parity.accuracy_by_length(None, cfg)
    assert abs(late[1:].mean() - 0.5) < 0.1
    summary = parity.summarize(np.r_[np.ones(10), np.full(20, 0.5)], train_len=10)
    assert summary["train"] == 1.0 and summary["extrapolation"] == 0.5 and summary["at_max_len"] == 0.5


def test_command_line_writes_table_and_plot(parity, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "parity.png"
    assert parity.main(["--cell", "elman,gru", "--steps", "3", "--eval-len", "48", "--quiet", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| elman |" in out and "| gru |" in out and "extrapolation 41-48" in out
    assert png.stat().st_size > 0


def test_unknown_cell_is_refused(parity):
    with pytest.raises(SystemExit, match="--cell"):
        parity.main(["--cell", "transformer"])


@pytest.mark.gpu
def test_gpu_run_uses_the_fused_forward_and_learns(parity):
    """The GPU path (CuPy arrays, backend auto): cuda_fused runs the forward, and the tiny run learns as on the CPU."""
    cfg = parity.Config.for_device("gpu", cell="lstm", steps=150, batch=16, train_len=8, eval_len=16,
                                   eval_batch=256)
    params = parity.init_params(cfg)
    bits, _ = parity.parity_batch(cfg.xp, np.random.default_rng(0), 4, 8)
    _, (_, result, _) = parity.model_forward(params, bits, cfg)
    assert result.backend == "cuda_fused"
    summary, _ = parity.run(cfg, show_progress=False)
    assert summary["train"] > 0.9, summary
