"""LSTM: ``c = σ(f) c_prev + σ(i) tanh(z)``, ``h = σ(o) tanh(c)`` (SPEC.md, "One step").

Gates in ``Wx``, ``R`` and ``b``: i, f, z, o. States: h, c. Saved: the four pre-activations ``x + Rs + b``.
Also home of ``sigmoid``, the one stable logistic the Python cells share.
"""

from __future__ import annotations

from types import ModuleType

from .base import Array, Cell


def sigmoid(xp: ModuleType, x: Array) -> Array:
    """Logistic σ(x), accurate in both tails: ``exp`` only ever sees ``-|x|``, so nothing overflows and
    σ(-40) is not rounded to ``1 - 1``."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class LSTMCell(Cell):
    name = "lstm"
    gates_w = gates_r = gates_b = 4
    states = 2
    state_names = ("h", "c")
    n_saved = 4
    bw_prev_read, bw_ds_read = 0b10, 0b11

    def step_forward(self, xp: ModuleType, x: Array, rs: Array, b: Array, s_prev: Array) -> tuple[Array, Array]:
        """x, rs, b: ``[4, ...]`` (i, f, z, o); s_prev ``[2, ...]`` (h, c) -> (s ``[2, ...]``, saved ``[4, ...]``)."""
        pre = x + rs + b
        i, f, o = sigmoid(xp, pre[0]), sigmoid(xp, pre[1]), sigmoid(xp, pre[3])
        c = f * s_prev[1] + i * xp.tanh(pre[2])
        h = o * xp.tanh(c)
        return xp.stack([h, c]), pre

    def step_backward(self, xp: ModuleType, ds: Array, s_prev: Array, saved: Array) -> tuple[Array, Array, Array, Array]:
        """ds ``[2, ...]`` (dh, dc), s_prev ``[2, ...]``, saved ``[4, ...]`` -> (dx, drs, db each ``[4, ...]``,
        ds_prev ``[2, ...]``). dx, drs and db are one array: all three are the gradient on ``x + Rs + b``."""
        c_prev = s_prev[1]
        i, f, o = sigmoid(xp, saved[0]), sigmoid(xp, saved[1]), sigmoid(xp, saved[3])
        z = xp.tanh(saved[2])
        tc = xp.tanh(f * c_prev + i * z)
        dh = ds[0]
        dc = ds[1] + dh * o * (1 - tc * tc)
        dpre = xp.stack([
            dc * z * i * (1 - i),
            dc * c_prev * f * (1 - f),
            dc * i * (1 - z * z),
            dh * tc * o * (1 - o),
        ])
        # h_prev reaches this step only through R (the caller's part), so its direct gradient is zero.
        ds_prev = xp.stack([xp.zeros_like(dh), dc * f])
        return dpre, dpre, dpre, ds_prev
