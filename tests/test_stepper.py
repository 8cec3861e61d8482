"""Stepper: stepping T times equals one forward over the same inputs (vanilla on the CPU, cuda_fused on a GPU),
reset and session save/restore, the errors it raises, and on a GPU: one launch a step captured in a CUDA graph,
no allocation, no synchronisation."""

from __future__ import annotations

import time
import zlib

import numpy as np
import pytest

import flashrnn_core as fc
from flashrnn_core import _arrays
from flashrnn_core.backends import AUTO_ORDER, why_not
from flashrnn_core.cells import CELLS
from flashrnn_core.runtime import SLOT, PreparedLaunch
from flashrnn_core.validate import validate_step
from conftest import assert_states_close
from conftest import relative_error as _rel

TOL = {"float32": 1e-4, "bfloat16": 2e-2}  # SPEC.md, relative to a float64 reference
DTYPES = {"float32": _arrays.float32, "bfloat16": _arrays.bfloat16}


def _inputs(function, dtype, B, T, N, D, seed_extra=()):
    """Wx [B, T, Gw, N, D], R, b and initial states (slstm: n >= 1, as a previous run leaves it), in ``dtype``."""
    cell = CELLS[function]
    rng = np.random.default_rng(zlib.crc32(repr((function, str(dtype), B, T, N, D, seed_extra)).encode()))
    Wx = rng.standard_normal((B, T, cell.gates_w, N, D))
    R = rng.standard_normal((cell.gates_r, N, D, D)) / np.sqrt(D)
    b = rng.standard_normal((cell.gates_b, N, D))
    s0 = rng.standard_normal((cell.states, B, 1, N, D))
    if function == "slstm":
        s0[2] = 1.0 + np.abs(s0[2])
    return [a.astype(np.float32).astype(dtype) for a in (Wx, R, b, s0)]


def _run(stepper, Wx, xp=np):
    """Step through every t of Wx [B, T, Gw, N, D]: h of every step [B, T, N, D] (copied: step returns a view)."""
    return xp.stack([stepper.step(xp.ascontiguousarray(Wx[:, t])).copy() for t in range(Wx.shape[1])], axis=1)


# ----------------------------------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("function", list(CELLS))
def test_steps_equal_forward(function, dtype):
    Wx, R, b, s0 = _inputs(function, dtype, 3, 6, 2, 5)
    ref = fc.forward(Wx, R, b, s0, function=function, backend="vanilla")
    stepper = fc.Stepper(R, b, function, 3, states=s0)
    assert stepper.backend == "vanilla" and not stepper.capturable and stepper.dtype == dtype
    h = _run(stepper, Wx)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(h, ref.states[0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(stepper.states, ref.last_states, rtol=rtol, atol=rtol)
    assert stepper.states.dtype == dtype and stepper.states.shape == ref.last_states.shape


def test_from_zero_states_and_five_dim_input():
    Wx, R, b, _ = _inputs("gru", np.float64, 2, 4, 1, 3)
    ref = fc.forward(Wx, R, b, function="gru", backend="vanilla")
    stepper = fc.Stepper(R, b, "gru", 2)
    for t in range(4):
        h = stepper.step(np.ascontiguousarray(Wx[:, t:t + 1]))  # [B, 1, Gw, N, D]
        np.testing.assert_allclose(h, ref.states[0][:, t], rtol=1e-12)
    assert h is stepper.step(np.ascontiguousarray(Wx[:, 0]))  # the same view every step
    assert np.shares_memory(h, stepper.states)


def test_dtype_converts_parameters_once():
    Wx, R, b, _ = _inputs("lstm", np.float64, 2, 3, 2, 4)
    stepper = fc.Stepper(R, b, "lstm", 2, np.float32)
    ref = fc.forward(Wx.astype(np.float32), R, b, function="lstm", backend="vanilla")
    h = _run(stepper, Wx.astype(np.float32))
    assert h.dtype == np.float32
    np.testing.assert_allclose(h, ref.states[0], rtol=1e-6, atol=1e-6)


def test_reset_chosen_rows():
    B, T = 4, 5
    Wx, R, b, s0 = _inputs("slstm", np.float64, B, T, 2, 3)
    stepper = fc.Stepper(R, b, "slstm", B, states=s0)
    _run(stepper, Wx[:, :2])
    before = stepper.get_states()
    stepper.reset([0, 2])
    assert not stepper.states[:, [0, 2]].any()
    np.testing.assert_array_equal(stepper.states[:, [1, 3]], before[:, [1, 3]])
    # After the reset rows 0 and 2 run as fresh sequences, rows 1 and 3 carry on from their states.
    h = _run(stepper, Wx[:, 2:])
    fresh = fc.forward(Wx[:, 2:], R, b, function="slstm", backend="vanilla")
    carried = fc.forward(Wx[:, 2:], R, b, before, function="slstm", backend="vanilla")
    np.testing.assert_allclose(h[[0, 2]], fresh.states[0][[0, 2]], rtol=1e-12)
    np.testing.assert_allclose(h[[1, 3]], carried.states[0][[1, 3]], rtol=1e-12)
    stepper.reset(np.int64(3))
    assert not stepper.states[:, 3].any() and stepper.states[:, 1].any()
    stepper.reset([])
    assert stepper.states[:, 1].any()
    stepper.reset()
    assert not stepper.states.any()


def test_get_and_set_states_round_trip():
    Wx, R, b, _ = _inputs("lstm", np.float32, 3, 6, 2, 4)
    stepper = fc.Stepper(R, b, "lstm", 3)
    _run(stepper, Wx[:, :3])
    kept = stepper.get_states()
    assert kept.shape == (2, 3, 1, 2, 4) and not np.shares_memory(kept, stepper.states)
    first = _run(stepper, Wx[:, 3:])
    assert not np.array_equal(kept, stepper.states)  # the copy did not follow the steps
    stepper.set_states(kept)
    np.testing.assert_array_equal(stepper.states, kept)
    np.testing.assert_array_equal(_run(stepper, Wx[:, 3:]), first)
    stepper.set_states(kept.astype(np.float64))  # any accepted dtype, converted into the buffer
    assert stepper.states.dtype == np.float32


def test_construction_errors():
    _, R, b, s0 = _inputs("lstm", np.float32, 3, 1, 2, 4)
    with pytest.raises(ValueError, match="function"):
        fc.Stepper(R, b, "rnn", 3)
    with pytest.raises(ValueError, match="batch: expected a positive integer, got 0"):
        fc.Stepper(R, b, "lstm", 0)
    with pytest.raises(TypeError, match="batch"):
        fc.Stepper(R, b, "lstm", 2.0)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        fc.Stepper(R, b, "lstm", 3, np.int32)
    with pytest.raises(TypeError, match="R: expected a NumPy or CuPy array"):
        fc.Stepper(R.tolist(), b, "lstm", 3)
    with pytest.raises(ValueError, match=r"R: expected 4 dimensions"):
        fc.Stepper(R[0], b, "lstm", 3)
    with pytest.raises(ValueError, match=r"R: expected shape \[4, 2, 4, 4\]"):
        fc.Stepper(R[:3], b, "lstm", 3)
    with pytest.raises(ValueError, match=r"b: expected shape \[4, 2, 4\]"):
        fc.Stepper(R, b[:, :1], "lstm", 3)
    with pytest.raises(ValueError, match=r"states: expected shape \[2, 4, 1, 2, 4\]"):
        fc.Stepper(R, b, "lstm", 4, states=s0)  # batch mismatch with the states
    with pytest.raises(ValueError, match="cuda_fused"):
        fc.Stepper(R, b, "lstm", 3, backend="cuda_fused")  # NumPy arrays
    with pytest.raises(ValueError, match="dtype"):
        fc.Stepper(R, b, "lstm", 3, np.float64, backend="cuda")


def test_step_and_state_errors():
    Wx, R, b, s0 = _inputs("elman", np.float32, 3, 2, 2, 4)
    stepper = fc.Stepper(R, b, "elman", 3)
    x = np.ascontiguousarray(Wx[:, 0])
    with pytest.raises(TypeError, match="Wx_t: expected a NumPy or CuPy array"):
        stepper.step(x.tolist())
    with pytest.raises(ValueError, match=r"Wx_t: expected shape \[3, 1, 2, 4\]"):
        stepper.step(np.zeros((4, 1, 2, 4), np.float32))  # batch mismatch
    with pytest.raises(ValueError, match=r"Wx_t: expected shape"):
        stepper.step(Wx)  # the whole sequence
    with pytest.raises(ValueError, match="Wx_t: expected dtype float32"):
        stepper.step(x.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        stepper.step(Wx[:, 1])
    with pytest.raises(ValueError, match=r"states: expected shape \[1, 3, 1, 2, 4\]"):
        stepper.set_states(s0[:, :2])
    with pytest.raises(TypeError, match="states"):
        stepper.set_states(s0.tolist())
    for bad, err in ((3, ValueError), ([-1], ValueError), ([0, 5], ValueError), ([0.5], TypeError),
                     ([True], TypeError), ("0", TypeError)):
        with pytest.raises(err, match="indices"):
            stepper.reset(bad)
    assert not stepper.states.any()  # nothing half-done: no step ran, nothing was reset


def test_prepared_launch_checks_arguments_without_a_gpu():
    class Kernel:  # what the runtime reads of a loaded kernel before launching
        num_arguments = 3

    with pytest.raises(TypeError, match="takes 3 arguments, got 2"):
        PreparedLaunch(Kernel(), 1, 32, SLOT, np.int32(1))
    prepared = PreparedLaunch(Kernel(), 1, 32, SLOT, np.int32(7), None)
    assert prepared.slots == (0,) and prepared.args[1] == np.int32(7) and prepared.args[2] == 0
    with pytest.raises(TypeError, match="1 SLOT arguments, got 2"):
        prepared(1, 2)
    with pytest.raises(TypeError, match="Python number"):
        PreparedLaunch(Kernel(), 1, 32, SLOT, 7, None)


# ----------------------------------------------------------------------------------------------------- GPU
# (B, N, D): B = 1, odd B, N > 1, D with an odd number of k-tiles, the 12x64 reference heads, two batch tiles;
# D = 128 runs lstm/slstm (and float32 gru) on a thread-block cluster per head (sm_90), where every block reads
# all of h_{-1} but writes only its slice (the in-place argument's cluster case).
GPU_SHAPES = [(1, 1, 64), (3, 2, 32), (5, 3, 48), (16, 12, 64), (9, 2, 16), (3, 2, 128)]


def _stepped_reference(function, Wx, R, b, s0, dtype):
    """float64 vanilla stepping whose states are rounded to ``dtype`` after every step, as the stepper's
    buffer stores them: h of every step [B, T, N, D] and the last states."""
    up = [a.astype(np.float64) for a in (Wx, R, b, s0)]
    s, hs = up[3], []
    for t in range(Wx.shape[1]):
        out = fc.forward(up[0][:, t:t + 1], up[1], up[2], s, function=function, backend="vanilla")
        s = out.last_states.astype(dtype).astype(np.float64)
        hs.append(s[0, :, 0])
    return np.stack(hs, axis=1), s


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "B{}-N{}-D{}".format(*s))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
def test_fused_steps_equal_fused_forward(function, dtype_name, shape):
    import cupy

    B, N, D = shape
    T = 6
    dtype = DTYPES[dtype_name]
    host = _inputs(function, dtype, B, T, N, D)
    Wx, R, b, s0 = (cupy.asarray(a) for a in host)
    reason = why_not("cuda_fused", validate_step(R, b, s0, function=function, batch=B))
    if reason is not None:  # a cluster head on a GPU older than sm_90
        assert "sm_" in reason, reason
        pytest.skip(reason)
    stepper = fc.Stepper(R, b, function, B, states=s0)
    assert stepper.backend == "cuda_fused" and stepper.capturable
    h = cupy.asnumpy(_run(stepper, Wx, cupy))
    last = cupy.asnumpy(stepper.states)
    forward = fc.forward(Wx, R, b, s0, function=function, backend="cuda_fused")
    ref_h, ref_last = _stepped_reference(function, *host, dtype)
    tol = TOL[dtype_name]
    assert _rel(h, ref_h) < tol
    assert_states_close(function, last, ref_last, tol, "last state")
    if dtype_name == "float32":
        # float32 states lose nothing between launches: stepping is the forward kernel, step by step.
        assert _rel(h, cupy.asnumpy(forward.states[0])) < 1e-6
        assert _rel(last, cupy.asnumpy(forward.last_states)) < 1e-6
    else:
        # bf16 rounds c (and slstm's n, m) at every step, which the forward keeps in float32 registers.
        assert _rel(h, cupy.asnumpy(forward.states[0])) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("function", list(CELLS))
def test_cuda_graph_replays_100_steps(function):
    import cupy

    B, T, N, D = 5, 100, 2, 64
    host = _inputs(function, _arrays.bfloat16, B, T, N, D)
    Wx, R, b, s0 = (cupy.asarray(a) for a in host)
    stepper = fc.Stepper(R, b, function, B, states=s0)
    x = cupy.empty(stepper._input_shapes[0], stepper.dtype)  # the graph's fixed input buffer
    out = cupy.empty((B, T, N, D), stepper.dtype)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x[...] = Wx[:, 0]
        stepper.step(x)  # an eager step first (any lazy setup happens outside the capture)
        stepper.set_states(s0)
        stream.begin_capture()
        stepper.step(x)
        graph = stream.end_capture()
        for t in range(T):
            x[...] = Wx[:, t]
            graph.launch(stream)
            out[:, t] = stepper.states[0, :, 0]
        stream.synchronize()
    forward = fc.forward(Wx, R, b, s0, function=function, backend="cuda_fused")
    ref_h, _ = _stepped_reference(function, *host, _arrays.bfloat16)
    h = cupy.asnumpy(out)
    assert _rel(h, ref_h) < TOL["bfloat16"]
    assert _rel(h, cupy.asnumpy(forward.states[0])) < TOL["bfloat16"]


@pytest.mark.gpu
def test_step_allocates_nothing_and_never_synchronises():
    import cupy

    from flashrnn_core.runtime.timing import spin

    host = _inputs("lstm", _arrays.bfloat16, 4, 12, 12, 64)
    Wx, R, b, _ = (cupy.asarray(a) for a in host)
    inputs = [cupy.ascontiguousarray(Wx[:, t]) for t in range(Wx.shape[1])]
    stepper = fc.Stepper(R, b, "lstm", 4)
    stepper.step(inputs[0])
    cupy.cuda.Device().synchronize()
    pool = cupy.get_default_memory_pool()
    used, total = pool.used_bytes(), pool.total_bytes()
    stream = cupy.cuda.get_current_stream()
    spin(300.0)  # the GPU is busy for 0.3 s: a step that waited for it would take that long
    start = time.perf_counter()
    for x in inputs[1:11]:
        stepper.step(x)
    host_s = time.perf_counter() - start
    assert not stream.done, "the steps waited for the device"
    assert host_s < 0.1
    assert pool.used_bytes() == used and pool.total_bytes() == total
    stream.synchronize()


@pytest.mark.gpu
def test_shapes_fused_cannot_take_fall_back_or_are_refused():
    import cupy

    B, T, N, D = 3, 4, 2, 40  # D not a multiple of 16
    host = _inputs("lstm", _arrays.bfloat16, B, T, N, D)
    Wx, R, b, s0 = (cupy.asarray(a) for a in host)
    with pytest.raises(ValueError, match="cuda_fused.*D=40"):
        fc.Stepper(R, b, "lstm", B, backend="cuda_fused")
    problem = validate_step(R, b, s0, function="lstm", batch=B)
    expected = next(name for name in AUTO_ORDER if why_not(name, problem) is None)
    stepper = fc.Stepper(R, b, "lstm", B, states=s0)
    assert stepper.backend == expected != "cuda_fused" and not stepper.capturable
    h = cupy.asnumpy(_run(stepper, Wx, cupy))
    ref_h, _ = _stepped_reference("lstm", *host, _arrays.bfloat16)
    assert _rel(h, ref_h) < TOL["bfloat16"]
