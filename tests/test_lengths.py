"""Variable lengths (``lengths=[B]``): every backend against running each sequence alone, the gradient
convention (upstream gradient past a sequence's end flows into its last valid state; dWx there is zero),
float64 finite differences, and the checks on the argument."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import flashrnn_core as fc
from flashrnn_core import _arrays
from flashrnn_core.cells import CELLS
from conftest import random_inputs, saved_error
from conftest import relative_error as _rel  # (the name these tests use)

CELL_NAMES = sorted(CELLS)
TOL = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}  # SPEC.md, relative


def _inputs(rng, function, B, T, N, D, with_states=True):
    return random_inputs(rng, function, B, T, N, D, with_states)


def _alone(Wx, R, b, s0, function, lengths, ds, backend="vanilla"):
    """Each sequence run by itself over its own length, with the upstream gradient of its padded steps added to
    its last valid step (they are copies of that state): the reference for a variable-length call."""
    out = []
    for i, n in enumerate(lengths):
        s0_i = None if s0 is None else s0[:, i : i + 1]
        res = fc.forward(Wx[i : i + 1, :n], R, b, s0_i, function=function, backend=backend)
        d = ds[:, i : i + 1, :n].copy()
        d[:, 0, -1] += ds[:, i, n:].sum(axis=1)
        out.append((res, fc.backward(res, d)))
    return out


@pytest.mark.parametrize("function", CELL_NAMES)
def test_vanilla_equals_each_sequence_alone(function):
    rng = np.random.default_rng(1)
    B, T, N, D = 4, 9, 2, 5
    Wx, R, b, s0 = _inputs(rng, function, B, T, N, D)
    lengths = [9, 4, 1, 6]
    res = fc.forward(Wx, R, b, s0, function=function, backend="vanilla", lengths=lengths)
    ds = rng.standard_normal(res.states.shape)
    g = fc.backward(res, ds)
    dR, db = np.zeros_like(R), np.zeros_like(b)
    for i, (one, g1) in enumerate(_alone(Wx, R, b, s0, function, lengths, ds)):
        n = lengths[i]
        np.testing.assert_allclose(res.states[:, i, :n], one.states[:, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(res.states[:, i, n:], np.repeat(one.states[:, 0, -1:], T - n, axis=1))
        np.testing.assert_array_equal(res.last_states[:, i], one.last_states[:, 0])
        np.testing.assert_allclose(g.dWx[i, :n], g1.dWx[0], rtol=1e-10, atol=1e-12)
        assert not g.dWx[i, n:].any(), "dWx past a sequence's end must be zero"
        np.testing.assert_allclose(g.dstates_initial[:, i], g1.dstates_initial[:, 0], rtol=1e-10, atol=1e-12)
        dR, db = dR + g1.dR, db + g1.db
    np.testing.assert_allclose(g.dR, dR, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.db, db, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("function", ["elman", "gru", "lstm"])
def test_vanilla_gradients_match_finite_differences(function):
    """The gradient of <dstates, states> with lengths, against central differences in float64. slstm is left
    out: SPEC's slstm gradient holds the stabiliser m fixed, which plain differences do not (test_vanilla
    checks it against differences of the m-frozen function; the test above ties its lengths path to that)."""
    rng = np.random.default_rng(2)
    B, T, N, D = 3, 5, 1, 3
    Wx, R, b, s0 = _inputs(rng, function, B, T, N, D)
    lengths = np.array([2, 5, 1])
    res = fc.forward(Wx, R, b, s0, function=function, backend="vanilla", lengths=lengths)
    ds = rng.standard_normal(res.states.shape)
    g = fc.backward(res, ds)

    def loss(Wx_, R_, s0_):
        return float((fc.forward(Wx_, R_, b, s0_, function=function, backend="vanilla", lengths=lengths).states
                      * ds).sum())

    eps = 1e-6
    for name, arr, grad in (("Wx", Wx, g.dWx), ("R", R, g.dR), ("states", s0, g.dstates_initial)):
        for idx in [tuple(rng.integers(0, s) for s in arr.shape) for _ in range(6)]:
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args = {"Wx": (Wx, R, s0), "R": (Wx, R, s0), "states": (Wx, R, s0)}[name]
            pos = {"Wx": 0, "R": 1, "states": 2}[name]
            a_plus, a_minus = list(args), list(args)
            a_plus[pos], a_minus[pos] = plus, minus
            numeric = (loss(*a_plus) - loss(*a_minus)) / (2 * eps)
            assert abs(numeric - grad[idx]) <= 1e-6 * max(1.0, abs(numeric)), (name, idx, numeric, grad[idx])


def test_full_lengths_are_the_plain_call():
    rng = np.random.default_rng(3)
    Wx, R, b, s0 = _inputs(rng, "lstm", 2, 4, 1, 3)
    plain = fc.forward(Wx, R, b, s0, function="lstm", backend="vanilla")
    full = fc.forward(Wx, R, b, s0, function="lstm", backend="vanilla", lengths=[4, 4])
    assert full.problem.lengths is None  # nothing to mask: the full-length path runs
    np.testing.assert_array_equal(plain.states, full.states)


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        ([3, 0], ValueError, r"lengths: expected every length in 1..T=4, got values from 0 to 3"),
        ([5, 1], ValueError, r"lengths: expected every length in 1..T=4, got values from 1 to 5"),
        ([1, 2, 3], ValueError, r"lengths: expected shape \[2\]"),
        (np.array([[1, 2]]), ValueError, r"lengths: expected shape \[2\]"),
        (np.array([1.0, 2.0]), ValueError, r"lengths: expected an integer dtype, got float64"),
        ([1, 2.5], TypeError, r"lengths: expected integers"),
        ([True, 2], TypeError, r"lengths: expected integers"),
        ("12", TypeError, r"lengths: expected a list, NumPy or CuPy array of integers"),
    ],
)
def test_bad_lengths_are_refused(lengths, error, match):
    rng = np.random.default_rng(4)
    Wx, R, b, _ = _inputs(rng, "gru", 2, 4, 1, 3, with_states=False)
    with pytest.raises(error, match=match):
        fc.forward(Wx, R, b, function="gru", backend="vanilla", lengths=lengths)


def test_flashrnn_takes_lengths():
    rng = np.random.default_rng(5)
    Wx, R, b, _ = _inputs(rng, "elman", 2, 5, 1, 3, with_states=False)
    states, last = fc.flashrnn(Wx, R, b, function="elman", backend="vanilla", lengths=np.array([2, 5]))
    np.testing.assert_array_equal(last[:, 0, 0], states[:, 0, 1])
    np.testing.assert_array_equal(last[:, 1, 0], states[:, 1, 4])


# ---- GPU backends: the same contract, against vanilla on the same (rounded) inputs -------------------------
GPU_DTYPES = {"float32": _arrays.float32, "bfloat16": _arrays.bfloat16, "float16": _arrays.float16}
# (B, T, N, D, lengths): odd B, a sequence of length 1, the full length, T = 1, several batch tiles (B = 9:
# the fused kernels' second tile, one sequence of length 4, stops its loop at step 4 of 12).
GPU_SHAPES = [
    (3, 17, 2, 64, [17, 5, 1]),
    (1, 1, 1, 32, [1]),
    (9, 12, 2, 16, [12, 1, 3, 12, 7, 2, 11, 9, 4]),
    (20, 6, 3, 48, [6, 1, 2, 3, 4, 5] * 3 + [1, 6]),
]


def _seed(*case) -> int:
    """A seed per test case, the same in every process (``hash`` of a string is salted per process)."""
    return zlib.crc32(repr(case).encode())


def _gpu_case(function, dtype, shape, seed):
    import cupy

    B, T, N, D, lengths = shape
    rng = np.random.default_rng(seed)
    host = [None if a is None else a.astype(np.float32).astype(dtype) for a in _inputs(rng, function, B, T, N, D)]
    dev = [None if a is None else cupy.asarray(a) for a in host]
    return host, dev, np.array(lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "cuda_fused"])
@pytest.mark.parametrize("dtype_name", sorted(GPU_DTYPES))
@pytest.mark.parametrize("function", CELL_NAMES)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"B{s[0]}-T{s[1]}-N{s[2]}-D{s[3]}")
def test_gpu_backend_matches_vanilla_with_lengths(backend, dtype_name, function, shape):
    import cupy

    dtype = GPU_DTYPES[dtype_name]
    host, dev, lengths = _gpu_case(function, dtype, shape, seed=_seed(backend, dtype_name, function, shape))
    ref_in = [None if a is None else a.astype(np.float64) for a in host]
    ref = fc.forward(*ref_in, function=function, backend="vanilla", lengths=lengths)
    res = fc.forward(*dev, function=function, backend=backend, lengths=cupy.asarray(lengths))
    assert res.backend == backend
    tol = TOL[dtype_name]
    assert _rel(cupy.asnumpy(res.states), ref.states) <= tol
    states = cupy.asnumpy(res.states)
    for i, n in enumerate(lengths):  # past the end: bitwise copies of the last valid state
        np.testing.assert_array_equal(states[:, i, n:], np.repeat(states[:, i, n - 1 : n], len(states[0, i]) - n, 1))

    rng = np.random.default_rng(7)
    ds = rng.standard_normal(ref.states.shape)
    g_ref = fc.backward(ref, ds)
    g = fc.backward(res, cupy.asarray(ds.astype(np.float32).astype(dtype)))
    for name in ("dWx", "dR", "db", "dstates_initial"):
        assert _rel(cupy.asnumpy(getattr(g, name)), getattr(g_ref, name)) <= 2 * tol, name
    dWx = cupy.asnumpy(g.dWx)
    for i, n in enumerate(lengths):
        assert not np.asarray(dWx[i, n:], np.float32).any(), "dWx past a sequence's end must be zero"


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs (and the cuda backend's scratch) come from NaN-filled memory: whatever the GPU backends leave
    unwritten, or read before writing, shows up as NaN."""
    import cupy

    from flashrnn_core.backends import alternating, fused

    def nan_empty(shape, dtype):
        return cupy.full(shape, np.nan, dtype=dtype)

    monkeypatch.setattr(fused, "_empty", nan_empty)
    monkeypatch.setattr(alternating, "_empty", nan_empty)
    monkeypatch.setattr(alternating, "_scratch", nan_empty)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "cuda_fused"])
@pytest.mark.parametrize("function", CELL_NAMES)
def test_gpu_outputs_fully_written_with_lengths(backend, function, poisoned):
    """From NaN-filled outputs, with an h-only dstates and a dlast (which reaches each sequence's own end
    through the copies): every output finite, saved and the gradients as vanilla's. B = 11: two batch tiles of
    the fused kernels, the second partly padding and ending (at its longest sequence, 5) before T = 7."""
    import cupy

    dtype_name = "bfloat16"
    B, T, N, D = 11, 7, 2, 32
    lengths = [7, 1, 4, 2, 7, 5, 3, 6, 1, 5, 2]
    host, dev, lengths = _gpu_case(function, GPU_DTYPES[dtype_name], (B, T, N, D, lengths),
                                   seed=_seed(backend, function, "poisoned"))
    ref = fc.forward(*[a.astype(np.float64) for a in host], function=function, backend="vanilla", lengths=lengths)
    res = fc.forward(*dev, function=function, backend=backend, lengths=lengths)
    assert res.backend == backend
    tol = TOL[dtype_name]
    assert _rel(cupy.asnumpy(res.states), ref.states) <= tol
    assert saved_error(cupy.asnumpy(res.saved), ref.saved, lengths) <= tol  # (any value past the ends)

    rng = np.random.default_rng(8)
    dh = rng.standard_normal((1, B, T, N, D)).astype(np.float32).astype(host[0].dtype)
    dlast = rng.standard_normal((CELLS[function].states, B, 1, N, D)).astype(np.float32).astype(host[0].dtype)
    g_ref = fc.backward(ref, dh.astype(np.float64), dlast.astype(np.float64))
    g = fc.backward(res, cupy.asarray(dh), cupy.asarray(dlast))
    for name in ("dWx", "dR", "db", "dstates_initial"):
        assert _rel(cupy.asnumpy(getattr(g, name)), getattr(g_ref, name)) <= 2 * tol, name
    dWx = np.asarray(cupy.asnumpy(g.dWx), np.float32)
    for i, n in enumerate(lengths):
        assert not dWx[i, n:].any(), "dWx past a sequence's end must be zero"


@pytest.mark.gpu
@pytest.mark.parametrize("function", ["elman", "lstm"])
def test_cuda_fused_cluster_heads_with_lengths(function):
    """D = 256 runs on a thread-block cluster a head, forward and backward (sm_90: h, and in the backward drs,
    travel between the blocks, so a finished sequence must send its kept h and zero drs). The second batch tile
    ends at step 3 of 6: its blocks stop exchanging h there and only write the kept states."""
    import cupy

    from flashrnn_core.backends import fused

    shape = (10, 6, 1, 256, [6, 1, 3, 6, 2, 5, 4, 1, 3, 2])
    dtype_name = "bfloat16"
    host, dev, lengths = _gpu_case(function, GPU_DTYPES[dtype_name], shape, seed=_seed(function, "cluster"))
    res = fc.forward(*dev, function=function, backend="auto", lengths=lengths)
    if res.backend != "cuda_fused":
        pytest.skip(f"no cluster variant here: {fused.FusedBackend().unsupported(res.problem)}")
    ref = fc.forward(*[a.astype(np.float64) for a in host], function=function, backend="vanilla", lengths=lengths)
    tol = TOL[dtype_name]
    states = cupy.asnumpy(res.states)
    assert _rel(states, ref.states) <= tol
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(states[:, i, n:], np.repeat(states[:, i, n - 1 : n], shape[1] - n, 1))
    assert saved_error(cupy.asnumpy(res.saved), ref.saved, lengths) <= tol
    bw = fused.FusedBackend().bw_params(res.problem)
    assert not isinstance(bw, str) and bw.cluster > 1, bw
    ds = np.random.default_rng(9).standard_normal(ref.states.shape)
    g_ref = fc.backward(ref, ds)
    g = fc.backward(res, cupy.asarray(ds.astype(np.float32).astype(host[0].dtype)))
    for name in ("dWx", "dR", "db", "dstates_initial"):
        assert _rel(cupy.asnumpy(getattr(g, name)), getattr(g_ref, name)) <= 2 * tol, name


@pytest.mark.gpu
def test_cuda_graph_replays_read_each_calls_lengths(poisoned):
    """The cuda backend captures its step loop on the second call of a shape and replays it after: lengths
    reach the kernels through the pointer table rewritten per call, so each call (eager, captured, replayed,
    without lengths, replayed again) runs its own lengths."""
    import cupy

    from flashrnn_core.backends import alternating
    from flashrnn_core.validate import validate

    function, dtype_name = "gru", "bfloat16"
    B, T, N, D = 6, 9, 2, 32
    host, dev, _ = _gpu_case(function, GPU_DTYPES[dtype_name], (B, T, N, D, [T] * B), seed=_seed("graphs"))
    ds = np.random.default_rng(10).standard_normal((CELLS[function].states, B, T, N, D))
    ds_dev = cupy.asarray(ds.astype(np.float32).astype(host[0].dtype))
    backend = alternating.AlternatingBackend()
    tol = TOL[dtype_name]
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for lengths in ([9, 1, 4, 9, 2, 7], [3, 9, 9, 1, 5, 6], [1] * B, None, [2, 8, 1, 9, 9, 3]):
            problem = validate(*dev, function=function, backend="cuda",
                               lengths=None if lengths is None else cupy.asarray(lengths))
            states, saved = backend.forward(problem, *dev)
            g = backend.backward(problem, *dev, states, saved, ds_dev, None)
            stream.synchronize()
            ref = fc.forward(*[a.astype(np.float64) for a in host], function=function, backend="vanilla",
                             lengths=lengths)
            g_ref = fc.backward(ref, ds)
            assert _rel(cupy.asnumpy(states), ref.states) <= tol, lengths
            for name in ("dWx", "dR", "db", "dstates_initial"):
                assert _rel(cupy.asnumpy(getattr(g, name)), getattr(g_ref, name)) <= 2 * tol, (lengths, name)
        assert backend.captured(problem, "fw")[0] and backend.captured(problem, "bw")[0]
