"""PyTorch adapter: ``flashrnn`` as a differentiable ``torch.library`` custom op, and ``nn.Module``s.

Thin by design: every computation of the recurrence goes through ``flashrnn_core.forward``/``backward``.
Tensors are handed over with DLPack and never copied: CUDA tensors become CuPy arrays and run on torch's
current CUDA stream (given to CuPy as an external stream for the call), CPU tensors become NumPy arrays and run
on the ``vanilla`` backend. bfloat16 travels as its bits (a uint16 view, still no copy): NumPy's DLPack import
has no bfloat16, and ``ml_dtypes.bfloat16`` cannot be exported.

Shapes (SPEC.md): Wx ``[B, T, Gw, N, D]``, R ``[Gr, N, D, D]``, b ``[Gb, N, D]``, states ``[S, B, 1, N, D]``;
``flashrnn`` returns ``(states [S, B, T, N, D], last_states [S, B, 1, N, D])``.

Two ops, ``torch.ops.flashrnn_core.forward`` and ``torch.ops.flashrnn_core.backward``, each with a fake
implementation, so ``torch.compile(fullgraph=True)`` traces through them; the autograd formula is registered
with ``torch.library.register_autograd`` (torch wraps it in a ``torch.autograd.Function``). The forward op also
returns the backend's saved values ``[B, T, n_saved, N, D]`` for the backward op. Double backward is
not supported. Both ops take an optional integer tensor ``lengths [B]`` (variable lengths, not differentiable);
the modules take a ``PackedSequence`` like torch.nn.LSTM.

Memory note: on CUDA the outputs are allocated by CuPy's memory pool (on torch's stream) and shared with torch
through DLPack, so they count in CuPy's pool, not torch's caching allocator.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from flashrnn_core import _arrays, api
from flashrnn_core.cells import CELLS, Cell

__all__ = ["flashrnn", "LSTM", "GRU", "sLSTM", "Elman", "from_torch"]

States = Union[Tensor, tuple[Tensor, ...]]


# ------------------------------------------------------------------------------------- tensors <-> arrays


def to_array(t: Tensor):
    """The NumPy (CPU) or CuPy (CUDA) array sharing ``t``'s memory: same shape, strides and dtype."""
    t = t.detach()
    if t.dtype == torch.bfloat16:  # no bfloat16 in NumPy's DLPack import: share the bits, reinterpret them
        return to_array(t.view(torch.uint16)).view(_arrays.bfloat16)
    if t.is_cuda:
        import cupy

        return cupy.from_dlpack(t)
    return np.from_dlpack(t)


def to_tensor(a) -> Tensor:
    """The tensor sharing the memory of a NumPy or CuPy array (the inverse of ``to_array``)."""
    if np.dtype(a.dtype) == _arrays.bfloat16:  # ml_dtypes.bfloat16 has no DLPack code: export the bits
        return to_tensor(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_dlpack(a)


@contextlib.contextmanager
def _on_torch_stream(t: Tensor) -> Iterator[None]:
    """For CUDA ``t``: make t's device and torch's current stream on it CuPy's current device and stream, so
    the work is ordered with what torch queued before and after (no synchronisation)."""
    if not t.is_cuda:
        yield
        return
    import cupy

    device = t.device.index if t.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device), _arrays.cupy_stream(stream.cuda_stream, device):
        yield


def _cell(function: str) -> Cell:
    if function not in CELLS:  # the fake implementations see no arrays, so they check the name themselves
        raise ValueError(f"function: expected one of {sorted(CELLS)}, got {function!r}")
    return CELLS[function]


def _saved_dtype(Wx: Tensor) -> torch.dtype:
    """The dtype the forward op returns the saved values in, known before it runs (for the fake).

    CPU runs only on ``vanilla``, which saves in the compute dtype (float32, float64 for float64); the GPU
    backends save in Wx's dtype, and a ``vanilla`` fallback on CUDA is converted to that.
    """
    if Wx.is_cuda or Wx.dtype == torch.float64:
        return Wx.dtype
    return torch.float32


# ----------------------------------------------------------------------------------------------- the ops


@torch.library.custom_op("flashrnn_core::forward", mutates_args=())
def _forward_op(
    Wx: Tensor, R: Tensor, b: Tensor, states: Optional[Tensor], function: str, backend: str,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """-> (states ``[S, B, T, N, D]`` in Wx's dtype, saved ``[B, T, n_saved, N, D]`` in ``_saved_dtype``).
    ``lengths``: ``[B]`` integers, on the CPU or on Wx's device, or None."""
    result = _run_forward(Wx, R, b, states, function, backend, lengths, save_for_backward=True)
    out, saved = to_tensor(result.states), to_tensor(result.saved)
    # The fakes promise dense outputs; .contiguous() and .to() are no-ops unless a backend returned a strided
    # array or vanilla ran on CUDA.
    return out.contiguous(), saved.to(_saved_dtype(Wx)).contiguous()


def _run_forward(Wx, R, b, states, function, backend, lengths, save_for_backward: bool) -> api.ForwardResult:
    with _on_torch_stream(Wx):
        arrays = [None if a is None else to_array(a) for a in (Wx, R, b, states)]
        return api.forward(*arrays, function=function, backend=backend, lengths=_lengths_array(lengths),
                           save_for_backward=save_for_backward)


@torch.library.custom_op("flashrnn_core::forward_inference", mutates_args=())
def _forward_inference_op(
    Wx: Tensor, R: Tensor, b: Tensor, states: Optional[Tensor], function: str, backend: str,
    lengths: Optional[Tensor] = None,
) -> Tensor:
    """-> states ``[S, B, T, N, D]`` in Wx's dtype, from the forward that saves nothing for backward (no
    autograd: ``flashrnn`` takes it where no gradient is wanted)."""
    result = _run_forward(Wx, R, b, states, function, backend, lengths, save_for_backward=False)
    return to_tensor(result.states).contiguous()


@_forward_inference_op.register_fake
def _forward_inference_fake(Wx, R, b, states, function, backend, lengths=None):
    B, T, _, N, D = Wx.shape
    return Wx.new_empty((_cell(function).states, B, T, N, D))


@_forward_op.register_fake
def _forward_fake(Wx, R, b, states, function, backend, lengths=None):
    cell = _cell(function)
    B, T, _, N, D = Wx.shape
    return Wx.new_empty((cell.states, B, T, N, D)), Wx.new_empty((B, T, cell.n_saved, N, D), dtype=_saved_dtype(Wx))


@torch.library.custom_op("flashrnn_core::backward", mutates_args=())
def _backward_op(
    Wx: Tensor, R: Tensor, b: Tensor, states0: Optional[Tensor], states: Tensor, saved: Tensor, dstates: Tensor,
    function: str, backend: str, lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (dWx, dR, db, dstates_initial), each shaped and typed like its input (Wx's dtype for the last when
    there were no initial states)."""
    with _on_torch_stream(Wx):
        Wx_a, R_a, b_a, s0_a, states_a, saved_a, ds_a = (
            None if a is None else to_array(a) for a in (Wx, R, b, states0, states, saved, dstates)
        )
        result = api.result_from_saved(Wx_a, R_a, b_a, s0_a, states_a, saved_a, function, backend,
                                       lengths=_lengths_array(lengths))
        return tuple(to_tensor(g).contiguous() for g in api.backward(result, dstates=ds_a))  # dense, as the fake


@_backward_op.register_fake
def _backward_fake(Wx, R, b, states0, states, saved, dstates, function, backend, lengths=None):
    S, B = states.shape[:2]
    s0_like = states0 if states0 is not None else Wx.new_empty((S, B, 1, *Wx.shape[3:]))
    return torch.empty_like(Wx), torch.empty_like(R), torch.empty_like(b), torch.empty_like(s0_like)


def _lengths_array(lengths: Optional[Tensor]):
    """The NumPy or CuPy array sharing ``lengths``' memory; CPU lengths are what ``validate`` checks without a
    synchronisation (CUDA ones cost one read-back, forward and backward)."""
    return None if lengths is None else to_array(lengths)


def _setup_context(ctx, inputs, output) -> None:
    Wx, R, b, states0, function, backend, lengths = inputs
    states, saved = output
    ctx.save_for_backward(Wx, R, b, states0, states, saved, lengths)
    ctx.function, ctx.backend = function, backend
    ctx.mark_non_differentiable(saved)


def _backward(ctx, dstates: Tensor, _dsaved: Tensor):
    Wx, R, b, states0, states, saved, lengths = ctx.saved_tensors
    if dstates is None:
        dstates = torch.zeros_like(states)
    dWx, dR, db, ds0 = _backward_op(Wx, R, b, states0, states, saved, dstates, ctx.function, ctx.backend, lengths)
    return dWx, dR, db, (ds0 if states0 is not None else None), None, None, None  # lengths: not differentiable


torch.library.register_autograd("flashrnn_core::forward", _backward, setup_context=_setup_context)


def flashrnn(
    Wx: Tensor, R: Tensor, b: Tensor, states: Optional[Tensor] = None, function: str = "lstm", backend: str = "auto",
    lengths: Union[Tensor, Sequence[int], None] = None,
) -> tuple[Tensor, Tensor]:
    """FlashRNN's functional call on tensors, differentiable in Wx, R, b and states.

    Args: Wx ``[B, T, Gw, N, D]``, R ``[Gr, N, D, D]``, b ``[Gb, N, D]``, states ``[S, B, 1, N, D]`` or None
    (zeros); function and backend as in ``flashrnn_core.forward``. lengths: ``[B]`` integers in 1..T (an integer
    tensor on the CPU or on Wx's device, or a list), or None; not differentiable. A CPU tensor is the cheap
    kind: a CUDA one costs a read-back of its range in the forward and in the backward.
    Returns ``(states [S, B, T, N, D], last_states [S, B, 1, N, D])``; ``last_states`` is a view of ``states``.
    With lengths, a sequence's states after its end repeat its last valid ones, so ``last_states`` holds each
    sequence's states at its own end (``flashrnn_core.forward``).
    """
    # Dense inputs: the backward op hands these same tensors to api.backward, which does not re-densify them.
    args = [None if a is None else a.contiguous() for a in (Wx, R, b, states)]
    if lengths is not None and not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)  # a list: validate refuses what is not integers
    wants_grad = torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args)
    if wants_grad:
        out, _ = torch.ops.flashrnn_core.forward(*args, function, backend, lengths)
    else:  # no_grad, inference_mode or constant inputs: the forward that saves nothing for a backward
        out = torch.ops.flashrnn_core.forward_inference(*args, function, backend, lengths)
    return out, out[:, :, -1:]


# --------------------------------------------------------------------------------------------- modules


class _RNN(nn.Module):
    """A stack of flashrnn layers with torch.nn.LSTM's interface: ``forward(input, hx=None) -> (output, h_n)``.

    input ``[T, B, input_size]`` (``[B, T, input_size]`` with ``batch_first``) -> output ``[T, B, dirs * H]``
    (``[B, T, dirs * H]``); hx and h_n: for one-state cells a tensor ``[num_layers * dirs, B, H]``, else a tuple
    of one such tensor per state (LSTM: (h, c); sLSTM: (h, c, n, m)). H = hidden_size = num_heads * D.
    A ``PackedSequence`` input runs each sequence over its own length (``flashrnn``'s ``lengths``; the reverse
    direction reverses each sequence within its length) and gives a ``PackedSequence`` output packed like the
    input, with hx and h_n in the caller's batch order and h_n at each sequence's end, as torch.nn.LSTM does.

    Per layer and direction: ``weight_ih_l{k}[_reverse]`` ``[Gw * H, in]`` (the input projection, rows ordered
    gate, head, d), ``weight_hh_l{k}[_reverse]`` ``[Gr, N, D, D]`` and ``bias_l{k}[_reverse]`` ``[Gb, N, D]``.
    All biases live in ``bias`` (the projection has none); ``bias=False`` makes them zero buffers.
    """

    function: str

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, batch_first: bool = False,
        dropout: float = 0.0, bidirectional: bool = False, num_heads: int = 1, backend: str = "auto",
        device=None, dtype=None,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size: expected a multiple of num_heads={num_heads}, got {hidden_size}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.num_heads, self.backend = bidirectional, num_heads, backend
        cell, N, D = _cell(self.function), num_heads, hidden_size // num_heads
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes(layer):
                W_ih = torch.empty(cell.gates_w * hidden_size, fan_in, **factory)  # rows: gate, head, d
                self.register_parameter("weight_ih" + suffix, nn.Parameter(W_ih))
                R = torch.empty(cell.gates_r, N, D, D, **factory)
                self.register_parameter("weight_hh" + suffix, nn.Parameter(R))
                b = torch.zeros(cell.gates_b, N, D, **factory)
                if bias:
                    self.register_parameter("bias" + suffix, nn.Parameter(b))
                else:
                    self.register_buffer("bias" + suffix, b)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.num_directions]

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's init, U(-1/sqrt(H), 1/sqrt(H)), with 1/sqrt(D) for the per-head recurrent blocks."""
        D = self.hidden_size // self.num_heads
        for name, p in self.named_parameters():
            bound = 1 / math.sqrt(D if name.startswith("weight_hh") else self.hidden_size)
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, dropout={self.dropout}, "
                f"bias={self.bias}, backend={self.backend!r}")

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[States] = None
                ) -> tuple[Union[Tensor, PackedSequence], States]:
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if input.dim() != 3:
            raise ValueError(f"input: expected 3 dimensions [T, B, input_size] or [B, T, input_size] with "
                             f"batch_first, or a PackedSequence, got shape {list(input.shape)}")
        x = input if self.batch_first else input.transpose(0, 1)  # [B, T, in]: the order flashrnn runs in
        out, h_n = self._layers(x, hx, None)
        return (out if self.batch_first else out.transpose(0, 1)), h_n

    def _forward_packed(self, packed: PackedSequence, hx: Optional[States]) -> tuple[PackedSequence, States]:
        """torch.nn.LSTM's PackedSequence semantics: hx and h_n in the caller's batch order (that of the padded
        batch before packing), h_n at each sequence's own end, the output packed like the input."""
        x, lengths = pad_packed_sequence(packed, batch_first=True)  # caller's order; lengths: CPU int64 [B]
        out, h_n = self._layers(x, hx, lengths)
        order = packed.sorted_indices  # None when the input was packed already sorted
        if order is not None:
            out, lengths = out.index_select(0, order), lengths.index_select(0, order.cpu())
        data = pack_padded_sequence(out, lengths, batch_first=True).data  # the input's batch_sizes, in its order
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), h_n

    def _layers(self, x: Tensor, hx: Optional[States], lengths: Optional[Tensor]) -> tuple[Tensor, States]:
        """Every layer and direction: x ``[B, T, in]`` -> (output ``[B, T, dirs * H]``, h_n as ``forward``)."""
        h0 = self._stack_states(hx, x.shape[0])  # [S, L * dirs, B, H] or None
        reverse = None if lengths is None else _reversal_index(lengths, x.shape[1], x.device)
        last = []
        for layer in range(self.num_layers):
            if layer > 0:
                x = F.dropout(x, self.dropout, self.training)
            outs = []
            for d, suffix in enumerate(self._suffixes(layer)):
                s0 = None if h0 is None else h0[:, layer * self.num_directions + d]
                out, s_n = self._run(x, s0, suffix, d == 1, lengths, reverse)
                outs.append(out)
                last.append(s_n)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return x, self._unstack_states(torch.stack(last, dim=1))

    def _run(self, x: Tensor, s0: Optional[Tensor], suffix: str, reverse: bool, lengths: Optional[Tensor],
             reversal: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """One direction of one layer: x ``[B, T, in]``, s0 ``[S, B, H]`` -> (h ``[B, T, H]``, last ``[S, B, H]``).
        The reverse direction runs on each sequence reversed within its own length (``reversal``, with lengths)."""
        B, T = x.shape[:2]
        N, D = self.num_heads, self.hidden_size // self.num_heads
        Wx = F.linear(x, getattr(self, "weight_ih" + suffix)).view(B, T, -1, N, D)
        if reverse:
            Wx = _reverse_time(Wx, reversal)
        s0 = None if s0 is None else s0.reshape(s0.shape[0], B, 1, N, D)
        states, last = flashrnn(Wx, getattr(self, "weight_hh" + suffix), getattr(self, "bias" + suffix), s0,
                                self.function, self.backend, lengths)
        h = states[0].reshape(B, T, self.hidden_size)
        return (_reverse_time(h, reversal) if reverse else h), last.reshape(last.shape[0], B, self.hidden_size)

    def _stack_states(self, hx: Optional[States], batch: int) -> Optional[Tensor]:
        """hx as the caller gives it -> ``[S, L * dirs, B, H]``, or None."""
        if hx is None:
            return None
        S = _cell(self.function).states
        parts = (hx,) if isinstance(hx, Tensor) else tuple(hx)
        want = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if len(parts) != S or any(tuple(p.shape) != want for p in parts):
            got = [list(p.shape) for p in parts]
            raise ValueError(f"hx: expected {S} tensor(s) of shape {list(want)} (num_layers * directions, batch, "
                             f"hidden_size) for {self.function}, got {got}")
        return torch.stack(parts)

    def _unstack_states(self, last: Tensor) -> States:
        """``[S, L * dirs, B, H]`` -> a tensor (one state) or a tuple of S tensors ``[L * dirs, B, H]``."""
        return last[0] if last.shape[0] == 1 else tuple(last.unbind(0))


def _reversal_index(lengths: Tensor, T: int, device: torch.device) -> Tensor:
    """``[B, T]`` time indices reversing each sequence within its own length: ``t -> lengths[b] - 1 - t`` for
    ``t < lengths[b]``; padded steps stay where they are (so they stay after the sequence's end)."""
    t = torch.arange(T, device=lengths.device)
    ends = lengths.to(torch.int64)[:, None]
    return torch.where(t < ends, ends - 1 - t, t).to(device)


def _reverse_time(x: Tensor, reversal: Optional[Tensor]) -> Tensor:
    """x ``[B, T, ...]`` reversed in time: whole rows without lengths, else within each sequence's length."""
    if reversal is None:
        return x.flip(1)
    return x[torch.arange(x.shape[0], device=x.device)[:, None], reversal]


class LSTM(_RNN):
    """LSTM (gates i, f, z, o; states h, c): hx and h_n are ``(h, c)`` like torch.nn.LSTM."""

    function = "lstm"


class GRU(_RNN):
    """GRU with the reset gate after the matmul (torch.nn.GRU's form): hx and h_n are a tensor ``h``."""

    function = "gru"


class sLSTM(_RNN):
    """sLSTM (exponential input gate, stabilizer): hx and h_n are ``(h, c, n, m)``."""

    function = "slstm"


class Elman(_RNN):
    """Elman (tanh) RNN, torch.nn.RNN's form: hx and h_n are a tensor ``h``."""

    function = "elman"


# ------------------------------------------------------------------------------------ weight import


def from_torch(module: nn.Module, backend: str = "auto") -> _RNN:
    """The flashrnn module computing what a ``torch.nn.LSTM``, ``torch.nn.GRU`` or ``torch.nn.RNN`` (tanh) does,
    with its weights copied (same device and dtype; one head; any layers, directions, biases, batch_first).

    Conversion: torch's W_ih becomes the input projection unchanged (its gate order, LSTM i, f, g, o and GRU
    r, z, n, is ours); W_hh ``[G * H, H]`` becomes R ``[G, 1, H, H]``; both biases go into b. For the GRU,
    torch's ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` is SPEC's ``tanh(x_n + b_n + r g)`` with
    ``g = R_g h + b_g``: R gates (g, r, z) = (W_hn, W_hr, W_hz) and b (g, r, z, n) = (b_hn, b_ir + b_hr,
    b_iz + b_hz, b_in).
    """
    kinds = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: Elman}
    cls = kinds.get(type(module))
    if cls is None:
        raise TypeError(f"module: expected a torch.nn.LSTM, GRU or RNN, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"module: an LSTM with proj_size={module.proj_size} cannot be converted: flashrnn's LSTM "
                         "feeds back the full hidden state h (SPEC.md), which proj_size replaces by a projection")
    if cls is Elman and module.nonlinearity != "tanh":
        raise ValueError(f"module: an RNN with nonlinearity={module.nonlinearity!r} cannot be converted: Elman is tanh")
    ref = module.weight_ih_l0
    new = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
              batch_first=module.batch_first, dropout=module.dropout, bidirectional=module.bidirectional,
              backend=backend, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for layer in range(module.num_layers):
            for suffix in new._suffixes(layer):
                R, b = _convert(cls, module, suffix)
                getattr(new, "weight_ih" + suffix).copy_(getattr(module, "weight_ih" + suffix))
                getattr(new, "weight_hh" + suffix).copy_(R)
                getattr(new, "bias" + suffix).copy_(b)
    return new


def _convert(cls: type, module: nn.Module, suffix: str) -> tuple[Tensor, Tensor]:
    """One layer-direction's (R ``[Gr, 1, H, H]``, b ``[Gb, 1, H]``) from torch's W_hh, b_ih and b_hh."""
    H = module.hidden_size
    W_hh = getattr(module, "weight_hh" + suffix).view(-1, 1, H, H)  # [G, 1, H, H], torch's gate order
    zeros = W_hh.new_zeros(W_hh.shape[0], 1, H)
    b_ih = getattr(module, "bias_ih" + suffix).view(-1, 1, H) if module.bias else zeros
    b_hh = getattr(module, "bias_hh" + suffix).view(-1, 1, H) if module.bias else zeros
    if cls is not GRU:
        return W_hh, b_ih + b_hh
    R = W_hh[[2, 0, 1]]  # torch (r, z, n) -> ours (g, r, z), g being the W_hn h + b_hn product
    b = torch.stack([b_hh[2], b_ih[0] + b_hh[0], b_ih[1] + b_hh[1], b_ih[2]])
    return R, b
