"""The baselines every row is compared with, timed exactly like our calls (``timing.measure``).

- cuDNN through ``torch.nn.LSTM`` / ``nn.GRU`` with hidden size N*D (one head of size N*D: cuDNN has no heads),
  the same B, T and dtype. ``fw``: the module's forward under ``no_grad``; ``fwbw``: forward plus ``backward()`` of
  a sum over the outputs, with gradients on the input and the weights. cuDNN's forward also computes the input
  projection ``W x``, which our ``Wx`` already holds: the comparison is in cuDNN's favour by that GEMM.
- Cells without a cuDNN counterpart get the nearest one, named in the row's ``baseline``: sLSTM -> ``nn.LSTM``
  (same gate count), Elman -> ``nn.RNN(nonlinearity="tanh")``.
- A plain PyTorch loop: the cell's step (SPEC.md) written with torch ops, one Python iteration per time step,
  heads as a batched matmul, on the very inputs our backends get; what one writes without a fused kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .timing import Timing, measure

#: function -> (torch.nn module, the row's ``baseline`` name).
CUDNN = {
    "lstm": ("LSTM", "cudnn"),
    "gru": ("GRU", "cudnn"),
    "slstm": ("LSTM", "cudnn lstm"),
    "elman": ("RNN", "cudnn rnn_tanh"),
}
CUDNN_DTYPES = ("bfloat16", "float16", "float32")


def torch_missing() -> str | None:
    """None when torch imports, else why not (the baselines are then recorded as errors)."""
    try:
        import torch  # noqa: F401
    except ImportError as err:
        return f"torch is not installed: {err}"
    return None


@dataclass(frozen=True)
class BaselineKey:
    """What a cuDNN timing depends on: several rows (head layouts of one hidden size) share one. ``lengths``:
    the per-sequence lengths of a PackedSequence input, or None for the padded batch."""

    module: str
    pass_: str
    B: int
    T: int
    H: int
    dtype: str
    lengths: tuple[int, ...] | None = None


def baseline_name(function: str, device: str) -> str:
    """The row's ``baseline`` field; on the CPU (dry run) torch's native kernels stand in for cuDNN."""
    name = CUDNN[function][1]
    return name if device == "cuda" else name.replace("cudnn", "torch-cpu")


def cudnn_call(key: BaselineKey, device: str, seed: int = 0) -> Callable[[], Any]:
    """A closure running one ``fw`` or ``fwbw`` of the module ``key`` names on random input: a padded batch, or
    with ``key.lengths`` a PackedSequence, packed once outside the call (as a data loader hands it over)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(seed)
    dtype = getattr(torch, key.dtype)
    net = getattr(torch.nn, key.module)(key.H, key.H, batch_first=True).to(device=device, dtype=dtype)
    if device == "cuda":
        # One weight buffer, as cuDNN wants (else it compacts them on every call). A no-op in bfloat16: torch's
        # flatten takes only torch.backends.cudnn.CUDNN_TENSOR_DTYPES (fp16/32/64), so a bf16 call copies the
        # 9.4 MB of weights (hidden 768) and warns, as for any bf16 user of nn.LSTM: microseconds of a 9-16 ms call.
        net.flatten_parameters()
    x = torch.randn(key.B, key.T, key.H, device=device, dtype=dtype)
    if key.lengths is not None:
        x = pack_padded_sequence(x, torch.tensor(key.lengths), batch_first=True, enforce_sorted=False)
    leaf = x if key.lengths is None else x.data  # the packed data is the input the gradient reaches
    if key.pass_ == "fw":
        def forward() -> Any:
            with torch.no_grad():
                return net(x)[0]
        return forward

    leaf.requires_grad_(True)
    params = list(net.parameters())

    def forward_backward() -> Any:
        for p in params + [leaf]:
            p.grad = None  # fresh gradients each call: backward writes them rather than accumulating
        out = net(x)[0]
        (out if key.lengths is None else out.data).sum().backward()
        return out
    return forward_backward


def time_cudnn(key: BaselineKey, device: str, runs: int, spin_ms: float, strict: bool = True) -> Timing:
    return measure(cudnn_call(key, device), "torch" if device == "cuda" else "cpu", runs, spin_ms=spin_ms,
                   strict=strict)


# ----------------------------------------------------------------------------------------- the plain loop


def _step(torch: Any, function: str, x: Any, rs: Any, b: Any, s: list) -> list:
    """One step of ``function`` (SPEC.md) on ``[B, N, D]`` operands.

    x ``[Gw, B, N, D]``, rs ``[Gr, B, N, D]``, b ``[Gb, 1, N, D]``, s: the S previous states; returns the new ones.
    """
    sig = torch.sigmoid
    if function == "elman":
        return [torch.tanh(x[0] + rs[0] + b[0])]
    if function == "gru":
        g = rs[0] + b[0]
        r = sig(x[0] + rs[1] + b[1])
        z = sig(x[1] + rs[2] + b[2])
        return [z * s[0] + (1 - z) * torch.tanh(x[2] + b[3] + r * g)]
    i, f, z, o = (x[k] + rs[k] + b[k] for k in range(4))
    if function == "lstm":
        c = sig(f) * s[1] + sig(i) * torch.tanh(z)
        return [sig(o) * torch.tanh(c), c]
    _, c_prev, n_prev, m_prev = s  # slstm
    lf = torch.nn.functional.logsigmoid(f) + m_prev
    m = torch.where(n_prev == 0, i, torch.maximum(i, lf))
    ig, fg = torch.exp(i - m), torch.exp(lf - m)
    c = fg * c_prev + ig * torch.tanh(z)
    n = torch.clamp(fg * n_prev + ig, min=1.0)
    return [sig(o) * c / n, c, n, m]


def loop_forward(Wx: Any, R: Any, b: Any, function: str, states: int) -> Any:
    """All states ``[S, B, T, N, D]`` from torch tensors Wx ``[B, T, Gw, N, D]``, R ``[Gr, N, D, D]``,
    b ``[Gb, N, D]``, from zero initial states."""
    import torch

    B, T, _, N, D = Wx.shape
    s = [Wx.new_zeros(B, N, D) for _ in range(states)]
    xs = Wx.permute(1, 2, 0, 3, 4)  # [T, Gw, B, N, D]: one contiguous slice a step
    Rb, bb = R.unsqueeze(1), b.unsqueeze(1)  # [Gr, 1, N, D, D], [Gb, 1, N, D]
    out = []
    for t in range(T):
        rs = torch.matmul(Rb, s[0].unsqueeze(-1)).squeeze(-1)  # [Gr, B, N, D]
        s = _step(torch, function, xs[t], rs, bb, s)
        out.append(torch.stack(s))
    return torch.stack(out, dim=2)


def to_torch(a: Any, device: str, dtype: str) -> Any:
    """A NumPy or CuPy array as a torch tensor in ``dtype`` (through float32: torch takes no ml_dtypes bfloat16)."""
    import torch

    return torch.as_tensor(a.astype(np.float32), device=device).to(getattr(torch, dtype)).contiguous()


def loop_call(function: str, states: int, pass_: str, arrays: dict[str, Any], device: str,
              dtype: str) -> Callable[[], Any]:
    """A closure running one ``fw`` or ``fwbw`` of the plain loop on our inputs (Wx, R, b, dstates)."""
    import torch

    Wx, R, b = (to_torch(arrays[k], device, dtype) for k in ("Wx", "R", "b"))
    if pass_ == "fw":
        def forward() -> Any:
            with torch.no_grad():
                return loop_forward(Wx, R, b, function, states)
        return forward

    dstates = to_torch(arrays["dstates"], device, dtype)
    leaves = [t.requires_grad_(True) for t in (Wx, R, b)]

    def forward_backward() -> Any:
        for t in leaves:
            t.grad = None
        out = loop_forward(*leaves, function, states)
        out.backward(dstates)  # the upstream gradient on all states, as our fwbw gets
        return out
    return forward_backward


def time_loop(function: str, states: int, pass_: str, arrays: dict[str, Any], device: str, dtype: str,
              runs: int, spin_ms: float, strict: bool = True) -> Timing:
    fn = loop_call(function, states, pass_, arrays, device, dtype)
    return measure(fn, "torch" if device == "cuda" else "cpu", runs, spin_ms=spin_ms, strict=strict)
