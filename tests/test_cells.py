"""The cells against SPEC.md written out a second time, per element, in plain Python floats.

``scalar_step`` below is that second form (it never calls ``flashrnn_core.cells``): the cells' step forward
must reproduce it, and their step backward must match central finite differences of it in float64.
test_vanilla.py builds its sequence-level reference from the same function.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from flashrnn_core.cells import CELLS, FUNCTIONS
from flashrnn_core.cells.lstm import sigmoid
from flashrnn_core.cells.slstm import logsigmoid
from conftest import random_inputs

#: SPEC.md's table, typed in again: (Gw, Gr, Gb, S, n_saved) and the state names.
COUNTS = {"lstm": (4, 4, 4, 2, 4), "slstm": (4, 4, 4, 4, 4), "gru": (3, 3, 4, 1, 4), "elman": (1, 1, 1, 1, 1)}
STATE_NAMES = {"lstm": ("h", "c"), "slstm": ("h", "c", "n", "m"), "gru": ("h",), "elman": ("h",)}
SLSTM_N, SLSTM_M = 2, 3  # rows of n and m in slstm's states


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def scalar_step(function: str, x: list, rs: list, b: list, s: list, m_fixed: float | None = None) -> tuple[list, list]:
    """One step of one element (SPEC.md, "One step"): lists of Gw, Gr, Gb, S floats -> (new S states, saved).

    ``m_fixed`` (slstm only) replaces the stabilizer by a given constant and drops ``max(., 1)`` on n: the
    function whose derivatives the SPEC's gradient conventions are.
    """
    if function == "elman":
        a = x[0] + rs[0] + b[0]
        return [math.tanh(a)], [a]
    if function == "gru":
        g, r_raw, z_raw, xn = rs[0] + b[0], x[0] + rs[1] + b[1], x[1] + rs[2] + b[2], x[2] + b[3]
        z = _sig(z_raw)
        return [z * s[0] + (1 - z) * math.tanh(xn + _sig(r_raw) * g)], [g, r_raw, z_raw, xn]
    i_raw, f_raw, z_raw, o_raw = (x[k] + rs[k] + b[k] for k in range(4))
    pre = [i_raw, f_raw, z_raw, o_raw]
    if function == "lstm":
        c = _sig(f_raw) * s[1] + _sig(i_raw) * math.tanh(z_raw)
        return [_sig(o_raw) * math.tanh(c), c], pre
    assert function == "slstm"
    _, c_prev, n_prev, m_prev = s
    lf = math.log(_sig(f_raw)) + m_prev
    if m_fixed is None:
        m = i_raw if n_prev == 0 else max(i_raw, lf)
    else:
        m = m_fixed
    i, f = math.exp(i_raw - m), math.exp(lf - m)
    c = f * c_prev + i * math.tanh(z_raw)
    n = f * n_prev + i
    if m_fixed is None:
        n = max(n, 1.0)
    m_is_i = n_prev == 0 or i_raw >= lf  # saved: i and f in one signed value, sigma(-f_raw), z_raw, o_raw
    return [_sig(o_raw) * c / n, c, n, m], [f if m_is_i else -i, _sig(-f_raw), z_raw, o_raw]


def random_states(rng: np.random.Generator, function: str, shape: tuple, kind: str) -> np.ndarray:
    """States ``[S, *shape]`` of a kind: "zero", "init" (random; slstm n >= 1, m anything) or, for slstm,
    "mixed" (some elements a fresh zero state: n = c = 0). Consistent slstm states (n = 0 only with c = 0,
    else n >= 1) are those for which SPEC's conventions are the exact derivatives of a loss on h."""
    S = COUNTS[function][3]
    if kind == "zero":
        return np.zeros((S, *shape))
    s = rng.standard_normal((S, *shape))
    if function == "slstm":
        s[SLSTM_N] = 1 + np.abs(s[SLSTM_N])
        s[SLSTM_M] *= 3
        if kind == "mixed":
            fresh = rng.random(shape) < 0.5
            s[1][fresh] = s[SLSTM_N][fresh] = 0
    return s


def adapter_inputs(function: str, B: int = 2, T: int = 4, N: int = 2, D: int = 3, init: bool = True,
                   seed: int = 0) -> list:
    """(Wx, R, b, states0) in float64 NumPy for the adapters' tests: R scaled by 1/sqrt(D), states0 "init"
    (consistent slstm states, SPEC's gradient domain) or None: conftest.random_inputs' parameters, then the states."""
    rng = np.random.default_rng(seed)
    Wx, R, b, _ = random_inputs(rng, function, B, T, N, D, with_states=False)
    return [Wx, R, b, random_states(rng, function, (B, 1, N, D), "init") if init else None]


def _step_inputs(function: str, kind: str, seed: int, shape=(3, 2), scale: float = 1.0) -> list[np.ndarray]:
    Gw, Gr, Gb, _, _ = COUNTS[function]
    rng = np.random.default_rng(seed)
    x, rs, b = (scale * rng.standard_normal((G, *shape)) for G in (Gw, Gr, Gb))
    return [x, rs, b, random_states(rng, function, shape, kind)]


def _scalar_at(function: str, arrays: list[np.ndarray], e: tuple, m_fixed=None) -> tuple[list, list]:
    return scalar_step(function, *[list(a[(slice(None), *e)]) for a in arrays], m_fixed=m_fixed)


STATE_KINDS = [(f, k) for f in FUNCTIONS for k in ("zero", "init", "mixed") if k != "mixed" or f == "slstm"]


def test_counts_match_spec():
    for function, (Gw, Gr, Gb, S, n_saved) in COUNTS.items():
        cell = CELLS[function]
        assert (cell.gates_w, cell.gates_r, cell.gates_b, cell.states, cell.n_saved) == (Gw, Gr, Gb, S, n_saved)
        assert cell.state_names == STATE_NAMES[function] and cell.name == function


@pytest.mark.parametrize("function,kind", STATE_KINDS, ids=[f"{f}-{k}" for f, k in STATE_KINDS])
def test_step_forward_matches_scalar_formula(function, kind):
    arrays = _step_inputs(function, kind, seed=len(function) + len(kind))
    s, saved = CELLS[function].step_forward(np, *arrays)
    assert s.shape == arrays[3].shape and saved.shape == (COUNTS[function][4], *arrays[3].shape[1:])
    for e in np.ndindex(*arrays[3].shape[1:]):
        ref_s, ref_saved = _scalar_at(function, arrays, e)
        np.testing.assert_allclose(s[(slice(None), *e)], ref_s, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(saved[(slice(None), *e)], ref_saved, rtol=1e-13, atol=1e-14)


def _fd_step(function: str, arrays: list[np.ndarray], w: np.ndarray, m_fixed: np.ndarray | None, eps=1e-6):
    """Central differences of ``sum(w * s_new)`` of the scalar step, for every input array."""
    grads = [np.zeros_like(a) for a in arrays]
    for e in np.ndindex(*w.shape[1:]):
        mf = None if m_fixed is None else float(m_fixed[e])
        for a, g in zip(arrays, grads):
            for k in range(a.shape[0]):
                idx = (k, *e)
                keep = a[idx]
                a[idx] = keep + eps
                up = _scalar_at(function, arrays, e, mf)[0]
                a[idx] = keep - eps
                down = _scalar_at(function, arrays, e, mf)[0]
                a[idx] = keep
                g[idx] = np.dot(w[(slice(None), *e)], np.subtract(up, down)) / (2 * eps)
    return grads


def _rel(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


STEP_FD = [(f, k, loss) for f, k in STATE_KINDS for loss in ("h", "all")]


@pytest.mark.parametrize("function,kind,loss", STEP_FD, ids=[f"{f}-{k}-loss_{l}" for f, k, l in STEP_FD])
def test_step_backward_matches_finite_differences(function, kind, loss):
    """slstm: a loss on h is checked against the true step; a loss on every state against the step with m held
    at its forward value and no ``max(., 1)`` (the SPEC's conventions). The gradient on n_prev at a fresh zero
    state is a convention only (moving n_prev off 0 switches m's branch): checked in the second form alone."""
    cell = CELLS[function]
    arrays = _step_inputs(function, kind, seed=7 * len(function) + len(kind))
    s, _ = cell.step_forward(np, *arrays)
    w = np.random.default_rng(1).standard_normal(s.shape)
    if loss == "h":
        w[1:] = 0
    frozen = function == "slstm" and loss == "all"
    fd = _fd_step(function, arrays, w, s[SLSTM_M] if frozen else None)
    got = cell.step_backward(np, w, arrays[3], cell.step_forward(np, *arrays)[1])
    if function == "slstm" and not frozen:
        mask = arrays[3][SLSTM_N] == 0
        fd[3][SLSTM_N][mask] = got[3][SLSTM_N][mask]
    for name, g, ref in zip(("dx", "drs", "db", "ds_prev"), got, fd):
        assert g.shape == ref.shape, name
        assert _rel(g, ref) < 1e-7, f"{name}: relative error {_rel(g, ref):.2e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("function,kind", STATE_KINDS, ids=[f"{f}-{k}" for f, k in STATE_KINDS])
def test_step_is_finite_for_large_preactivations(function, kind, dtype):
    """Pre-activations up to about ±60 saturate every gate without overflow, NaN or a warning (underflow to 0
    is expected). For slstm at a fresh state the forget gate is exp(lf - i_raw): beyond about 88 it would
    overflow float32 (SPEC's formula); ±60 stays inside."""
    x, rs, b, s_prev = _step_inputs(function, kind, seed=3, shape=(256,), scale=20.0)
    arrays = [np.clip(a, -20, 20).astype(dtype) for a in (x, rs, b)] + [s_prev.astype(dtype)]  # sums within ±60
    cell = CELLS[function]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s, saved = cell.step_forward(np, *arrays)
        ds = np.ones_like(s)
        grads = cell.step_backward(np, ds, arrays[3], saved)
    for a in (s, saved, *grads):
        assert a.dtype == dtype and np.isfinite(a).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_logsigmoid_are_accurate_in_the_tails(dtype):
    x = np.array([-80, -40, -20, -1, 0, 1, 20, 40, 80], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        sig, logsig = sigmoid(np, x), logsigmoid(np, x)
    ref_sig = [_sig(float(v)) for v in x]
    ref_logsig = [-math.log1p(math.exp(-v)) if v >= 0 else v - math.log1p(math.exp(v)) for v in x.tolist()]
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    assert sig.dtype == logsig.dtype == dtype
    np.testing.assert_allclose(sig, ref_sig, rtol=rtol, atol=0 if dtype == np.float64 else 1e-38)
    np.testing.assert_allclose(logsig, ref_logsig, rtol=rtol, atol=1e-30)


def _bits(mask: int, S: int) -> list[int]:
    return [s for s in range(S) if (mask >> s) & 1]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_backward_reads_exactly_the_declared_states(function):
    """``bw_prev_read`` and ``bw_ds_read`` (the rows the fused backward stages, as cuda_src/cells/ declares them):
    changing any state they leave out changes nothing ``step_backward`` returns; changing one they name changes
    something."""
    cell = CELLS[function]
    x, rs, b, s_prev = _step_inputs(function, "init", seed=3 + len(function))
    _, saved = cell.step_forward(np, x, rs, b, s_prev)
    rng = np.random.default_rng(11)
    ds = rng.standard_normal(s_prev.shape)
    ref = cell.step_backward(np, ds, s_prev, saved)

    def changed(ds_new, s_new) -> bool:
        got = cell.step_backward(np, ds_new, s_new, saved)
        return any(not np.array_equal(g, r) for g, r in zip(got, ref))

    for s in range(cell.states):
        s_new, ds_new = s_prev.copy(), ds.copy()
        s_new[s] += 0.5 + rng.random(s_new[s].shape)
        ds_new[s] += 0.5 + rng.random(ds_new[s].shape)
        assert changed(ds, s_new) == (s in _bits(cell.bw_prev_read, cell.states)), f"previous state {s}"
        assert changed(ds_new, s_prev) == (s in _bits(cell.bw_ds_read, cell.states)), f"upstream gradient {s}"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_cuda_cells_declare_the_same_reads(function):
    """The CUDA cell's PREV_READ and DS_READ (what the fused backward stages) are the Python twin's masks, which
    the test above holds to the math: a row the kernel reads but does not stage would be garbage."""
    from flashrnn_core.runtime.env import source_root

    text = (source_root() / "cells" / f"{function}.cuh").read_text()
    found = re.search(r"PREV_READ = (0b[01]+|0)u, DS_READ = (0b[01]+|0)u", text)
    assert found, f"cells/{function}.cuh declares no PREV_READ/DS_READ"
    cell = CELLS[function]
    assert (int(found[1], 0), int(found[2], 0)) == (cell.bw_prev_read, cell.bw_ds_read)
