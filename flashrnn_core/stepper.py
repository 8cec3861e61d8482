"""Step-wise inference: ``Stepper`` owns the states of a batch of sequences and advances them one step a call.

    stepper = Stepper(R, b, "lstm", batch=4)   # R [Gr, N, D, D], b [Gb, N, D]; states start at zero
    h = stepper.step(Wx_t)                      # Wx_t [B, Gw, N, D] -> h [B, N, D], a view of the state buffer
    stepper.reset([2])                          # sequence 2 starts over (zero states)
    kept = stepper.get_states()                 # [S, B, 1, N, D], a copy: save a session ...
    stepper.set_states(kept)                    # ... and restore it

Where ``cuda_fused`` can take the shape (CuPy arrays; ``backend="auto"`` picks it there) a step is ONE launch of
the fused forward kernel (``cuda_src/fused_fw.cu``) with T=1 on CuPy's current stream: no allocation, no host
synchronisation, nothing converted, so a server can capture ``step`` in a CUDA graph and replay it
(``stepper.capturable`` is True). The kernel handle, launch geometry and arguments are resolved once at
construction (``runtime.PreparedLaunch``); a step only fills in Wx_t's address and launches.

The state buffer ``[S, B, 1, N, D]`` is passed to that kernel both as its initial states (``states0``) and as its
output (``states``), in place. That is safe because every element of the initial states a block reads is read,
and its value consumed, before any thread of any block that shares the element writes it:

* Blocks of different (head, batch tile) touch disjoint elements: a block reads and writes only head n's columns
  of its own batch rows (fused_fw.cu: ``n = blockIdx.x / CL``, ``b0 = blockIdx.y * BT``).
* One block per head (CL = 1): the block reads h_{-1} (all D columns) into shared memory and every state of its
  own cells into registers in its prologue; both are consumed before the barrier that closes step 0 (the values
  are stored to shared memory: h_{-1} before the prologue's barrier; the cell states go through the cell step
  of step 0 (``Cell::forward``), whose results are staged in shared memory before that step's ``__syncthreads``).
  A consumed load has its value, whatever is stored later. The outputs reach global memory only after that
  barrier (``ocopy.flush`` runs at step t >= 1 or after the loop, and the data it stores are shared-memory
  loads issued after the barrier, so no compiler can hoist the global stores above it).
* A cluster per head (CL > 1): each block reads h_{-1} of all D columns of its head but writes only its slice.
  Those loads are consumed by stores to shared memory before the prologue's ``cluster::sync()``
  (barrier.cluster.arrive.release + wait.acquire), and every block writes its outputs only after it passed that
  barrier, so after every block of the cluster arrived: the existing barrier separates the initial loads of
  all blocks from the first output write of any block; no kernel change is needed.
* The argument rests on data dependences and barriers only, not on the (formally violated) ``__restrict__``
  promise: a load, or any reload a compiler makes of it, completes before its value is used, and those uses come
  before the barriers above; the global stores carry data loaded from shared memory after them.
* Across steps: each step is a new launch, whose loads (read-only cache included) see the previous launch's
  writes.

Where cuda_fused cannot take the shape (an explicit ``backend="cuda_fused"`` then raises the reason) and on NumPy
arrays, a step runs the chosen backend's forward over T=1 (``cuda`` or ``vanilla`` on CuPy, ``vanilla`` on
NumPy, with the cells of ``cells/``) and copies the new states into the owned buffer: several launches and
temporary arrays, not capturable (``stepper.capturable`` is False); ``stepper.backend`` says which ran.
"""

from __future__ import annotations

from typing import Any

from . import backends
from ._arrays import on_device
from .api import _contiguous
from .validate import Problem, check_step_indices, check_step_input, validate_step

Array = Any  # numpy.ndarray or cupy.ndarray

__all__ = ["Stepper"]


class Stepper:
    """The states of ``batch`` sequences, advanced one time step per ``step`` call.

    Args:
        R: ``[Gr, N, D, D]`` recurrent matrices (NumPy or CuPy; the stepper's arrays live where R does).
        b: ``[Gb, N, D]`` biases.
        function: ``"lstm"``, ``"slstm"``, ``"gru"`` or ``"elman"``.
        batch: B, the number of sequences.
        dtype: storage dtype of the inputs and states (R's dtype when None); R and b are converted once.
        backend: ``"auto"`` (``cuda_fused`` where it can take the shape, else ``cuda``, else ``vanilla``),
            ``"cuda_fused"`` (refuses with the reason otherwise), ``"cuda"`` or ``"vanilla"``.
        states: ``[S, B, 1, N, D]`` initial states (copied in); zeros when None.

    Attributes:
        backend: the backend that runs the steps. capturable: True when a step is one kernel launch with no
        allocation and no synchronisation (``cuda_fused``), which a CUDA graph can capture.
        batch, dtype, function, problem: what was checked at construction.
    """

    def __init__(self, R: Array, b: Array, function: str, batch: int, dtype: Any = None, *,
                 backend: str = "auto", states: Array | None = None):
        problem = validate_step(R, b, states, function=function, batch=batch, dtype=dtype, backend=backend)
        chosen = backends.resolve(backend, problem)
        self.problem: Problem = problem
        self.function, self.batch, self.dtype = function, problem.B, problem.dtype
        self.backend: str = chosen.name
        self.capturable: bool = chosen.name == "cuda_fused"
        self._asked_backend = backend
        cell, xp, B, N, D = problem.cell, problem.xp, problem.B, problem.N, problem.D
        self._input_shapes = ((B, cell.gates_w, N, D), (B, 1, cell.gates_w, N, D))
        self._array_type = type(R)
        with on_device(problem.device):
            self._states = xp.zeros((cell.states, B, 1, N, D), self.dtype)
            if states is not None:
                self._states[...] = states
            self._h = self._states[0, :, 0]  # [B, N, D]: what step returns, made once
            if self.capturable:
                from .backends.fused import _as  # R, b in the storage dtype, contiguous, 16-byte aligned
                from .runtime import SLOT

                self._R, self._b = _as(R, self.dtype), _as(b, self.dtype)
                # The inference kernel: no saved pre-activations (nothing runs backward through a step).
                self._launch = chosen.prepare_forward(problem, chosen.params(problem, save=False), SLOT, self._R,
                                                      self._b, self._states, self._states, None)
            else:
                self._R, self._b = _contiguous(R), _contiguous(b)
                self._launch = None
                self._runner = chosen

    def step(self, Wx_t: Array) -> Array:
        """Advance every sequence by one step and return the new h.

        Args:
            Wx_t: ``[B, Gw, N, D]`` (or ``[B, 1, Gw, N, D]``) gate pre-activations of this step, in the stepper's
                dtype, C-contiguous (and, on a GPU, 16-byte aligned: any CuPy allocation is), where R lives.

        Returns:
            ``[B, N, D]``: a view of the state buffer (h), overwritten by the next ``step``, ``reset`` or
            ``set_states``: copy it to keep it. The same array object every call.
        """
        if not self._takes(Wx_t):
            check_step_input(Wx_t, self.problem)  # raises, naming what is wrong (the fast test is only a filter)
        if self._launch is not None:
            self._launch(Wx_t)
        else:
            Wx = Wx_t.reshape(self._input_shapes[1])
            states, _ = self._runner.forward(self.problem, Wx, self._R, self._b, self._states, save=False)
            self._states[...] = states
        return self._h

    def _takes(self, a: Any) -> bool:
        """The common case of ``check_step_input``, cheaply: exactly what it accepts, or False."""
        if type(a) is not self._array_type or a.dtype != self.dtype or a.shape not in self._input_shapes:
            return False
        if not a.flags.c_contiguous:
            return False
        return self.problem.device is None or (a.data.ptr % 16 == 0 and a.device.id == self.problem.device)

    def reset(self, indices: Any = None) -> None:
        """Zero the states of batch rows ``indices`` (an int or a sequence of ints in [0, B)); all when None.
        Queued on CuPy's current stream on a GPU."""
        if indices is None:
            self._states.fill(0)
            return
        rows = check_step_indices(indices, self.batch)
        if rows:
            with on_device(self.problem.device):
                self._states[:, rows] = 0

    @property
    def states(self) -> Array:
        """The state buffer itself, ``[S, B, 1, N, D]`` (live: every step overwrites it)."""
        return self._states

    def get_states(self) -> Array:
        """A copy of the states, ``[S, B, 1, N, D]`` in the stepper's dtype (to save a session)."""
        with on_device(self.problem.device):
            return self._states.copy()

    def set_states(self, states: Array) -> None:
        """Copy ``states`` ``[S, B, 1, N, D]`` (any accepted dtype, where R lives) into the state buffer."""
        validate_step(self._R, self._b, states, function=self.function, batch=self.batch, dtype=self.dtype,
                      backend=self._asked_backend)
        with on_device(self.problem.device):
            self._states[...] = states

    def __repr__(self) -> str:
        return f"Stepper({self.problem.label().replace('-T1', '')}, backend={self.backend!r})"
