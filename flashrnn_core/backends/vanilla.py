"""``vanilla``: the reference. A Python loop over time around the cells' step functions (``cells/``).

Array-generic: the same code runs on NumPy (CPU) and CuPy (GPU) arrays, with ``xp`` from the problem.
The math runs in float32 for float32, bfloat16 and float16 storage and in float64 for float64 (gradient
checks); R, b and the initial states are each upcast to that compute dtype, whatever their storage dtype.

``saved`` (the cells' saved values, ``[B, T, n_saved, N, D]``) stays in the *compute* dtype rather than
Wx's storage dtype (unlike the GPU backends, see docs/architecture.md "Saved tensors"): then the backward of
a 16-bit forward recomputes its activations from the very values the forward used. ``backward`` takes saved
tensors in any dtype, so it also runs on another backend's forward.

Variable lengths (``problem.lengths``): every step runs on the whole batch and a sequence past its end keeps
its previous states (a select, so its states stay its last valid ones); backward, such a step passes the
state gradient through unchanged and contributes nothing to dWx, dR or db.
"""

from __future__ import annotations

from typing import Any

from .. import _arrays
from .base import Array, Backend, Grads


def _step_rs(xp: Any, R: Array, h: Array) -> Array:
    """``R[g, n] @ h[b, n]`` for every gate: R ``[G, N, D, D]``, h ``[B, N, D]`` -> ``[G, B, N, D]``."""
    return xp.moveaxis(xp.matmul(R[None], h[:, None, :, :, None])[..., 0], 1, 0)


def _step_dh(xp: Any, R: Array, drs: Array) -> Array:
    """``sum_g R[g, n]^T @ drs[g, b, n]``, the gradient on h_prev through R: drs ``[G, B, N, D]`` -> ``[B, N, D]``."""
    return xp.matmul(drs[:, :, :, None, :], R[:, None])[:, :, :, 0, :].sum(axis=0)


def _running(xp: Any, problem: Any, t: int) -> Array | None:
    """``[1, B, 1, 1]`` booleans, True where step t is inside the sequence; None without lengths (all are)."""
    if problem.lengths is None:
        return None
    return (t < problem.lengths)[None, :, None, None]


def _initial(xp: Any, problem: Any, states0: Array | None, dtype: Any) -> Array:
    """The states before the first step, ``[S, B, N, D]`` in ``dtype`` (zeros when none were given)."""
    if states0 is None:
        return xp.zeros((problem.cell.states, problem.B, problem.N, problem.D), dtype)
    return states0[:, :, 0].astype(dtype)


class VanillaBackend(Backend):
    name = "vanilla"

    def unsupported(self, problem: Any) -> str | None:
        return None  # any shape, any dtype, NumPy or CuPy

    def kernel_variants(self) -> list:
        return []

    def forward(self, problem: Any, Wx: Array, R: Array, b: Array, states0: Array | None,
                save: bool = True) -> tuple[Array, Array | None]:
        """-> ``(states [S, B, T, N, D]`` in Wx's dtype, ``saved [B, T, n_saved, N, D]`` in the compute dtype, or
        None where ``save`` is False)."""
        xp, cell = problem.xp, problem.cell
        cdt = _arrays.compute_dtype(Wx.dtype)
        R, b = R.astype(cdt), b.astype(cdt)[:, None]  # b: [Gb, 1, N, D], broadcast over batch
        s = _initial(xp, problem, states0, cdt)
        B, T, N, D = problem.B, problem.T, problem.N, problem.D
        states = xp.empty((cell.states, B, T, N, D), cdt)
        saved = xp.empty((B, T, cell.n_saved, N, D), cdt) if save else None
        for t in range(T):
            x = xp.moveaxis(Wx[:, t], 1, 0).astype(cdt)  # [Gw, B, N, D]
            s_new, saved_t = cell.step_forward(xp, x, _step_rs(xp, R, s[0]), b, s)
            running = _running(xp, problem, t)
            s = s_new if running is None else xp.where(running, s_new, s)
            states[:, :, t] = s
            if save:
                saved[:, t] = xp.moveaxis(saved_t, 0, 1)
        return states.astype(Wx.dtype, copy=False), saved

    def backward(
        self,
        problem: Any,
        Wx: Array,
        R: Array,
        b: Array,
        states0: Array | None,
        states: Array,
        saved: Array,
        dstates: Array | None,
        dlast: Array | None,
    ) -> Grads:
        """Backpropagation through time over the forward's ``states`` and ``saved``.

        dstates ``[S, B, T, N, D]``, ``[1, B, T, N, D]`` (h only) or None; dlast ``[S, B, 1, N, D]`` or None.
        Returns ``Grads(dWx [B, T, Gw, N, D], dR [Gr, N, D, D], db [Gb, N, D], dstates_initial [S, B, 1, N, D])``.
        """
        xp, cell = problem.xp, problem.cell
        cdt = _arrays.compute_dtype(Wx.dtype)
        B, T, N, D = problem.B, problem.T, problem.N, problem.D
        Rc = R.astype(cdt)
        s_init = _initial(xp, problem, states0, cdt)
        states, saved = states.astype(cdt, copy=False), saved.astype(cdt, copy=False)
        dWx = xp.empty((B, T, cell.gates_w, N, D), cdt)
        drs_all = xp.empty((B, T, cell.gates_r, N, D), cdt)
        db = xp.zeros((cell.gates_b, N, D), cdt)
        carry = xp.zeros((cell.states, B, N, D), cdt)  # gradient on the states after step t, from step t+1
        for t in reversed(range(T)):
            ds = carry + self._upstream(xp, dstates, dlast, t, T, carry.shape, cdt)
            s_prev = states[:, :, t - 1] if t > 0 else s_init
            dx, drs, db_t, ds_prev = cell.step_backward(xp, ds, s_prev, xp.moveaxis(saved[:, t], 1, 0))
            running = _running(xp, problem, t)
            if running is not None:  # past a sequence's end: no gate gradient, the state gradient passes through
                dx, drs, db_t = (xp.where(running, g, 0) for g in (dx, drs, db_t))
            dWx[:, t] = xp.moveaxis(dx, 0, 1)
            drs_all[:, t] = xp.moveaxis(drs, 0, 1)
            db += db_t.sum(axis=1)
            carry = xp.concatenate([(ds_prev[0] + _step_dh(xp, Rc, drs))[None], ds_prev[1:]])
            if running is not None:
                carry = xp.where(running, carry, ds)
        # h_prev of every step, then dR[g, n] = sum over (b, t) of drs outer h_prev: one contraction, after the loop.
        h_prev = xp.concatenate([s_init[0][:, None], states[0][:, :-1]], axis=1)  # [B, T, N, D]
        dR = xp.einsum("btgni,btnj->gnij", drs_all, h_prev, optimize=True)  # optimize: BLAS, 6x NumPy's loop
        s_dtype = states0.dtype if states0 is not None else Wx.dtype
        return Grads(dWx.astype(Wx.dtype), dR.astype(R.dtype), db.astype(b.dtype), carry[:, :, None].astype(s_dtype))

    @staticmethod
    def _upstream(xp: Any, dstates: Array | None, dlast: Array | None, t: int, T: int, shape: tuple, cdt: Any) -> Array:
        """The caller's gradient on the states after step t, ``shape`` = ``[S, B, N, D]``. An h-only dstates
        (``[1, B, T, N, D]``) fills row 0; dlast counts at the last step only."""
        up = xp.zeros(shape, cdt)
        if dstates is not None:
            up[: dstates.shape[0]] += dstates[:, :, t].astype(cdt)
        if dlast is not None and t == T - 1:
            up += dlast[:, :, 0].astype(cdt)
        return up
