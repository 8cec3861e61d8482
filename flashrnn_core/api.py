"""The public calls: ``forward``, ``backward`` and FlashRNN 1.x's ``flashrnn``.

Shapes (B batch, T time, N heads, D head dimension, G gates, S states; SPEC.md has the per-cell counts):

| argument       | shape             |
| -------------- | ----------------- |
| Wx             | [B, T, Gw, N, D]  |
| R              | [Gr, N, D, D]     |
| b              | [Gb, N, D]        |
| states (in)    | [S, B, 1, N, D]   |
| states (out)   | [S, B, T, N, D]   |
| last_states    | [S, B, 1, N, D]   |
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np

from . import _arrays, backends
from .backends.base import Grads
from .validate import Problem, validate, validate_function

Array = Any  # numpy.ndarray or cupy.ndarray

__all__ = ["ForwardResult", "Grads", "forward", "backward", "flashrnn", "result_from_saved", "backward_memory"]


@dataclass
class ForwardResult:
    """What ``forward`` returns: the states, and what ``backward`` needs (kept by reference, not copied).

    Unpacks like FlashRNN's result: ``states, last_states = forward(...)``.
    """

    states: Array  #: [S, B, T, N, D], every state after every step, in Wx's dtype
    last_states: Array  #: [S, B, 1, N, D], the states after each sequence's last step (a view of ``states``)
    function: str
    backend: str  #: the backend that ran (``auto`` resolved)
    problem: Problem = field(repr=False)
    inputs: tuple[Array, Array, Array, Array | None] = field(repr=False)  #: (Wx, R, b, states_initial)
    saved: Any = field(repr=False)  #: the backend's saved tensors (docs/architecture.md); None: save_for_backward=False

    def __iter__(self) -> Iterator[Array]:
        return iter((self.states, self.last_states))


def _contiguous(a: Array | None) -> Array | None:
    """Kernels index dense row-major arrays: copy only strided or negative-stride views."""
    if a is None or a.flags.c_contiguous:
        return a
    return _arrays.array_module(a).ascontiguousarray(a)


def forward(
    Wx: Array,
    R: Array,
    b: Array,
    states: Array | None = None,
    *,
    function: str,
    backend: str = "auto",
    lengths: Array | None = None,
    save_for_backward: bool = True,
) -> ForwardResult:
    """Run the recurrence over the whole sequence.

    Args:
        Wx: ``[B, T, Gw, N, D]`` gate pre-activations from the input (float32, bfloat16 or float16; float64
            on the vanilla backend).
        R: ``[Gr, N, D, D]`` recurrent matrices, ``R[g, n, d_out, d_in]``.
        b: ``[Gb, N, D]`` biases.
        states: ``[S, B, 1, N, D]`` initial states, zeros when None.
        function: ``"lstm"``, ``"slstm"``, ``"gru"`` or ``"elman"``.
        backend: ``"auto"`` (fastest that can take the shape), ``"cuda_fused"``, ``"cuda"`` or ``"vanilla"``.
        lengths: ``[B]`` integers in 1..T, or None (all T). Sequence b runs its first ``lengths[b]`` steps; its
            states after that stay equal to its last valid state, so ``last_states`` holds each sequence's
            states at its own end (docs/architecture.md, "Variable lengths"). A CuPy array costs one
            synchronisation (its range is checked on the host); a list or NumPy array does not.
        save_for_backward: False for inference: the same states, but the forward writes none of the
            saved values that ``backward`` reads (on ``cuda_fused`` a separate kernel variant; at B=256, 12x64
            that is 40% of the bytes it moves), and ``backward`` refuses the result.

    Returns:
        ``ForwardResult`` with ``states [S, B, T, N, D]`` and ``last_states [S, B, 1, N, D]`` in Wx's dtype.
        Work is queued on CuPy's current stream; nothing synchronises.
    """
    problem = validate(Wx, R, b, states, function=function, backend=backend, lengths=lengths)
    chosen = backends.resolve(backend, problem)
    Wx, R, b, states = (_contiguous(a) for a in (Wx, R, b, states))
    out_states, saved = chosen.forward(problem, Wx, R, b, states, save=save_for_backward)
    return ForwardResult(
        states=out_states,
        last_states=out_states[:, :, -1:],
        function=function,
        backend=chosen.name,
        problem=problem,
        inputs=(Wx, R, b, states),
        saved=saved,
    )


def result_from_saved(Wx: Array, R: Array, b: Array, states0: Array | None, states: Array, saved: Any,
                      function: str, backend: str, lengths: Array | None = None) -> ForwardResult:
    """The ``ForwardResult`` that ``backward`` needs, rebuilt from arrays a framework kept between its forward
    and backward passes (the PyTorch and JAX adapters). ``backend`` as the forward was asked it: resolving it
    again picks the backend that ran, since the choice depends only on the problem."""
    problem = validate(Wx, R, b, states0, function=function, backend=backend, lengths=lengths)
    ran = backends.resolve(backend, problem).name
    return ForwardResult(states, states[:, :, -1:], function, ran, problem, (Wx, R, b, states0), saved)


def backward(result: ForwardResult, dstates: Array | None = None, dlast_states: Array | None = None) -> Grads:
    """Gradients of a loss through the forward pass that produced ``result``.

    Args:
        result: what ``forward`` returned.
        dstates: upstream gradient on the returned states, ``[S, B, T, N, D]``, or ``[1, B, T, N, D]`` for a
            gradient on ``h`` alone.
        dlast_states: upstream gradient on ``last_states``, ``[S, B, 1, N, D]``. Added to dstates' last step.

    With ``lengths``, the states after a sequence's end are copies of its last valid state, so upstream
    gradient there flows to that state; ``dWx`` of steps past the end is zero.

    Returns:
        ``Grads(dWx [B, T, Gw, N, D], dR [Gr, N, D, D], db [Gb, N, D], dstates_initial [S, B, 1, N, D])``, each
        in the dtype of its input. ``dR`` and ``db`` are summed over batch and time.
    """
    if not isinstance(result, ForwardResult):
        raise TypeError(f"result: expected the ForwardResult that forward() returned, got {type(result).__name__}")
    if result.saved is None:
        raise ValueError("result: forward ran with save_for_backward=False (inference), so it kept nothing for "
                         "backward; run forward(..., save_for_backward=True) to take gradients")
    Wx, R, b, states0 = result.inputs
    problem = validate(
        Wx, R, b, states0, function=result.function, backend=result.backend,
        dstates=dstates, dlast_states=dlast_states, for_backward=True,
    )
    problem = replace(problem, lengths=result.problem.lengths)  # checked by forward: no second read-back
    chosen = backends.get_backend(result.backend)
    dstates, dlast_states = _contiguous(dstates), _contiguous(dlast_states)
    return chosen.backward(problem, Wx, R, b, states0, result.states, result.saved, dstates, dlast_states)


def flashrnn(
    Wx: Array,
    R: Array,
    b: Array,
    states: Array | None = None,
    function: str = "lstm",
    backend: str = "auto",
    lengths: Array | None = None,
) -> tuple[Array, Array]:
    """FlashRNN 1.x's functional call: ``states, last_states = flashrnn(Wx, R, b, states, function, backend)``.

    Same shapes (and ``lengths``) as ``forward``; returns ``(states [S, B, T, N, D], last_states [S, B, 1, N, D])``.
    An inference call (``save_for_backward=False``): for gradients use ``forward``/``backward`` here, or the
    PyTorch and JAX adapters.
    """
    result = forward(Wx, R, b, states, function=function, backend=backend, lengths=lengths, save_for_backward=False)
    return result.states, result.last_states


def backward_memory(function: str, dtype: Any, B: int, T: int, N: int, D: int) -> dict[str, int]:
    """Bytes a GPU backend's forward keeps for the backward, in the storage ``dtype``.

    ``states`` ``[S, B, T, N, D]`` is the forward's output (the caller holds it anyway); ``saved``
    ``[B, T, n_saved, N, D]`` is the cells' saved values (docs/architecture.md, "Saved tensors"), at most one
    set of gate activations (``n_saved <= Gb``, the cell's distinct gates). Nothing else outlives the forward.
    (``vanilla`` keeps ``saved`` in its float32/float64 compute dtype instead.)
    """
    cell = validate_function(function)
    item = np.dtype(dtype).itemsize
    states, saved = cell.states * B * T * N * D * item, cell.n_saved * B * T * N * D * item
    return {"states": states, "saved": saved, "total": states + saved,
            "gate_set": cell.gates_b * B * T * N * D * item}

