"""Parity of random bit strings: the state-tracking task that Transformers and state-space models fail to
extrapolate and a traditional RNN solves.

    python examples/parity.py                            # LSTM, on the GPU if CuPy sees one, else the CPU
    python examples/parity.py --cell all --plot parity.png
    python examples/parity.py --cell slstm --device cpu  # NumPy arrays, the vanilla backend, the small default
    python examples/parity.py --cell slstm --device gpu  # CuPy arrays, backend auto (cuda_fused), a larger default

The model has one layer: an input projection of the one-hot bit to the cell's gate inputs ``Wx``, one
flashrnn_core cell run through the framework-free API (``forward`` / ``backward``), and a linear readout of
``h`` to one logit per step. The projection, the readout, the loss and a small Adam are written here with
NumPy (or CuPy): nothing else is needed.

Training sees strings of length ``--train-len`` (40) and is supervised at *every* step with the parity of the
prefix so far, so it sees every length from 1 to 40 (short strings first: the length grows from 4 to 40 over
the first half of training). Evaluation reads the prediction after the last bit of strings of lengths 1 to 256
(all at once, from the per-step outputs of one 256-step run) and reports the training lengths and 41 to 256.
What carries the solution past the training length: supervising every step (the state must hold the running
parity, not just reach it at the end), a small head (N=1, D=16), and a decaying learning rate that lets the
gates saturate. Seeds are fixed: a run is reproducible on the CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Callable

import numpy as np

try:
    import flashrnn_core as fc
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    import flashrnn_core as fc

from flashrnn_core.cells import CELLS

Array = Any  # numpy.ndarray or cupy.ndarray
CELL_NAMES = ("lstm", "slstm", "gru", "elman")


@dataclass(frozen=True)
class Config:
    """One training run. ``for_device`` gives the small CPU default and the larger GPU one."""

    cell: str = "lstm"
    steps: int = 300
    batch: int = 32
    heads: int = 1  # N
    head_dim: int = 16  # D
    train_len: int = 40
    eval_len: int = 256
    eval_batch: int = 512
    lr: float = 3e-2
    clip: float = 1.0  # global gradient-norm clip: parity's loss surface has cliffs
    curriculum: float = 0.5  # fraction of the steps over which the string length grows from 4 to train_len
    seed: int = 0
    xp: ModuleType = field(default=np, repr=False)
    backend: str = "vanilla"

    @staticmethod
    def for_device(device: str, **overrides: Any) -> "Config":
        """CPU: NumPy arrays, the vanilla backend, a small model. GPU: CuPy arrays, ``auto`` (cuda_fused forward
        where it can run), a larger batch and model, more steps."""
        if device == "cpu":
            base = Config()
        else:
            import cupy

            # Checked on the CPU (vanilla, the same math): lstm reaches 1.00 on lengths 41-256 with these.
            base = Config(steps=600, batch=256, head_dim=32, eval_batch=4096, xp=cupy, backend="auto")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def resolve_device(device: str) -> str:
    """``auto``: the GPU when CuPy sees one, else the CPU."""
    if device != "auto":
        return device
    try:
        import cupy

        return "gpu" if cupy.cuda.runtime.getDeviceCount() > 0 else "cpu"
    except Exception:
        return "cpu"


# ----------------------------------------------------------------------------------------------- the model


def init_params(cfg: Config) -> dict[str, Array]:
    """Input projection ``W_in [2, Gw*N*D]`` (one row per bit value), the cell's ``R`` and ``b``, the readout."""
    cell, xp, N, D = CELLS[cfg.cell], cfg.xp, cfg.heads, cfg.head_dim
    rng = np.random.default_rng(cfg.seed)
    H = N * D
    params = {
        "W_in": rng.standard_normal((2, cell.gates_w * H)),
        "R": rng.standard_normal((cell.gates_r, N, D, D)) / math.sqrt(D),
        "b": np.zeros((cell.gates_b, N, D)),
        "w_out": rng.standard_normal((H,)) / math.sqrt(H),
        "b_out": np.zeros(()),
    }
    if cfg.cell in ("lstm", "slstm"):
        params["b"][1] = 1.0  # forget gate open at the start: the usual LSTM initialisation
    return {k: xp.asarray(v, dtype=xp.float32) for k, v in params.items()}


def model_forward(params: dict[str, Array], bits: Array, cfg: Config) -> tuple[Array, Any]:
    """Per-step logits ``[B, T]`` of the parity so far, and what ``model_backward`` needs."""
    cell = CELLS[cfg.cell]
    B, T = bits.shape
    Wx = params["W_in"][bits].reshape(B, T, cell.gates_w, cfg.heads, cfg.head_dim)  # one-hot @ W_in
    result = fc.forward(Wx, params["R"], params["b"], function=cfg.cell, backend=cfg.backend)
    h = result.states[0].reshape(B, T, cfg.heads * cfg.head_dim)
    return h @ params["w_out"] + params["b_out"], (bits, result, h)


def model_backward(params: dict[str, Array], dlogits: Array, cache: Any, cfg: Config) -> dict[str, Array]:
    """Gradients of every parameter from the loss gradient on the logits ``[B, T]``."""
    xp = cfg.xp
    bits, result, h = cache
    B, T = bits.shape
    dh = dlogits[..., None] * params["w_out"]  # [B, T, H]
    grads = fc.backward(result, dstates=dh.reshape(1, B, T, cfg.heads, cfg.head_dim))
    dWx = grads.dWx.reshape(B * T, -1)
    onehot = xp.stack([bits == 0, bits == 1], axis=-1).reshape(B * T, 2).astype(xp.float32)
    return {"W_in": onehot.T @ dWx, "R": grads.dR, "b": grads.db,
            "w_out": h.reshape(B * T, -1).T @ dlogits.reshape(-1), "b_out": dlogits.sum()}


def bce_with_logits(xp: ModuleType, logits: Array, target: Array) -> tuple[float, Array]:
    """Mean binary cross-entropy and its gradient on the logits (stable for large |logits|)."""
    loss = xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))
    prob = 1 / (1 + xp.exp(-logits))
    return float(loss.mean()), (prob - target) / logits.size


class Adam:
    """Adam with bias correction, on a dict of arrays, after clipping the global gradient norm."""

    def __init__(self, params: dict[str, Array], lr: float, clip: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.lr, self.clip, self.betas, self.eps, self.t = lr, clip, betas, eps, 0
        self.m = {k: v * 0 for k, v in params.items()}
        self.v = {k: v * 0 for k, v in params.items()}

    def step(self, params: dict[str, Array], grads: dict[str, Array], lr_scale: float = 1.0) -> float:
        """Update ``params`` in place; returns the gradient norm before clipping."""
        norm = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads.values()))
        scale = min(1.0, self.clip / (norm + 1e-12))
        self.t += 1
        b1, b2 = self.betas
        lr = self.lr * lr_scale * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for k, g in grads.items():
            g = g.astype(params[k].dtype) * scale
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            params[k] -= lr * self.m[k] / ((self.v[k]) ** 0.5 + self.eps)
        return norm


# ------------------------------------------------------------------------------------------ data and runs


def parity_batch(xp: ModuleType, rng: np.random.Generator, batch: int, length: int) -> tuple[Array, Array]:
    """Random bits ``[B, T]`` (int) and the parity of every prefix ``[B, T]`` (float32 0/1)."""
    bits = rng.integers(0, 2, size=(batch, length))
    return xp.asarray(bits), xp.asarray(np.cumsum(bits, axis=1) % 2, dtype=xp.float32)


def accuracy_by_length(params: dict[str, Array], cfg: Config, seed: int = 1234) -> np.ndarray:
    """Accuracy of the parity prediction after the last bit, for every length 1..eval_len: ``acc[L - 1]``.

    The per-step outputs of one run over ``eval_len`` bits are the predictions for every prefix length.
    """
    rng = np.random.default_rng(seed)
    correct = np.zeros(cfg.eval_len)
    chunk = max(1, min(cfg.eval_batch, 256 if cfg.xp is np else cfg.eval_batch))
    for start in range(0, cfg.eval_batch, chunk):
        bits, target = parity_batch(cfg.xp, rng, min(chunk, cfg.eval_batch - start), cfg.eval_len)
        logits, _ = model_forward(params, bits, cfg)
        hits = (logits > 0) == (target > 0.5)
        correct += _to_numpy(hits.sum(axis=0))
    return correct / cfg.eval_batch


def _to_numpy(a: Array) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def train(cfg: Config, progress: Callable[[int, str], None] | None = None) -> dict[str, Array]:
    """Train on parity with per-step supervision; returns the parameters. A cosine learning-rate decay lets the
    gates saturate at the end, which is what carries the solution past the training length."""
    params = init_params(cfg)
    opt = Adam(params, cfg.lr, cfg.clip)
    rng = np.random.default_rng(cfg.seed + 1)
    for step in range(cfg.steps):
        bits, target = parity_batch(cfg.xp, rng, cfg.batch, train_length(cfg, step))
        logits, cache = model_forward(params, bits, cfg)
        loss, dlogits = bce_with_logits(cfg.xp, logits, target)
        opt.step(params, model_backward(params, dlogits, cache, cfg),
                 lr_scale=0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        if progress is not None:
            progress(step + 1, f"loss {loss:.4f}")
    return params


def train_length(cfg: Config, step: int) -> int:
    """The string length at ``step``: short strings first (a curriculum) when ``cfg.curriculum`` > 0."""
    if cfg.curriculum <= 0:
        return cfg.train_len
    grown = 4 + (cfg.train_len - 4) * step / (cfg.curriculum * cfg.steps)
    return int(min(cfg.train_len, grown))


def summarize(acc: np.ndarray, train_len: int) -> dict[str, float]:
    """Train-length and extrapolation accuracies from ``accuracy_by_length``'s per-length array."""
    extra = acc[train_len:]  # lengths train_len+1 .. eval_len
    return {
        "train": float(acc[:train_len].mean()),
        "at_train_len": float(acc[train_len - 1]),
        "extrapolation": float(extra.mean()) if extra.size else float("nan"),
        "min_extrapolation": float(extra.min()) if extra.size else float("nan"),
        "at_max_len": float(acc[-1]),
    }


def run(cfg: Config, show_progress: bool = True) -> tuple[dict[str, float], np.ndarray]:
    """Train, then evaluate on lengths 1..eval_len; returns the summary (with seconds) and per-length accuracy."""
    start = time.perf_counter()
    bar = ProgressBar(cfg.steps, f"{cfg.cell:5s}") if show_progress else None
    params = train(cfg, bar.update if bar else None)
    if bar:
        bar.close()
    acc = accuracy_by_length(params, cfg)
    summary = summarize(acc, cfg.train_len)
    summary["seconds"] = time.perf_counter() - start
    return summary, acc


class ProgressBar:
    """A one-line progress bar on stderr (no dependency): redrawn at most ten times a second."""

    def __init__(self, total: int, label: str, width: int = 30):
        self.total, self.label, self.width, self.start, self.last = total, label, width, time.perf_counter(), 0.0

    def update(self, done: int, note: str = "") -> None:
        now = time.perf_counter()
        if done < self.total and now - self.last < 0.1:
            return
        self.last = now
        filled = int(self.width * done / max(self.total, 1))
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
                         f"{now - self.start:5.1f}s {note}  ")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def table(results: dict[str, dict[str, float]], cfg: Config) -> str:
    """The final table, markdown."""
    lines = [f"| cell | acc. len <= {cfg.train_len} | acc. len {cfg.eval_len} | extrapolation "
             f"{cfg.train_len + 1}-{cfg.eval_len} (mean / min) | seconds |", "| --- | --- | --- | --- | --- |"]
    for name, s in results.items():
        lines.append(f"| {name} | {s['train']:.2f} | {s['at_max_len']:.2f} | {s['extrapolation']:.2f} / "
                     f"{s['min_extrapolation']:.2f} | {s['seconds']:.0f} |")
    return "\n".join(lines)


def plot(curves: dict[str, np.ndarray], cfg: Config, path: str) -> None:
    """Accuracy vs length, one line per cell, the training range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    lengths = np.arange(1, cfg.eval_len + 1)
    ax.axvspan(1, cfg.train_len, color="0.9", label="training lengths")
    for (name, acc), style in zip(curves.items(), ("-", "--", "-.", ":") * 2, strict=False):
        ax.plot(lengths, acc, style, label=name)  # styles keep curves visible where they coincide (at 1.00)
    ax.axhline(0.5, color="0.5", linestyle=":", label="chance")
    ax.set(xlabel="sequence length", ylabel="accuracy", ylim=(0.4, 1.02), title="Parity: accuracy vs length")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="lstm", help="lstm, slstm, gru, elman, a comma list, or all")
    p.add_argument("--steps", type=int, default=None, help="training steps (CPU default 300, GPU 600)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto",
                   help="auto: the GPU when CuPy sees one, else the CPU")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--heads", type=int, default=None, help="N")
    p.add_argument("--head-dim", type=int, default=None, help="D")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--train-len", type=int, default=None)
    p.add_argument("--eval-len", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--backend", default=None, help="vanilla on the CPU; auto (cuda_fused first) on the GPU")
    p.add_argument("--plot", default=None, metavar="PNG", help="write accuracy vs length here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cells = CELL_NAMES if args.cell == "all" else tuple(args.cell.split(","))
    unknown = [c for c in cells if c not in CELL_NAMES]
    if unknown:
        raise SystemExit(f"--cell: expected one of {', '.join(CELL_NAMES)} or all, got {', '.join(unknown)}")
    device = resolve_device(args.device)
    overrides = dict(steps=args.steps, batch=args.batch, heads=args.heads, head_dim=args.head_dim, lr=args.lr,
                     train_len=args.train_len, eval_len=args.eval_len, seed=args.seed, backend=args.backend)
    results, curves = {}, {}
    for name in cells:
        cfg = Config.for_device(device, cell=name, **overrides)
        results[name], curves[name] = run(cfg, show_progress=not args.quiet)
    print(f"device {device}, backend {cfg.backend}, {cfg.steps} steps of {cfg.batch} strings of length "
          f"{cfg.train_len}, N={cfg.heads} D={cfg.head_dim}")
    print(table(results, cfg))
    if args.plot:
        plot(curves, cfg, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
