"""``cuda`` (alternating cuBLAS matmul + pointwise kernels): forward and backward vs the float64 vanilla
reference, every output fully written from NaN-filled memory, eager calls and CUDA-graph replays on a
non-default stream; and (on a CPU) that every kernel variant compiles for sm_80 and sm_90."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from flashrnn_core import _arrays
from flashrnn_core.backends import alternating
from flashrnn_core.backends.vanilla import VanillaBackend
from flashrnn_core.cells import CELLS
from flashrnn_core.validate import validate
from conftest import assert_states_close, gradient_case_id, random_inputs

DTYPES = {"float32": _arrays.float32, "bfloat16": _arrays.bfloat16, "float16": _arrays.float16}
TOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}  # SPEC.md, relative to a float64 reference

# (B, T, N, D, initial states, upstream gradients): D from 16 to 1024 with 24 and 17 (not multiples of 8 or 16;
# 17 leaves the 16-bit matmul operands 2-byte aligned), odd B, B = 1, T = 1, N > 1; gradients on all states,
# on h only, on the last states, and on both.
SHAPES = [
    (3, 17, 2, 16, False, "all"),
    (1, 1, 1, 24, True, "all+last"),
    (5, 9, 3, 24, True, "h"),
    (3, 4, 2, 17, True, "all"),
    (16, 12, 2, 64, False, "last"),
    (7, 10, 4, 48, True, "all"),
    (4, 6, 1, 128, True, "h+last"),
    (3, 5, 2, 256, False, "all+last"),
    (2, 4, 1, 768, True, "all"),
    (2, 3, 1, 1024, True, "last"),
]


def _inputs(rng, function, dtype, B, T, N, D, with_states, grads):
    """Wx, R, b, states0, dstates, dlast (host arrays rounded to ``dtype``; the gradients may be None)."""
    cell = CELLS[function]
    Wx, R, b, s0 = random_inputs(rng, function, B, T, N, D, with_states)
    rows = cell.states if "all" in grads else 1 if grads.startswith("h") else 0
    dstates = rng.standard_normal((rows, B, T, N, D)) if rows else None
    dlast = rng.standard_normal((cell.states, B, 1, N, D)) if "last" in grads else None
    return [None if a is None else a.astype(np.float32).astype(dtype) for a in (Wx, R, b, s0, dstates, dlast)]


def _rel(out, ref) -> float:
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert not np.isnan(out).any(), "NaN in the output"
    ref_norm = np.linalg.norm(ref)
    if ref_norm == 0:
        return float(np.linalg.norm(out))
    return float(np.linalg.norm(out - ref) / ref_norm)


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs and scratch of the cuda backend come from NaN-filled memory: anything the kernels and matmuls
    do not write (or read before writing) shows up as NaN."""
    import cupy

    def nan_empty(shape, dtype):
        return cupy.full(shape, np.nan, dtype=dtype)

    monkeypatch.setattr(alternating, "_empty", nan_empty)
    monkeypatch.setattr(alternating, "_scratch", nan_empty)


def _reference(function, host, problem64):
    Wx, R, b, s0, dstates, dlast = (None if a is None else a.astype(np.float64) for a in host)
    vanilla = VanillaBackend()
    states, saved = vanilla.forward(problem64, Wx, R, b, s0)
    grads = vanilla.backward(problem64, Wx, R, b, s0, states, saved, dstates, dlast)
    return states, saved, grads


def _check(function, dtype_name, got, ref, what):
    import cupy

    tol = TOL[dtype_name]
    (states, saved, grads), (rstates, rsaved, rgrads) = got, ref
    states, saved = cupy.asnumpy(states), cupy.asnumpy(saved)
    assert states.dtype == DTYPES[dtype_name] and states.shape == rstates.shape
    assert_states_close(function, states, rstates, tol, f"{what}: state")
    err = _rel(saved, rsaved)
    assert err < tol, f"{what}: saved: relative error {err:.2e} >= {tol:g}"
    for name in ("dWx", "dR", "db"):
        out, r = cupy.asnumpy(getattr(grads, name)), getattr(rgrads, name)
        assert out.shape == r.shape, f"{what}: {name} shape {out.shape} != {r.shape}"
        err = _rel(out, r)
        assert err < tol, f"{what}: {name}: relative error {err:.2e} >= {tol:g}"
    dinit = cupy.asnumpy(grads.dstates_initial)
    assert_states_close(function, dinit, rgrads.dstates_initial, tol, f"{what}: dstates_initial")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=gradient_case_id)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
def test_matches_vanilla(function, dtype_name, shape, poisoned):
    """Three calls a case on a non-default stream: eager (the first of a shape), captured, replayed. Each call
    gets fresh NaN-filled outputs, so a replay still writing into an earlier call's arrays would fail."""
    import cupy

    B, T, N, D, with_states, grads = shape
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(zlib.crc32(repr((function, dtype_name, shape)).encode()))
    host = _inputs(rng, function, dtype, B, T, N, D, with_states, grads)
    problem64 = validate(*[None if a is None else a.astype(np.float64) for a in host[:4]], function=function,
                         backend="vanilla")
    ref = _reference(function, host, problem64)

    backend = alternating.AlternatingBackend()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        Wx, R, b, s0, dstates, dlast = (None if a is None else cupy.asarray(a) for a in host)
        problem = validate(Wx, R, b, s0, function=function, backend="cuda")
        assert backend.unsupported(problem) is None
        for what in ("eager", "captured", "replayed"):
            states, saved = backend.forward(problem, Wx, R, b, s0)
            g = backend.backward(problem, Wx, R, b, s0, states, saved, dstates, dlast)
            stream.synchronize()
            _check(function, dtype_name, (states, saved, g), ref, what)
        inference, nothing = backend.forward(problem, Wx, R, b, s0, save=False)  # a null saved pointer
        assert nothing is None
        np.testing.assert_array_equal(cupy.asnumpy(inference), cupy.asnumpy(states))
        for direction in ("fw", "bw"):
            captured, nodes = backend.captured(problem, direction)
            assert captured, f"{direction}: the step loop was not captured"
            assert nodes == 0 or nodes >= 2 * T, f"{direction}: {nodes} graph nodes for {T} steps"


@pytest.mark.gpu
def test_default_stream_and_graphs_off_agree():
    """On the legacy default stream (which cannot capture: the graph is captured on a private stream and
    replayed on it) graph replays give what step-by-step launches give."""
    import cupy

    rng = np.random.default_rng(1)
    host = _inputs(rng, "lstm", _arrays.bfloat16, 5, 20, 3, 32, True, "all")
    Wx, R, b, s0, dstates, dlast = (None if a is None else cupy.asarray(a) for a in host)
    problem = validate(Wx, R, b, s0, function="lstm", backend="cuda")
    outs = {}
    for graphs in (False, True):
        backend = alternating.AlternatingBackend(graphs=graphs)
        for _ in range(3):
            states, saved = backend.forward(problem, Wx, R, b, s0)
            g = backend.backward(problem, Wx, R, b, s0, states, saved, dstates, None)
        outs[graphs] = [cupy.asnumpy(a).astype(np.float64) for a in (states, g.dWx, g.dR, g.db, g.dstates_initial)]
    for name, off, on in zip(("states", "dWx", "dR", "db", "dstates_initial"), outs[False], outs[True]):
        err = _rel(on, off)
        assert err < 1e-6, f"{name}: graph replay differs from step-by-step launches by {err:.2e}"


@pytest.mark.gpu
def test_mixed_parameter_dtypes():
    """R and b in float32 beside bfloat16 Wx: R is cast to Wx's dtype, b used in float32; grads in their dtypes."""
    import cupy

    rng = np.random.default_rng(2)
    host = _inputs(rng, "gru", _arrays.bfloat16, 3, 7, 2, 32, True, "h")
    Wx, _, _, s0, dstates, _ = (None if a is None else cupy.asarray(a) for a in host)
    R = cupy.asarray(host[1].astype(np.float32))
    b = cupy.asarray(host[2].astype(np.float32))
    problem = validate(Wx, R, b, s0, function="gru", backend="cuda")
    backend = alternating.AlternatingBackend()
    states, saved = backend.forward(problem, Wx, R, b, s0)
    g = backend.backward(problem, Wx, R, b, s0, states, saved, dstates, None)
    assert states.dtype == _arrays.bfloat16 and g.dWx.dtype == _arrays.bfloat16
    assert g.dR.dtype == np.float32 and g.db.dtype == np.float32 and g.dstates_initial.dtype == _arrays.bfloat16
    problem64 = validate(*[None if a is None else a.astype(np.float64) for a in host[:4]], function="gru",
                         backend="vanilla")
    _check("gru", "bfloat16", (states, saved, g), _reference("gru", host, problem64), "mixed dtypes")


def test_refuses_numpy_arrays():
    cell = CELLS["lstm"]
    problem = validate(np.zeros((2, 3, cell.gates_w, 1, 16), np.float32), np.zeros((4, 1, 16, 16), np.float32),
                       np.zeros((4, 1, 16), np.float32), function="lstm", backend="vanilla")
    reason = alternating.AlternatingBackend().unsupported(problem)
    assert reason is not None and "CuPy" in reason


def test_kernel_variants_cover_cells_dtypes_directions():
    specs = alternating.AlternatingBackend().kernel_variants()
    labels = {s.label for s in specs}
    assert len(labels) == len(specs) == len(CELLS) * len(DTYPES) * 2
    for function in CELLS:
        for dtype_name in DTYPES:
            for direction in ("fw", "bw"):
                assert f"{function} cuda {direction} {dtype_name}" in labels


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_variant_compiles(arch):
    """No GPU needed: NVRTC compiles every kernel of the backend, without spills."""
    pytest.importorskip("cuda.core")
    from flashrnn_core.runtime import compile_spec

    for spec in alternating.AlternatingBackend().kernel_variants():
        result = compile_spec(spec, arch)
        assert result.cubin[:4] == b"\x7fELF", spec.name()
        res = result.resources
        assert res is not None and res.spill_stores == 0 and res.spill_loads == 0, f"{spec.name()} {arch}: {res}"
