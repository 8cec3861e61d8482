"""The one validation function: every entry point calls ``validate`` before any device work.

Bad input raises ``ValueError`` (shapes, dtypes, names, what a backend cannot take) or ``TypeError`` (not an
array), naming the argument, what was expected and what was received (SPEC.md, "Bad input"). Nothing here
touches the data: NaN is not an error, and the caller's arrays are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from . import _arrays
from .cells import CELLS, Cell

BACKEND_NAMES = ("auto", "vanilla", "cuda", "cuda_fused")


@dataclass(frozen=True)
class Problem:
    """A checked call: what every backend needs to know about it, and nothing it must re-check.

    dtype is the storage dtype of ``Wx`` (that of the returned states); ``device`` is the CuPy device id or
    None for NumPy arrays. ``lengths`` is None (every sequence runs all T steps) or an int32 array ``[B]`` of
    the problem's kind (NumPy or CuPy on ``device``) with ``1 <= lengths[b] <= T``: sequence b runs its first
    ``lengths[b]`` steps and its states then stay at the last valid ones (docs/architecture.md, "Variable lengths").
    """

    function: str
    cell: Cell
    xp: ModuleType
    B: int
    T: int
    N: int
    D: int
    dtype: np.dtype
    device: int | None
    has_initial_states: bool
    lengths: Any = field(default=None, compare=False, repr=False)

    @property
    def on_gpu(self) -> bool:
        return self.device is not None

    def label(self) -> str:
        """A name a person can read in logs and test ids: ``lstm-bfloat16-B3-T17-N2-D64``."""
        varlen = "-varlen" if self.lengths is not None else ""
        return f"{self.function}-{_arrays.dtype_name(self.dtype)}-B{self.B}-T{self.T}-N{self.N}-D{self.D}{varlen}"


def _describe(a: Any) -> str:
    if a is None:
        return "None"
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return f"{type(a).__module__.split('.')[0]}.{type(a).__name__} of shape {tuple(a.shape)} and dtype {a.dtype}"
    return f"{type(a).__name__} ({a!r:.60})"


def _check_array(name: str, a: Any) -> None:
    if not (isinstance(a, np.ndarray) or _arrays.is_cupy_array(a)):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {_describe(a)}")


def _check_dtype(name: str, a: Any, allowed: tuple[np.dtype, ...]) -> None:
    if np.dtype(a.dtype) not in allowed:
        names = ", ".join(_arrays.dtype_name(d) for d in allowed)
        raise ValueError(f"{name}: expected dtype in ({names}), got {a.dtype}")


def _check_shape(name: str, a: Any, expected: tuple[int | str, ...], meaning: str) -> None:
    """``expected`` holds ints for sizes fixed by other arguments; names of free dims are strings."""
    shape = tuple(a.shape)
    ok = len(shape) == len(expected) and all(isinstance(e, str) or s == e for s, e in zip(shape, expected))
    if not ok:
        want = "[" + ", ".join(str(e) for e in expected) + "]"
        raise ValueError(f"{name}: expected shape {want} ({meaning}), got {list(shape)}")


def _device_of(a: Any) -> int | None:
    return int(a.device.id) if _arrays.is_cupy_array(a) else None


def _check_same_place(named: dict[str, Any]) -> int | None:
    """All arrays NumPy, or all CuPy on one device: a backend never moves data between devices."""
    places = {name: _device_of(a) for name, a in named.items() if a is not None}
    first_name, first = next(iter(places.items()))
    for name, place in places.items():
        if place != first:
            where = lambda p: "host memory (NumPy)" if p is None else f"CuPy device {p}"  # noqa: E731
            raise ValueError(
                f"{name}: expected an array in {where(first)} like {first_name}, got one in {where(place)}"
            )
    return first


def validate(
    Wx: Any,
    R: Any,
    b: Any,
    states: Any = None,
    *,
    function: str,
    backend: str = "auto",
    dstates: Any = None,
    dlast_states: Any = None,
    for_backward: bool = False,
    lengths: Any = None,
) -> Problem:
    """Check a forward (or, with ``for_backward``, a backward) call and describe it as a ``Problem``.

    Shapes (SPEC.md): Wx ``[B, T, Gw, N, D]``, R ``[Gr, N, D, D]``, b ``[Gb, N, D]``, states ``[S, B, 1, N, D]``;
    for a backward, dstates ``[S, B, T, N, D]`` or ``[1, B, T, N, D]`` (h only), dlast_states ``[S, B, 1, N, D]``.
    lengths: None, or ``[B]`` integers in 1..T (a list, NumPy or CuPy array); checking the range of a CuPy
    array reads two numbers back to the host (one synchronisation), so hand NumPy lengths where that matters.
    Whether the chosen backend can take the problem is asked of the backend afterwards
    (``backends.resolve``), still before any device work.
    """
    cell = _check_names(function, backend)

    named = {"Wx": Wx, "R": R, "b": b, "states": states}
    if for_backward:
        named.update(dstates=dstates, dlast_states=dlast_states)
    for name, a in named.items():
        if a is not None or name in ("Wx", "R", "b"):
            _check_array(name, a)
    allowed = _arrays.VANILLA_DTYPES if backend in ("auto", "vanilla") else _arrays.STORAGE_DTYPES
    for name, a in named.items():
        if a is not None:
            _check_dtype(name, a, allowed)
    device = _check_same_place(named)

    if Wx.ndim != 5:
        raise ValueError(f"Wx: expected 5 dimensions [B, T, Gw, N, D], got shape {list(Wx.shape)}")
    B, T, _, N, D = (int(s) for s in Wx.shape)
    for dim, size in zip("BTND", (B, T, N, D)):
        if size < 1:
            raise ValueError(f"Wx: expected {dim} >= 1 in [B, T, Gw, N, D], got shape {list(Wx.shape)}")
    _check_shape("Wx", Wx, ("B", "T", cell.gates_w, "N", "D"), f"{function} has Gw={cell.gates_w} input gates")
    _check_shape("R", R, (cell.gates_r, N, D, D), f"[Gr, N, D, D] for {function} and Wx's N={N}, D={D}")
    _check_shape("b", b, (cell.gates_b, N, D), f"[Gb, N, D] for {function} and Wx's N={N}, D={D}")
    if states is not None:
        _check_shape("states", states, (cell.states, B, 1, N, D), f"[S, B, 1, N, D]: {function} has S={cell.states}")
    if for_backward:
        _check_upstream(cell, dstates, dlast_states, B, T, N, D)

    if Wx.dtype == _arrays.float64 and backend in ("cuda", "cuda_fused"):
        raise ValueError(f"Wx: backend {backend!r} takes float32, bfloat16 or float16, got float64 (use 'vanilla')")
    xp = _arrays.array_module(Wx)
    lengths = _check_lengths(lengths, xp, device, B, T)
    return Problem(function, cell, xp, B, T, N, D, np.dtype(Wx.dtype), device, states is not None, lengths)


def _check_lengths(lengths: Any, xp: ModuleType, device: int | None, B: int, T: int) -> Any:
    """``lengths`` as an int32 array ``[B]`` on the problem's device, or None when absent or when every entry
    is T (the full-length kernels then run, with nothing to mask)."""
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in lengths):
            raise TypeError(f"lengths: expected integers, got {_describe(lengths)}")
        lengths = np.asarray(lengths, dtype=np.int64).reshape(len(lengths))
    if not (isinstance(lengths, np.ndarray) or _arrays.is_cupy_array(lengths)):
        raise TypeError(f"lengths: expected a list, NumPy or CuPy array of integers, got {_describe(lengths)}")
    if not np.issubdtype(np.dtype(lengths.dtype), np.integer):
        raise ValueError(f"lengths: expected an integer dtype, got {lengths.dtype}")
    _check_shape("lengths", lengths, (B,), f"[B] with Wx's B={B}")
    if _arrays.is_cupy_array(lengths) and _device_of(lengths) != device:
        raise ValueError(f"lengths: expected an array on the device of Wx ({device}), got one on {_device_of(lengths)}")
    low, high = int(lengths.min()), int(lengths.max())  # a CuPy array: one read-back, documented above
    if low < 1 or high > T:
        raise ValueError(f"lengths: expected every length in 1..T={T}, got values from {low} to {high}")
    if low == T:
        return None
    if device is None:
        return np.ascontiguousarray(lengths, dtype=np.int32)
    with xp.cuda.Device(device):
        return xp.ascontiguousarray(xp.asarray(lengths, dtype=np.int32))


def validate_function(function: Any) -> Cell:
    """The cell named ``function``, or the ValueError that lists the names."""
    if not isinstance(function, str) or function not in CELLS:
        raise ValueError(f"function: expected one of {sorted(CELLS)}, got {function!r}")
    return CELLS[function]


def _check_names(function: Any, backend: Any) -> Cell:
    """The cell of ``function``, after checking both names."""
    cell = validate_function(function)
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(f"backend: expected one of {list(BACKEND_NAMES)}, got {backend!r}")
    return cell


def validate_step(R: Any, b: Any, states: Any = None, *, function: str, batch: Any, dtype: Any = None,
                  backend: str = "auto") -> Problem:
    """Check a ``Stepper``'s arguments: ``validate`` of a one-step call, Wx ``[batch, 1, Gw, N, D]`` in
    ``dtype`` (R's dtype when None) on R's device, described by a broadcast view of one element (N and D come
    from R ``[Gr, N, D, D]``). States ``[S, batch, 1, N, D]`` as in ``validate``."""
    cell = _check_names(function, backend)
    _check_array("R", R)
    if R.ndim != 4:
        raise ValueError(f"R: expected 4 dimensions [Gr, N, D, D], got shape {list(R.shape)}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
        raise TypeError(f"batch: expected a positive integer, got {_describe(batch)}")
    if batch < 1:
        raise ValueError(f"batch: expected a positive integer, got {batch}")
    try:
        dtype = np.dtype(R.dtype if dtype is None else dtype)
    except TypeError as err:
        raise ValueError(f"dtype: expected a NumPy dtype, got {dtype!r} ({err})") from None
    allowed = _arrays.VANILLA_DTYPES if backend in ("auto", "vanilla") else _arrays.STORAGE_DTYPES
    if dtype not in allowed:
        names = ", ".join(_arrays.dtype_name(d) for d in allowed)
        raise ValueError(f"dtype: expected one of ({names}), got {dtype}")
    xp = _arrays.array_module(R)
    with _arrays.on_device(_device_of(R)):
        one = xp.zeros((), dtype)
    Wx = xp.broadcast_to(one, (int(batch), 1, cell.gates_w, int(R.shape[1]), int(R.shape[2])))
    return validate(Wx, R, b, states, function=function, backend=backend)


def check_step_input(Wx_t: Any, problem: Problem, name: str = "Wx_t") -> None:
    """Check one step's input for a ``Stepper`` of ``problem``: ``[B, Gw, N, D]`` or ``[B, 1, Gw, N, D]``, in the
    stepper's dtype, C-contiguous, on its device, and 16-byte aligned on a GPU (the kernel reads it in place
    with 16-byte copies: a step converts and copies nothing)."""
    _check_array(name, Wx_t)
    cell, B, N, D = problem.cell, problem.B, problem.N, problem.D
    where = "host memory (NumPy)" if problem.device is None else f"CuPy device {problem.device}"
    if _device_of(Wx_t) != problem.device:
        raise ValueError(f"{name}: expected an array in {where} like the stepper's R, got {_describe(Wx_t)}")
    if np.dtype(Wx_t.dtype) != problem.dtype:
        raise ValueError(f"{name}: expected dtype {_arrays.dtype_name(problem.dtype)} (the stepper's; a step "
                         f"converts nothing), got {Wx_t.dtype}")
    if tuple(Wx_t.shape) not in ((B, cell.gates_w, N, D), (B, 1, cell.gates_w, N, D)):
        raise ValueError(f"{name}: expected shape [{B}, {cell.gates_w}, {N}, {D}] or [{B}, 1, {cell.gates_w}, {N}, "
                         f"{D}] ([B, Gw, N, D] of one step for {problem.function}), got {list(Wx_t.shape)}")
    if not Wx_t.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (a step copies nothing; pass "
                         f"ascontiguousarray(...)), got strides {Wx_t.strides}")
    if problem.device is not None and Wx_t.data.ptr % 16:
        raise ValueError(f"{name}: expected a 16-byte aligned address (the kernel reads 16-byte pieces), got "
                         f"{Wx_t.data.ptr:#x}")


def check_step_indices(indices: Any, batch: int) -> list[int]:
    """``Stepper.reset``'s batch rows as a list of ints in [0, batch): an int or a sequence (or NumPy array) of
    ints; CuPy arrays are refused (reading them would synchronise)."""
    if _arrays.is_cupy_array(indices):
        raise TypeError("indices: expected host integers (an int, a list or a NumPy array), got a CuPy array")
    flat = np.asarray(indices).reshape(-1)
    if flat.dtype == np.bool_ or not np.issubdtype(flat.dtype, np.integer):
        if flat.size:  # an empty list has dtype float64 and means no rows
            raise TypeError(f"indices: expected integers (batch rows), got {_describe(indices)}")
    rows = [int(i) for i in flat]
    bad = [i for i in rows if not 0 <= i < batch]
    if bad:
        raise ValueError(f"indices: expected batch rows in [0, {batch}), got {bad[:8]}")
    return rows


def _check_upstream(cell: Cell, dstates: Any, dlast_states: Any, B: int, T: int, N: int, D: int) -> None:
    if dstates is None and dlast_states is None:
        raise ValueError("dstates, dlast_states: expected at least one upstream gradient, got neither")
    if dstates is not None:
        S = int(dstates.shape[0]) if dstates.ndim == 5 else -1
        if S not in (1, cell.states):
            S = cell.states
        _check_shape("dstates", dstates, (S, B, T, N, D), f"[S, B, T, N, D] with S={cell.states}, or S=1 for h only")
    if dlast_states is not None:
        _check_shape("dlast_states", dlast_states, (cell.states, B, 1, N, D), "[S, B, 1, N, D]")
