"""JAX adapter: ``flashrnn`` as a ``jax.custom_vjp`` function, eager and under ``jax.jit``.

Thin by design: every computation of the recurrence goes through ``flashrnn_core.forward``/``backward``.

Shapes (SPEC.md): Wx ``[B, T, Gw, N, D]``, R ``[Gr, N, D, D]``, b ``[Gb, N, D]``, states ``[S, B, 1, N, D]``;
``flashrnn`` returns ``(states [S, B, T, N, D], last_states [S, B, 1, N, D])``. Gradients through
``jax.grad``/``jax.value_and_grad``/``jax.vjp`` in Wx, R, b and states; optional ``lengths [B]`` (integers,
variable lengths) is traced like them and not differentiable.

How arrays travel:

- Eager (concrete arrays, also inside an eager ``jax.grad``): DLPack. On GPU the arrays become CuPy arrays
  and the results JAX arrays without a copy; the DLPack exchange orders CuPy's stream after JAX's work and
  JAX's after CuPy's. On CPU the inputs are NumPy views of JAX's buffers; JAX copies the NumPy results into
  its own buffers (it does not adopt host memory it did not allocate).
- Traced (``jax.jit``, ``jax.vmap``, a jitted ``grad``): ``jax.experimental.buffer_callback``, an XLA FFI
  custom call that hands the callback XLA's own device buffers and, on GPU, XLA's stream, which becomes
  CuPy's current stream for the call. The inputs are used in place (no copy); each output is copied once
  into the buffer XLA allocated for it (a device-to-device copy on GPU). Where ``buffer_callback`` does not
  exist (older JAX), ``jax.pure_callback`` is used: NumPy on the host and the ``vanilla`` backend, which on
  GPU also costs a device -> host -> device round trip.

The cost of the callback, measured on CPU (2 shared cores, JAX 0.10.2, medians of 300 calls):

- the mechanism alone: a jitted no-op ``buffer_callback`` takes 0.045 ms against 0.02 ms for an empty jitted
  function, so about 0.03 ms a call; a no-op ``pure_callback`` 0.27 ms (about 0.25 ms a call);
- a jitted lstm forward, B=2 T=16 N=1 D=16 float32: 6.8 ms against 6.65 ms for ``flashrnn_core.forward`` on
  NumPy directly (vanilla's Python loop over time dominates); B=8 T=64 N=2 D=32: 28.6 ms against 28.2 ms.
  Through ``pure_callback``: 7.1 and 31.6 ms;
- the eager adapter costs more than the jitted one on CPU (9-13 ms for the small case across runs: ``custom_vjp``'s
  per-call Python dispatch and JAX's copies of the results), and an eager ``jax.grad`` about twice a jitted
  one (33 ms against 15 ms). Jit the caller.

Everything above works under ``jax.jit``. What does not work anywhere, each with a clear error (tested):
second derivatives (grad of grad, ``jax.hessian``) raise ``NotImplementedError`` saying that the backward is
a call into ``flashrnn_core.backward`` without a derivative; forward mode (``jax.jvp``, ``jax.jacfwd``) raises
JAX's "can't apply forward-mode autodiff (jvp) to a custom_vjp function"; ``jax.export`` of a function that
contains it raises JAX's "serialization of host_callbacks is not yet implemented". Under ``jax.vmap`` the
callback runs once per mapped element (``vmap_method="sequential"``); fold the mapped axis into B instead.

``saved`` (the backend's saved values ``[B, T, n_saved, N, D]``, a residual of the backward) must have a
dtype known when tracing: the compute dtype (float32; float64 for float64) on CPU, where ``vanilla`` runs, and
Wx's dtype on GPU, what the GPU backends save.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from flashrnn_core import _arrays, api
from flashrnn_core.cells import CELLS, Cell

try:  # an XLA FFI callback on XLA's own buffers (recent JAX)
    from jax.experimental.buffer_callback import ExecutionStage
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback

    _EXECUTE = ExecutionStage.EXECUTE
except ImportError:  # pragma: no cover - older JAX: jax.pure_callback below
    _buffer_callback = _EXECUTE = None

__all__ = ["flashrnn"]

_DL_CPU = 1  # DLPack's device type for host memory


def flashrnn(
    Wx: jax.Array, R: jax.Array, b: jax.Array, states: Optional[jax.Array] = None, function: str = "lstm",
    backend: str = "auto", lengths: Optional[Any] = None,
) -> tuple[jax.Array, jax.Array]:
    """FlashRNN's functional call on JAX arrays, differentiable in Wx, R, b and states.

    Args: Wx ``[B, T, Gw, N, D]``, R ``[Gr, N, D, D]``, b ``[Gb, N, D]``, states ``[S, B, 1, N, D]`` or None
    (zeros); function and backend as in ``flashrnn_core.forward``. lengths: ``[B]`` integers in 1..T (an integer
    array or a list; traced under ``jax.jit`` like the other arrays) or None; not differentiable (its cotangent
    is None). On GPU the core reads its range back to the host once per forward and backward.
    Returns ``(states [S, B, T, N, D], last_states [S, B, 1, N, D])``. With lengths, a sequence's states after
    its end repeat its last valid ones, so ``last_states`` holds each sequence's states at its own end.
    """
    _cell(function)
    args = [None if a is None else jnp.asarray(a) for a in (Wx, R, b, states, lengths)]
    out = _flashrnn(function, backend, *args)
    return out, out[:, :, -1:]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flashrnn(function: str, backend: str, Wx, R, b, states0, lengths):
    # Called only where nothing differentiates (jax.grad and jax.vjp run _fwd): the inference forward.
    return _forward(function, backend, Wx, R, b, states0, lengths, save=False)[0]


def _fwd(function: str, backend: str, Wx, R, b, states0, lengths):
    states, saved = _forward(function, backend, Wx, R, b, states0, lengths)
    return states, (Wx, R, b, states0, lengths, states, saved)


def _bwd(function: str, backend: str, residuals, dstates):
    states0 = residuals[3]
    dWx, dR, db, ds0 = _backward(function, backend, *residuals, dstates)
    return dWx, dR, db, (None if states0 is None else ds0), None  # lengths: integers, no cotangent


_flashrnn.defvjp(_fwd, _bwd)


# ------------------------------------------------------------------------------ host sides (arrays only)


def _forward_host(function: str, backend: str, save: bool, Wx, R, b, states0, lengths) -> tuple:
    """NumPy/CuPy arrays -> (states ``[S, B, T, N, D]``, saved ``[B, T, n_saved, N, D]``), or (states,) where
    ``save`` is False."""
    result = api.forward(Wx, R, b, states0, function=function, backend=backend, lengths=lengths,
                         save_for_backward=save)
    return (result.states, result.saved) if save else (result.states,)


def _backward_host(function: str, backend: str, Wx, R, b, states0, lengths, states, saved, dstates) -> tuple:
    """NumPy/CuPy arrays -> (dWx, dR, db, dstates_initial)."""
    result = api.result_from_saved(Wx, R, b, states0, states, saved, function, backend, lengths=lengths)
    return tuple(api.backward(result, dstates=dstates))


# ------------------------------------------------------------------------------ eager or traced dispatch


def _forward(function: str, backend: str, Wx, R, b, states0, lengths, save: bool = True):
    cell = _cell(function)
    B, T, _, N, D = Wx.shape
    specs = (jax.ShapeDtypeStruct((cell.states, B, T, N, D), Wx.dtype),)
    if save:
        specs += (jax.ShapeDtypeStruct((B, T, cell.n_saved, N, D), _saved_dtype(Wx.dtype)),)
    return _call(functools.partial(_forward_host, function, backend, save), specs, Wx, R, b, states0, lengths)


def _backward(function: str, backend: str, Wx, R, b, states0, lengths, states, saved, dstates):
    s0_dtype = Wx.dtype if states0 is None else states0.dtype
    specs = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (Wx, R, b)) + (
        jax.ShapeDtypeStruct((states.shape[0], *Wx.shape[:1], 1, *Wx.shape[3:]), s0_dtype),)
    return _call(functools.partial(_backward_host, function, backend), specs, Wx, R, b, states0, lengths, states,
                 saved, dstates)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _call(host: Callable[..., tuple], specs: tuple, *args) -> tuple:
    """Run ``host`` (arrays in, a tuple of arrays out) on JAX arrays: directly through DLPack when they are
    concrete, as an XLA callback when they are tracers. ``specs``: the outputs' shapes and dtypes."""
    if not any(isinstance(a, jax.core.Tracer) for a in args):
        return tuple(_to_jax(r) for r in host(*(None if a is None else _to_array(a) for a in args)))
    if _buffer_callback is None:
        def on_host(*arrays):  # host copies in (NumPy views of them), exactly the promised dtypes out
            results = host(*(None if a is None else np.asarray(a) for a in arrays))
            return tuple(np.asarray(r, s.dtype) for r, s in zip(results, specs))

        return jax.pure_callback(on_host, specs, *args, vmap_method="sequential")

    def in_place(ctx, outs, *buffers) -> None:
        if ctx.stage != _EXECUTE:  # XLA may call a handler while it sets up too; the work is the execution
            return
        arrays = [None if buf is None else _buffer_array(buf) for buf in buffers]
        with _xla_stream(ctx, arrays[0]):
            for out, result in zip(outs, host(*arrays)):
                _buffer_array(out)[...] = result  # the one copy (and, for saved, the promised dtype)

    return _buffer_callback(in_place, specs, vmap_method="sequential")(*args)


@_call.defjvp
def _no_second_derivatives(host, specs, primals, tangents):
    # Only reached when the forward or backward callback itself is differentiated (grad of grad, hessian).
    raise NotImplementedError(
        "flashrnn_core.jax.flashrnn has first derivatives only: its backward pass is a call into "
        "flashrnn_core.backward, which has no derivative itself. Take a single jax.grad / jax.vjp of it "
        "(second derivatives, e.g. Hessian-vector products, need finite differences of gradients).")


# ------------------------------------------------------------------------------------ arrays and streams


def _cell(function: str) -> Cell:
    if function not in CELLS:  # checked before tracing, where no arrays reach validate
        raise ValueError(f"function: expected one of {sorted(CELLS)}, got {function!r}")
    return CELLS[function]


def _saved_dtype(dtype: Any) -> np.dtype:
    """The dtype of ``saved`` under tracing: Wx's on GPU (the GPU backends'), the compute dtype on CPU."""
    if jax.default_backend() == "gpu":
        return np.dtype(dtype)
    return _arrays.compute_dtype(dtype)


def _on_gpu(x: jax.Array) -> bool:
    return x.__dlpack_device__()[0] != _DL_CPU


def _to_array(x: jax.Array):
    """The NumPy (CPU) or CuPy (GPU) array sharing a concrete JAX array's memory."""
    if not _on_gpu(x):
        return np.asarray(x)  # a view of JAX's buffer; np.from_dlpack would refuse bfloat16
    import cupy

    try:
        return cupy.from_dlpack(x)  # orders CuPy's current stream after the work that produces x
    except (BufferError, TypeError, ValueError, RuntimeError):  # a dtype CuPy's DLPack import lacks
        x.block_until_ready()
        return _cupy_view(x.unsafe_buffer_pointer(), x.shape, x.dtype, x)


def _to_jax(a) -> jax.Array:
    """A JAX array of a NumPy (copied into JAX's buffer) or CuPy (shared through DLPack) array."""
    if _arrays.is_cupy_array(a):
        return jax.dlpack.from_dlpack(a)
    return jnp.asarray(a)


def _buffer_array(buf):
    """The NumPy or CuPy array over a ``buffer_callback`` buffer (XLA's memory, no copy)."""
    if buf.__dlpack_device__()[0] == _DL_CPU:
        return np.asarray(buf)
    return _cupy_view(buf.__cuda_array_interface__["data"][0], buf.shape, buf.dtype, buf)


def _cupy_view(ptr: int, shape: tuple, dtype: Any, owner: Any):
    """A dense CuPy array over device memory at ``ptr``; any dtype, bfloat16 included."""
    import cupy

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    memory = cupy.cuda.UnownedMemory(ptr, nbytes, owner)  # the device is looked up from the pointer
    return cupy.ndarray(tuple(shape), dtype, cupy.cuda.MemoryPointer(memory, 0))


@contextlib.contextmanager
def _xla_stream(ctx, first) -> Iterator[None]:
    """On GPU, make XLA's stream for this call CuPy's current stream (on ``first``'s device)."""
    if isinstance(first, np.ndarray):
        yield
        return
    with first.device, _arrays.cupy_stream(int(ctx.stream), first.device.id):
        yield
