"""What every cell is: gate and state counts, and an array-generic pointwise step forward and backward.

Arrays here are stacks along axis 0 (one entry per gate or per state) of elementwise operands of any common
trailing shape, usually ``[B, N, D]``. ``xp`` is NumPy or CuPy; the math runs in the arrays' dtype (float32, or
float64 for gradient checks): callers upcast storage dtypes before calling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any

Array = Any  # numpy.ndarray or cupy.ndarray


class Cell(ABC):
    """One recurrent cell: ``s_t = P(s_{t-1}, x_t + R s0_{t-1} + b)``, as SPEC.md defines it.

    ``saved`` is what a step keeps for its backward: ``n_saved`` arrays (pre-activations, and sLSTM's
    exponential gates: see each cell), stored by the forward as ``[B, T, n_saved, N, D]``.
    """

    name: str
    gates_w: int  # Gw: gates in Wx
    gates_r: int  # Gr: gates through R
    gates_b: int  # Gb: bias rows
    states: int  # S
    state_names: tuple[str, ...]
    n_saved: int
    #: What ``step_backward`` reads, as bitmasks over the states (bit s: state s), as cuda_src/cells/ declares
    #: them (PREV_READ, DS_READ): the fused backward stages only these rows of the previous states and of the
    #: upstream gradients, and ConstrINT counts its shared memory by them. ``bw_ds_read`` leaves out a state whose
    #: gradient reaches nothing (sLSTM's m: ``ds_prev[3]`` does not depend on ``ds[3]``). tests/test_cells.py
    #: holds these to the math.
    bw_prev_read: int
    bw_ds_read: int

    @abstractmethod
    def step_forward(self, xp: ModuleType, x: Array, rs: Array, b: Array, s_prev: Array) -> tuple[Array, Array]:
        """One step.

        x: ``[Gw, ...]`` (Wx at this step), rs: ``[Gr, ...]`` (``R @ h_prev`` per gate), b: ``[Gb, ...]`` (broadcast),
        s_prev: ``[S, ...]``. Returns ``(s [S, ...], saved [n_saved, ...])``.
        """

    @abstractmethod
    def step_backward(self, xp: ModuleType, ds: Array, s_prev: Array, saved: Array) -> tuple[Array, Array, Array, Array]:
        """Backward of one step.

        ds: ``[S, ...]`` total gradient on this step's new states (upstream plus what flows back from the
        next step, excluding the recurrent-matrix path, which the caller adds to ds[0]).
        Returns ``(dx [Gw, ...], drs [Gr, ...], db [Gb, ...], ds_prev [S, ...])`` where ``drs`` is the gradient
        on ``R @ h_prev`` per gate (the caller turns it into ``R^T drs`` and ``dR``) and ``ds_prev`` holds the
        direct (non-matmul) gradients on the previous states.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(Gw={self.gates_w}, Gr={self.gates_r}, Gb={self.gates_b}, S={self.states})"
