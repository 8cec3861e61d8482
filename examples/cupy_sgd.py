"""Train an LSTM with flashrnn_core alone: arrays in, explicit forward/backward, a hand-written SGD step.

No framework: the input projection, the read-out and their gradients are three matrix products written
here, the recurrence and its gradients are ``flashrnn_core.forward``/``backward``. The task: read a sequence of
numbers and output, at every step, the number read two steps before (the LSTM must learn to remember).

Runs on a GPU with CuPy arrays (backend ``auto``: the fused kernels); without one it falls back to NumPy and
the ``vanilla`` backend, so it runs anywhere:

    python examples/cupy_sgd.py            # --steps 200 --batch 16 --seq-len 16 --hidden 16 --lr 2.0
    python examples/cupy_sgd.py --cpu      # force NumPy
"""

from __future__ import annotations

import argparse
from types import ModuleType

import numpy as np

import flashrnn_core as fc


def array_module(force_cpu: bool) -> ModuleType:
    """CuPy when a GPU is usable, else NumPy."""
    if not force_cpu:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy
        except Exception:  # no CuPy, no driver, no device: the CPU path
            pass
    return np


def batch(xp: ModuleType, rng: np.random.Generator, B: int, T: int, delay: int = 2) -> tuple:
    """x ``[B, T, 1]`` uniform in [-1, 1], and the target y ``[B, T, 1]``: x delayed by ``delay`` steps (zeros
    before). Predicting 0 scores 1/3 (the variance of x)."""
    x = rng.uniform(-1, 1, (B, T, 1)).astype(np.float32)
    y = np.zeros_like(x)
    y[:, delay:] = x[:, :-delay]
    return xp.asarray(x), xp.asarray(y)


def init(xp: ModuleType, rng: np.random.Generator, H: int) -> dict:
    """Parameters: W_in ``[1, 4H]`` (input projection), R ``[4, 1, H, H]``, b ``[4, 1, H]``, W_out ``[H, 1]``."""
    def uniform(*shape, bound=1 / np.sqrt(H)):
        return xp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))

    return {"W_in": uniform(1, 4 * H, bound=1.0), "R": uniform(4, 1, H, H), "b": uniform(4, 1, H),
            "W_out": uniform(H, 1)}


def loss_and_grads(p: dict, x, y) -> tuple[float, dict]:
    """Mean squared error of the read-out and the gradient of every parameter (same keys as ``p``)."""
    B, T, _ = x.shape
    H = p["W_out"].shape[0]
    Wx = (x @ p["W_in"]).reshape(B, T, 4, 1, H)  # the input projection is the caller's (SPEC.md)
    result = fc.forward(Wx, p["R"], p["b"], function="lstm")
    h = result.states[0].reshape(B, T, H)  # state 0 is h: [S, B, T, N, D] -> [B, T, H]
    err = h @ p["W_out"] - y
    d_out = 2 * err / err.size  # d loss / d prediction
    dh = (d_out @ p["W_out"].T).reshape(1, B, T, 1, H)  # a gradient on h only: dstates [1, B, T, N, D]
    grads = fc.backward(result, dstates=dh)
    return float((err * err).mean()), {
        "W_in": x.reshape(B * T, 1).T @ grads.dWx.reshape(B * T, 4 * H),
        "R": grads.dR,
        "b": grads.db,
        "W_out": h.reshape(B * T, H).T @ d_out.reshape(B * T, 1),
    }


def main(argv: list[str] | None = None) -> list[float]:
    """Train and print the loss; returns the loss of every step."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="use NumPy even where a GPU is available")
    args = parser.parse_args(argv)

    xp = array_module(args.cpu)
    rng = np.random.default_rng(args.seed)
    params = init(xp, rng, args.hidden)
    print(f"arrays: {xp.__name__}")
    losses = []
    for step in range(args.steps):
        loss, grads = loss_and_grads(params, *batch(xp, rng, args.batch, args.seq_len))
        for name, g in grads.items():  # plain SGD, in place
            params[name] -= args.lr * g
        losses.append(loss)
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss:.5f}")
    return losses


if __name__ == "__main__":
    main()
