"""The vanilla backend: the reference every other backend is tested against.

- forward against ``scalar_step`` (test_cells.py, SPEC.md typed in again) looped over time with explicit sums;
- backward against float64 central finite differences of that scalar sequence, for every cell, with and
  without initial states, for losses on all states, on h, on the last states and on both paths at once;
- storage dtypes (outputs in Wx's dtype, mixed parameter dtypes) and precision against float64 at T = 64.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest

from flashrnn_core import _arrays
from flashrnn_core.backends.base import Grads
from flashrnn_core.backends.vanilla import VanillaBackend
from flashrnn_core.cells import CELLS, FUNCTIONS
from test_cells import COUNTS, SLSTM_M, SLSTM_N, random_states, scalar_step

VANILLA = VanillaBackend()


def problem(function: str, Wx, xp=np) -> SimpleNamespace:
    """What ``validate`` hands a backend, for the attributes vanilla reads."""
    B, T, _, N, D = Wx.shape
    return SimpleNamespace(cell=CELLS[function], xp=xp, B=B, T=T, N=N, D=D, dtype=np.dtype(Wx.dtype), lengths=None)


def make_inputs(function: str, B: int, T: int, N: int, D: int, kind: str, seed: int) -> list:
    """(Wx, R, b, states0) in float64; R scaled by 1/sqrt(D); states0 None for kind "zero"."""
    Gw, Gr, Gb, _, _ = COUNTS[function]
    rng = np.random.default_rng(seed)
    Wx = rng.standard_normal((B, T, Gw, N, D))
    R = rng.standard_normal((Gr, N, D, D)) / np.sqrt(D)
    b = rng.standard_normal((Gb, N, D))
    s0 = None if kind == "zero" else random_states(rng, function, (B, 1, N, D), kind)
    return [Wx, R, b, s0]


def scalar_sequence(function: str, Wx, R, b, s0, m_fixed=None) -> np.ndarray:
    """States ``[S, B, T, N, D]`` from ``scalar_step`` with ``R @ h`` summed by hand; ``m_fixed [B, T, N, D]``
    holds slstm's stabilizer at every step (see ``scalar_step``)."""
    B, T, Gw, N, D = Wx.shape
    Gr, S = COUNTS[function][1], COUNTS[function][3]
    s0 = np.zeros((S, B, 1, N, D)) if s0 is None else s0
    Wl, Rl, bl, sl = Wx.tolist(), R.tolist(), b.tolist(), s0.tolist()
    out = np.empty((S, B, T, N, D))
    for bb in range(B):
        for n in range(N):
            s = [[sl[k][bb][0][n][d] for k in range(S)] for d in range(D)]  # s[d] = the S states of element d
            for t in range(T):
                h = [s[d][0] for d in range(D)]
                rs = [[sum(Rl[g][n][d][j] * h[j] for j in range(D)) for g in range(Gr)] for d in range(D)]
                s = [scalar_step(function, [Wl[bb][t][g][n][d] for g in range(Gw)], rs[d],
                                 [bl[g][n][d] for g in range(len(bl))], s[d],
                                 None if m_fixed is None else m_fixed[bb][t][n][d])[0] for d in range(D)]
                out[:, bb, t, n, :] = np.transpose(s)
    return out


def _rel(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert not np.isnan(a).any(), "NaN"
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


def _label(function, B, T, N, D, kind) -> str:
    return f"{function}-B{B}-T{T}-N{N}-D{D}-{kind}"


# --------------------------------------------------------------------------------------------- forward values

FORWARD_CASES = [(f, *shape, k) for f in FUNCTIONS for shape in ((2, 3, 2, 3), (1, 5, 1, 4))
                 for k in ("zero", "init", "mixed") if k != "mixed" or f == "slstm"]


@pytest.mark.parametrize("function,B,T,N,D,kind", FORWARD_CASES, ids=[_label(*c) for c in FORWARD_CASES])
def test_forward_matches_scalar_sequence(function, B, T, N, D, kind):
    Wx, R, b, s0 = make_inputs(function, B, T, N, D, kind, seed=B * T + N * D)
    states, saved = VANILLA.forward(problem(function, Wx), Wx, R, b, s0)
    assert _rel(states, scalar_sequence(function, Wx, R, b, s0)) < 1e-13
    assert saved.shape == (B, T, COUNTS[function][4], N, D) and saved.dtype == np.float64


# --------------------------------------------------------------------------------- backward: finite differences

#: loss name -> (dstates rows or None, dlast on which rows or None). "h": dstates [1, B, T, N, D];
#: "combined": an h-only dstates plus dlast on every state (both paths, and the padding of h-only).
LOSSES = {"all": ("S", None), "h": (1, None), "last": (None, "S"), "last-h": (None, 1), "combined": (1, "S")}
FD_SHAPES = ((2, 4, 2, 3), (3, 3, 1, 2))
FD_CASES = [(f, *shape, k, loss) for f in FUNCTIONS for shape in FD_SHAPES
            for k in ("zero", "init", "mixed") if k != "mixed" or f == "slstm" for loss in LOSSES]


def _h_only(loss: str) -> bool:
    return loss in ("h", "last-h")


@functools.lru_cache(maxsize=None)
def _jacobian(function, B, T, N, D, kind, frozen: bool) -> tuple[np.ndarray, ...]:
    """Central differences (eps 1e-6) of every state w.r.t. every input: one ``[*input.shape, S, B, T, N, D]``
    per input (Wx, R, b, states0; states0 zeros when kind is "zero"). ``frozen``: slstm with m held at the
    forward's values and no ``max(., 1)``, the function the SPEC's gradient conventions differentiate."""
    Wx, R, b, s0 = make_inputs(function, B, T, N, D, kind, seed=B + 10 * T + 100 * N + 1000 * D + len(kind))
    inputs = [Wx, R, b, np.zeros((COUNTS[function][3], B, 1, N, D)) if s0 is None else s0]
    m_fixed = scalar_sequence(function, *inputs)[SLSTM_M].tolist() if frozen else None
    eps, out = 1e-6, []
    for a in inputs:
        jac = np.empty(a.shape + (COUNTS[function][3], B, T, N, D))
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            a[idx] = keep + eps
            up = scalar_sequence(function, *inputs, m_fixed=m_fixed)
            a[idx] = keep - eps
            jac[idx] = (up - scalar_sequence(function, *inputs, m_fixed=m_fixed)) / (2 * eps)
            a[idx] = keep
        out.append(jac)
    return tuple(out)


def _upstream(rng, loss: str, S: int, B: int, T: int, N: int, D: int):
    """(dstates, dlast) of a loss, and the total weight ``[S, B, T, N, D]`` it puts on the states."""
    rows, last_rows = LOSSES[loss]
    weight = np.zeros((S, B, T, N, D))
    dstates = dlast = None
    if rows is not None:
        dstates = rng.standard_normal((S if rows == "S" else 1, B, T, N, D))
        weight[: dstates.shape[0]] += dstates
    if last_rows is not None:
        dlast = rng.standard_normal((S, B, 1, N, D))
        if last_rows == 1:
            dlast[1:] = 0
        weight[:, :, -1:] += dlast
    return dstates, dlast, weight


@pytest.mark.parametrize("function,B,T,N,D,kind,loss", FD_CASES, ids=[f"{_label(*c[:6])}-{c[6]}" for c in FD_CASES])
def test_backward_matches_finite_differences(function, B, T, N, D, kind, loss):
    """slstm: a loss on h alone is differentiated exactly (the true forward); a loss touching c, n or m is
    checked against the forward with m held and ``max(., 1)`` passed straight (SPEC.md's conventions). At a
    fresh zero state the gradient on n is a convention only (moving n off 0 switches m's branch), so there
    the true-forward check leaves that row out."""
    frozen = function == "slstm" and not _h_only(loss)
    jac = _jacobian(function, B, T, N, D, kind, frozen)
    Wx, R, b, s0 = make_inputs(function, B, T, N, D, kind, seed=B + 10 * T + 100 * N + 1000 * D + len(kind))
    S = COUNTS[function][3]
    dstates, dlast, weight = _upstream(np.random.default_rng(len(loss)), loss, S, B, T, N, D)
    fd = [np.tensordot(j, weight, axes=weight.ndim) for j in jac]

    prob = problem(function, Wx)
    states, saved = VANILLA.forward(prob, Wx, R, b, s0)
    grads = VANILLA.backward(prob, Wx, R, b, s0, states, saved, dstates, dlast)
    assert isinstance(grads, Grads)
    if function == "slstm" and not frozen:
        fresh = (np.zeros((B, 1, N, D)) if s0 is None else s0[SLSTM_N]) == 0
        fd[3][SLSTM_N][fresh] = grads.dstates_initial[SLSTM_N][fresh]
    for name, got, ref in zip(Grads._fields, grads, fd):
        assert got.shape == ref.shape and got.dtype == np.float64, name
        assert _rel(got, ref) < 1e-6, f"{name}: relative error {_rel(got, ref):.2e}"


def test_h_only_upstream_equals_zero_padded_upstream():
    """dstates ``[1, B, T, N, D]`` means a gradient on h alone: the same as ``[S, ...]`` with zeros elsewhere."""
    for function in FUNCTIONS:
        Wx, R, b, s0 = make_inputs(function, 2, 3, 2, 3, "init", seed=5)
        prob = problem(function, Wx)
        states, saved = VANILLA.forward(prob, Wx, R, b, s0)
        dh = np.random.default_rng(0).standard_normal((1, *states.shape[1:]))
        padded = np.concatenate([dh, np.zeros((states.shape[0] - 1, *states.shape[1:]))])
        for g1, g2 in zip(VANILLA.backward(prob, Wx, R, b, s0, states, saved, dh, None),
                          VANILLA.backward(prob, Wx, R, b, s0, states, saved, padded, None)):
            np.testing.assert_array_equal(g1, g2)


# ------------------------------------------------------------------------------------ storage dtypes, precision

STORAGE = {"float32": _arrays.float32, "bfloat16": _arrays.bfloat16, "float16": _arrays.float16}


def _cast(inputs, dtype):
    return [None if a is None else a.astype(dtype) for a in inputs]


@pytest.mark.parametrize("dtype_name", list(STORAGE))
@pytest.mark.parametrize("function", FUNCTIONS)
def test_storage_dtypes_shapes_and_last_states(function, dtype_name):
    """Outputs in Wx's dtype, saved in the compute dtype (float32), gradients in their input's dtype when R, b
    and the states come in other storage dtypes than Wx; the caller's arrays are left unchanged."""
    import flashrnn_core as fc

    dtype = STORAGE[dtype_name]
    B, T, N, D = 3, 5, 2, 4
    Wx, R, b, s0 = make_inputs(function, B, T, N, D, "init", seed=11)
    Wx, R, b, s0 = Wx.astype(dtype), R.astype(np.float32), b.astype(_arrays.bfloat16), s0.astype(np.float16)
    copies = [a.copy() for a in (Wx, R, b, s0)]
    states, saved = VANILLA.forward(problem(function, Wx), Wx, R, b, s0)
    S, n_saved = COUNTS[function][3], COUNTS[function][4]
    assert states.shape == (S, B, T, N, D) and states.dtype == dtype
    assert saved.shape == (B, T, n_saved, N, D) and saved.dtype == np.float32

    result = fc.forward(Wx, R, b, s0, function=function, backend="vanilla")
    assert result.backend == "vanilla" and result.states.dtype == dtype
    np.testing.assert_array_equal(result.states.astype(np.float32), states.astype(np.float32))
    np.testing.assert_array_equal(result.last_states, states[:, :, -1:])

    dlast = np.ones((S, B, 1, N, D), dtype)
    grads = VANILLA.backward(problem(function, Wx), Wx, R, b, s0, states, saved, None, dlast)
    assert [g.dtype for g in grads] == [dtype, np.float32, _arrays.bfloat16, np.float16]
    assert [g.shape for g in grads] == [a.shape for a in (Wx, R, b, s0)]
    api_grads = fc.backward(result, dlast_states=dlast)
    for g, a in zip(grads, api_grads):
        np.testing.assert_array_equal(g.astype(np.float32), a.astype(np.float32))
    no_init = VANILLA.backward(problem(function, Wx), Wx, R, b, None, states, saved, None, dlast)
    assert no_init.dstates_initial.dtype == dtype and no_init.dstates_initial.shape == (S, B, 1, N, D)
    for a, c in zip((Wx, R, b, s0), copies):
        np.testing.assert_array_equal(a, c)


PRECISION = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-2}  # SPEC.md; float32 tighter: no TF32 here
PRECISION_CASES = [(f, d, k) for f in FUNCTIONS for d in PRECISION for k in ("zero", "init")]


@pytest.mark.parametrize("function,dtype_name,kind", PRECISION_CASES,
                         ids=[f"{f}-{d}-B4-T64-N2-D8-{k}" for f, d, k in PRECISION_CASES])
def test_storage_dtype_matches_float64(function, dtype_name, kind):
    """Fresh random inputs, rounded to the storage dtype; the float64 run on the same rounded values is the
    reference. Every state and every gradient within SPEC.md's relative error."""
    dtype, tol = STORAGE[dtype_name], PRECISION[dtype_name]
    B, T, N, D = 4, 64, 2, 8
    low = _cast(make_inputs(function, B, T, N, D, kind, seed=T + len(dtype_name)), dtype)
    ref_in = _cast(low, np.float64)
    S = COUNTS[function][3]
    dstates = np.random.default_rng(2).standard_normal((S, B, T, N, D)).astype(dtype)
    dlast = np.random.default_rng(3).standard_normal((S, B, 1, N, D)).astype(dtype)

    def run(inputs, ds, dl):
        prob = problem(function, inputs[0])
        states, saved = VANILLA.forward(prob, *inputs)
        return states, VANILLA.backward(prob, *inputs, states, saved, ds, dl)

    states, grads = run(low, dstates, dlast)
    ref_states, ref_grads = run(ref_in, dstates.astype(np.float64), dlast.astype(np.float64))
    assert _rel(states, ref_states) < tol, f"states: {_rel(states, ref_states):.2e}"
    for name, g, ref in zip(Grads._fields, grads, ref_grads):
        assert _rel(g, ref) < tol, f"{name}: relative error {_rel(g, ref):.2e}"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_backward_takes_saved_tensors_in_storage_dtype(function):
    """Another backend's forward keeps ``saved`` in Wx's storage dtype: vanilla's backward reads it as well."""
    Wx, R, b, s0 = _cast(make_inputs(function, 2, 16, 2, 8, "init", seed=4), _arrays.bfloat16)
    prob = problem(function, Wx)
    states, saved = VANILLA.forward(prob, Wx, R, b, s0)
    dh = np.ones((1, *states.shape[1:]), _arrays.bfloat16)
    exact = VANILLA.backward(prob, Wx, R, b, s0, states, saved, dh, None)
    stored = VANILLA.backward(prob, Wx, R, b, s0, states, saved.astype(_arrays.bfloat16), dh, None)
    for name, g, ref in zip(Grads._fields, stored, exact):
        assert g.dtype == ref.dtype and _rel(g, ref) < 2e-2, name


# ----------------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name,tol", [pytest.param(d, t, id=d) for d, t in
                                             (("float64", 1e-12), ("float32", 1e-5), ("bfloat16", 1e-2))])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_cupy_equals_numpy(function, dtype_name, tol):
    """The same code on CuPy arrays gives NumPy's states, saved tensors and gradients (up to summation order)."""
    import cupy

    dtype = np.dtype(np.float64) if dtype_name == "float64" else STORAGE[dtype_name]
    host = _cast(make_inputs(function, 3, 17, 2, 16, "init", seed=9), dtype)
    S = COUNTS[function][3]
    dstates = np.random.default_rng(1).standard_normal((S, 3, 17, 2, 16)).astype(dtype)
    dlast = np.random.default_rng(2).standard_normal((S, 3, 1, 2, 16)).astype(dtype)
    results = []
    for xp, to in ((np, np.asarray), (cupy, cupy.asarray)):
        inputs = [to(a) for a in host]
        prob = problem(function, inputs[0], xp)
        states, saved = VANILLA.forward(prob, *inputs)
        grads = VANILLA.backward(prob, *inputs, states, saved, to(dstates), to(dlast))
        assert all(type(a).__module__.split(".")[0] == xp.__name__ for a in (states, saved, *grads))
        results.append([cupy.asnumpy(a) if xp is cupy else a for a in (states, saved, *grads)])
    for name, got, ref in zip(("states", "saved", *Grads._fields), results[1], results[0]):
        assert got.dtype == ref.dtype and _rel(got, ref) < tol, f"{name}: {_rel(got, ref):.2e}"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_inference_forward_same_states_nothing_saved(function):
    """save_for_backward=False: the states of the training forward, bit for bit, no saved tensors, and a
    backward that refuses the result and says how to get one it can take."""
    import flashrnn_core as fc
    from conftest import random_inputs

    inputs = random_inputs(np.random.default_rng(7), function, B=3, T=5, N=2, D=4)
    train = fc.forward(*inputs, function=function, backend="vanilla")
    infer = fc.forward(*inputs, function=function, backend="vanilla", save_for_backward=False)
    assert train.saved is not None and infer.saved is None
    np.testing.assert_array_equal(infer.states, train.states)
    np.testing.assert_array_equal(fc.flashrnn(*inputs, function=function, backend="vanilla")[0], train.states)
    with pytest.raises(ValueError, match="save_for_backward=False"):
        fc.backward(infer, dstates=np.ones_like(infer.states))
