"""GRU with the reset gate applied after the matmul (cuDNN's and torch.nn.GRU's form, SPEC.md "One step"):

    g = Rs_g + b_g;  r = σ(x_r + Rs_r + b_r);  z = σ(x_z + Rs_z + b_z)
    h = z h_prev + (1 - z) tanh(x_n + b_n + r g)

Wx gates: r, z, n (3). R gates: g, r, z (3). Biases: g, r, z, n (4). State: h.
Saved: ``g``, ``r_raw``, ``z_raw``, ``x_n + b_n``.
"""

from __future__ import annotations

from types import ModuleType

from .base import Array, Cell
from .lstm import sigmoid


class GRUCell(Cell):
    name = "gru"
    gates_w = 3
    gates_r = 3
    gates_b = 4
    states = 1
    state_names = ("h",)
    n_saved = 4
    bw_prev_read, bw_ds_read = 0b1, 0b1

    def step_forward(self, xp: ModuleType, x: Array, rs: Array, b: Array, s_prev: Array) -> tuple[Array, Array]:
        """x ``[3, ...]`` (r, z, n), rs ``[3, ...]`` (g, r, z), b ``[4, ...]`` (g, r, z, n), s_prev ``[1, ...]``
        -> (s ``[1, ...]``, saved ``[4, ...]``)."""
        saved = xp.stack([rs[0] + b[0], x[0] + rs[1] + b[1], x[1] + rs[2] + b[2], x[2] + b[3]])
        r, z = sigmoid(xp, saved[1]), sigmoid(xp, saved[2])
        n = xp.tanh(saved[3] + r * saved[0])
        return (z * s_prev[0] + (1 - z) * n)[None], saved

    def step_backward(self, xp: ModuleType, ds: Array, s_prev: Array, saved: Array) -> tuple[Array, Array, Array, Array]:
        """ds ``[1, ...]`` -> (dx ``[3, ...]``, drs ``[3, ...]``, db ``[4, ...]``, ds_prev ``[1, ...]``)."""
        g, h_prev, dh = saved[0], s_prev[0], ds[0]
        r, z = sigmoid(xp, saved[1]), sigmoid(xp, saved[2])
        n = xp.tanh(saved[3] + r * g)
        dn_pre = dh * (1 - z) * (1 - n * n)  # gradient on x_n + b_n + r g
        dr = dn_pre * g * r * (1 - r)
        dz = dh * (h_prev - n) * z * (1 - z)
        dg = dn_pre * r
        dx = xp.stack([dr, dz, dn_pre])
        drs = xp.stack([dg, dr, dz])
        db = xp.stack([dg, dr, dz, dn_pre])
        return dx, drs, db, (dh * z)[None]
