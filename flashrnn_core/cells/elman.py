"""Elman: ``h = tanh(x + Rs + b)`` (SPEC.md, "One step"). One gate, one state (h); saved: ``x + Rs + b``."""

from __future__ import annotations

from types import ModuleType

from .base import Array, Cell


class ElmanCell(Cell):
    name = "elman"
    gates_w = gates_r = gates_b = 1
    states = 1
    state_names = ("h",)
    n_saved = 1
    bw_prev_read, bw_ds_read = 0b0, 0b1

    def step_forward(self, xp: ModuleType, x: Array, rs: Array, b: Array, s_prev: Array) -> tuple[Array, Array]:
        """x, rs, b: ``[1, ...]``; s_prev ``[1, ...]`` (h) -> (s ``[1, ...]``, saved ``[1, ...]``)."""
        pre = x + rs + b
        return xp.tanh(pre), pre

    def step_backward(self, xp: ModuleType, ds: Array, s_prev: Array, saved: Array) -> tuple[Array, Array, Array, Array]:
        """ds ``[1, ...]`` -> (dx, drs, db ``[1, ...]``, one array; ds_prev ``[1, ...]``, zero: h_prev enters only
        through R)."""
        h = xp.tanh(saved)
        dpre = ds * (1 - h * h)
        return dpre, dpre, dpre, xp.zeros_like(ds)
