"""sLSTM: exponential input gate with a stabilizer m and a normalizer n (SPEC.md, "One step"):

    lf = logσ(f_raw) + m_prev
    m  = i_raw where n_prev == 0 (a fresh zero state, elementwise), else max(i_raw, lf)
    i  = exp(i_raw - m);  f = exp(lf - m)
    c  = f c_prev + i tanh(z_raw);  n = max(f n_prev + i, 1);  h = σ(o_raw) c / n

Gates: i, f, z, o. States: h, c, n, m. Saved (what the backward reads, four values a cell): ``v``, the
stabilized gates i and f in one value (one of them is exactly 1: ``v = f`` where m = i_raw, so that i = 1, else
``v = -i`` and f = 1; the sign bit says which, also at ±0), ``σ(-f_raw)`` (d logσ(f_raw) / d f_raw), and the
pre-activations ``z_raw``, ``o_raw``. The backward then needs no exponential, logarithm or m_prev: three
transcendental ops a cell instead of seven in the fused kernels' issue-bound backward step, and the stored i or f
keeps its own 16-bit precision where one rounded from i_raw and f_raw lost |i_raw - lf| times that.

Gradient conventions (SPEC.md, "Gradients"): the new stabilizer m is a constant (no gradient flows from m,
nor from an upstream gradient on m), and ``max(., 1)`` passes its gradient straight through. ``m_prev`` is
still an input of ``lf``, so ``ds_prev[3]`` carries the gradient on it; inside a sequence the previous step
drops it (its m is a constant), so it survives only as ``dstates_initial``'s m row. Because ``c/n`` does not
depend on the stabilizers, these are the exact derivatives of any loss on h, as long as the states are
consistent (n_prev == 0 only with c_prev == 0, else n_prev >= 1, so that ``max(., 1)`` never binds).

Range: with history (n_prev != 0) both exponents are <= 0. At a fresh state f = exp(lf - i_raw) is unbounded
and overflows float32 once lf - i_raw > 88 (i_raw below about -88 from a zero state), where ``f * c_prev``
is inf * 0 = NaN. That is SPEC's formula, kept as written: capping f would change dstates_initial's c row.
"""

from __future__ import annotations

from types import ModuleType

from .base import Array, Cell
from .lstm import sigmoid


def logsigmoid(xp: ModuleType, x: Array) -> Array:
    """log σ(x) without overflow or ``log(0)``: ``min(x, 0) - log1p(exp(-|x|))``."""
    return xp.minimum(x, 0) - xp.log1p(xp.exp(-xp.abs(x)))


def _gates(xp: ModuleType, s_prev: Array, i_raw: Array, f_raw: Array) -> tuple[Array, Array, Array, Array]:
    """(i, f, m, m_is_i): the stabilized input and forget gates, the new stabilizer, and where it is i_raw."""
    n_prev, m_prev = s_prev[2], s_prev[3]
    lf = logsigmoid(xp, f_raw) + m_prev
    m_is_i = (n_prev == 0) | (i_raw >= lf)
    m = xp.where(m_is_i, i_raw, lf)
    return xp.exp(i_raw - m), xp.exp(lf - m), m, m_is_i


class SLSTMCell(Cell):
    name = "slstm"
    gates_w = gates_r = gates_b = 4
    states = 4
    state_names = ("h", "c", "n", "m")
    n_saved = 4
    bw_prev_read, bw_ds_read = 0b0110, 0b0111

    def step_forward(self, xp: ModuleType, x: Array, rs: Array, b: Array, s_prev: Array) -> tuple[Array, Array]:
        """x, rs, b: ``[4, ...]`` (i, f, z, o); s_prev ``[4, ...]`` (h, c, n, m)
        -> (s ``[4, ...]`` (h, c, n, m), saved ``[4, ...]``)."""
        pre = x + rs + b
        i, f, m, m_is_i = _gates(xp, s_prev, pre[0], pre[1])
        c = f * s_prev[1] + i * xp.tanh(pre[2])
        n = xp.maximum(f * s_prev[2] + i, 1)
        h = sigmoid(xp, pre[3]) * c / n
        saved = xp.stack([xp.where(m_is_i, f, -i), sigmoid(xp, -pre[1]), pre[2], pre[3]])
        return xp.stack([h, c, n, m]), saved

    def step_backward(self, xp: ModuleType, ds: Array, s_prev: Array, saved: Array) -> tuple[Array, Array, Array, Array]:
        """ds ``[4, ...]`` (dh, dc, dn, dm; dm is ignored: m is a constant) -> (dx, drs, db each ``[4, ...]``, one
        array, the gradient on ``x + Rs + b``; ds_prev ``[4, ...]``)."""
        c_prev, n_prev = s_prev[1], s_prev[2]
        m_is_i, e = ~xp.signbit(saved[0]), xp.abs(saved[0])
        i, f = xp.where(m_is_i, 1, e), xp.where(m_is_i, e, 1)
        z, o = xp.tanh(saved[2]), sigmoid(xp, saved[3])
        c = f * c_prev + i * z
        n = xp.maximum(f * n_prev + i, 1)
        dh = ds[0]
        dc = ds[1] + dh * o / n
        dn = ds[2] - dh * o * c / (n * n)  # passes max(., 1) unchanged (straight through)
        dlf = (dc * c_prev + dn * n_prev) * f  # gradient on lf = logσ(f_raw) + m_prev, with m held fixed
        dpre = xp.stack([
            (dc * z + dn) * i,  # d exp(i_raw - m) / d i_raw = i
            dlf * saved[1],  # d logσ(x) / dx = σ(-x)
            dc * i * (1 - z * z),
            dh * c / n * o * (1 - o),
        ])
        ds_prev = xp.stack([xp.zeros_like(dh), dc * f, dn * f, dlf])
        return dpre, dpre, dpre, ds_prev
