"""The validation table: every bad input is refused with the right error naming the argument, before any work,
and the caller's arrays are left exactly as they were. Strided and negative-stride views are handled."""

from __future__ import annotations

import numpy as np
import pytest

import flashrnn_core as fc
from flashrnn_core import _arrays
from flashrnn_core.cells import CELLS

B, T, N, D = 2, 3, 2, 4


def make_inputs(function="lstm", dtype=np.float32, seed=0, with_states=True):
    cell = CELLS[function]
    rng = np.random.default_rng(seed)
    Wx = rng.standard_normal((B, T, cell.gates_w, N, D)).astype(dtype)
    R = (rng.standard_normal((cell.gates_r, N, D, D)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal((cell.gates_b, N, D)).astype(dtype)
    s0 = rng.standard_normal((cell.states, B, 1, N, D)).astype(dtype) if with_states else None
    if function == "slstm" and s0 is not None:
        s0[2] = np.abs(s0[2]) + 1.0  # the normalizer n is positive
    return dict(Wx=Wx, R=R, b=b, states=s0)


def replace(function="lstm", **changes):
    args = make_inputs(function)
    args.update(changes)
    return args


def reshaped(name, shape, function="lstm"):
    return replace(function, **{name: np.zeros(shape, np.float32) + 0.5})


# (id, kwargs for forward, function, backend, expected exception, words the message must contain)
FORWARD_CASES = [
    ("Wx-list", replace(Wx=[[1.0]]), "lstm", "auto", TypeError, ["Wx", "array"]),
    ("R-None", replace(R=None), "lstm", "auto", TypeError, ["R", "None"]),
    ("b-float", replace(b=1.5), "lstm", "auto", TypeError, ["b", "float"]),
    ("states-list", replace(states=[0.0]), "lstm", "auto", TypeError, ["states"]),
    ("function-unknown", replace(), "rnn", "auto", ValueError, ["function", "'rnn'", "lstm"]),
    ("function-int", replace(), 4, "auto", ValueError, ["function", "4"]),
    ("backend-unknown", replace(), "lstm", "triton", ValueError, ["backend", "'triton'", "cuda_fused"]),
    ("Wx-ndim4", reshaped("Wx", (B, T, 4, N * D)), "lstm", "auto", ValueError, ["Wx", "5 dimensions"]),
    ("R-ndim3", reshaped("R", (4, N, D * D)), "lstm", "auto", ValueError, ["R", "[4, 2, 4, 4]", "[4, 2, 16]"]),
    ("b-ndim2", reshaped("b", (4, N * D)), "lstm", "auto", ValueError, ["b", "[4, 2, 4]"]),
    ("states-ndim4", reshaped("states", (2, B, N, D)), "lstm", "auto", ValueError, ["states", "[2, 2, 1, 2, 4]"]),
    ("Wx-gates", reshaped("Wx", (B, T, 3, N, D)), "lstm", "auto", ValueError, ["Wx", "Gw=4", "[2, 3, 3, 2, 4]"]),
    ("R-gates", reshaped("R", (3, N, D, D)), "lstm", "auto", ValueError, ["R", "[4, 2, 4, 4]", "[3, 2, 4, 4]"]),
    ("b-gates", reshaped("b", (3, N, D)), "lstm", "auto", ValueError, ["b", "[4, 2, 4]", "[3, 2, 4]"]),
    ("gru-b-3rows", dict(make_inputs("gru"), b=np.zeros((3, N, D), np.float32)), "gru", "auto", ValueError,
     ["b", "[4, 2, 4]"]),
    ("gru-R-4gates", dict(make_inputs("gru"), R=np.zeros((4, N, D, D), np.float32)), "gru", "auto", ValueError,
     ["R", "[3, 2, 4, 4]"]),
    ("states-S", reshaped("states", (1, B, 1, N, D)), "lstm", "auto", ValueError, ["states", "S=2"]),
    ("slstm-states-S2", dict(make_inputs("slstm"), states=np.zeros((2, B, 1, N, D), np.float32)), "slstm", "auto",
     ValueError, ["states", "S=4"]),
    ("R-N", reshaped("R", (4, N + 1, D, D)), "lstm", "auto", ValueError, ["R", "N=2"]),
    ("b-N", reshaped("b", (4, N + 1, D)), "lstm", "auto", ValueError, ["b", "[4, 2, 4]", "[4, 3, 4]"]),
    ("R-Dout", reshaped("R", (4, N, D + 1, D)), "lstm", "auto", ValueError, ["R", "D=4"]),
    ("R-not-square", reshaped("R", (4, N, D, D + 2)), "lstm", "auto", ValueError, ["R", "[4, 2, 4, 6]"]),
    ("b-D", reshaped("b", (4, N, D + 1)), "lstm", "auto", ValueError, ["b", "[4, 2, 5]"]),
    ("states-B", reshaped("states", (2, B + 1, 1, N, D)), "lstm", "auto", ValueError, ["states", "[2, 3, 1, 2, 4]"]),
    ("states-T2", reshaped("states", (2, B, 2, N, D)), "lstm", "auto", ValueError, ["states", "[2, 2, 2, 2, 4]"]),
    ("T-0", reshaped("Wx", (B, 0, 4, N, D)), "lstm", "auto", ValueError, ["Wx", "T >= 1"]),
    ("B-0", reshaped("Wx", (0, T, 4, N, D)), "lstm", "auto", ValueError, ["Wx", "B >= 1"]),
    ("D-0", reshaped("Wx", (B, T, 4, N, 0)), "lstm", "auto", ValueError, ["Wx", "D >= 1"]),
    ("Wx-int32", replace(Wx=np.ones((B, T, 4, N, D), np.int32)), "lstm", "auto", ValueError, ["Wx", "int32"]),
    ("R-complex", replace(R=np.ones((4, N, D, D), np.complex64)), "lstm", "auto", ValueError, ["R", "complex64"]),
    ("b-int64", replace(b=np.ones((4, N, D), np.int64)), "lstm", "auto", ValueError, ["b", "int64"]),
    ("states-bool", replace(states=np.ones((2, B, 1, N, D), bool)), "lstm", "auto", ValueError, ["states", "bool"]),
    ("float64-on-cuda", make_inputs(dtype=np.float64), "lstm", "cuda", ValueError, ["float64"]),
    ("float64-on-cuda_fused", make_inputs(dtype=np.float64), "lstm", "cuda_fused", ValueError, ["float64"]),
    ("numpy-on-cuda", make_inputs(), "lstm", "cuda", ValueError, ["backend", "'cuda'", "vanilla"]),
    ("numpy-on-cuda_fused", make_inputs(), "lstm", "cuda_fused", ValueError, ["backend", "'cuda_fused'"]),
]


def snapshot(args):
    return {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in args.items()}


def assert_unchanged(before, after):
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            assert after[k].dtype == v.dtype and np.array_equal(after[k], v, equal_nan=True), f"{k} was modified"


@pytest.mark.parametrize(
    "args, function, backend, exc, words", [c[1:] for c in FORWARD_CASES], ids=[c[0] for c in FORWARD_CASES]
)
def test_forward_refuses(args, function, backend, exc, words):
    before = snapshot(args)
    with pytest.raises(exc) as info:
        fc.forward(args["Wx"], args["R"], args["b"], args["states"], function=function, backend=backend)
    for word in words:
        assert word in str(info.value), f"message {str(info.value)!r} lacks {word!r}"
    assert_unchanged(before, args)


def test_flashrnn_refuses_like_forward():
    args = reshaped("R", (4, N, D, D + 2))
    with pytest.raises(ValueError, match="R: expected shape"):
        fc.flashrnn(args["Wx"], args["R"], args["b"], args["states"], function="lstm", backend="vanilla")


@pytest.fixture
def result():
    args = make_inputs()
    return fc.forward(args["Wx"], args["R"], args["b"], args["states"], function="lstm", backend="vanilla")


BACKWARD_CASES = [
    ("no-upstream", dict(), ValueError, ["dstates", "neither"]),
    ("dstates-S3", dict(dstates=np.ones((3, B, T, N, D), np.float32)), ValueError, ["dstates", "S=2"]),
    ("dstates-T", dict(dstates=np.ones((2, B, T + 1, N, D), np.float32)), ValueError, ["dstates", "[2, 2, 4, 2, 4]"]),
    ("dlast-T2", dict(dlast_states=np.ones((2, B, 2, N, D), np.float32)), ValueError, ["dlast_states"]),
    ("dstates-int", dict(dstates=np.ones((2, B, T, N, D), np.int32)), ValueError, ["dstates", "int32"]),
    ("dstates-list", dict(dstates=[1.0]), TypeError, ["dstates"]),
]


@pytest.mark.parametrize("grads, exc, words", [c[1:] for c in BACKWARD_CASES], ids=[c[0] for c in BACKWARD_CASES])
def test_backward_refuses(result, grads, exc, words):
    before = snapshot(grads)
    with pytest.raises(exc) as info:
        fc.backward(result, **grads)
    for word in words:
        assert word in str(info.value), f"message {str(info.value)!r} lacks {word!r}"
    assert_unchanged(before, grads)


def test_backward_refuses_non_result():
    with pytest.raises(TypeError, match="result"):
        fc.backward((np.zeros(1), np.zeros(1)), dstates=np.zeros(1))


def test_table_is_large_enough():
    assert len(FORWARD_CASES) + len(BACKWARD_CASES) >= 25


def test_nan_propagates_and_is_not_an_error():
    args = make_inputs()
    args["Wx"][0, 1, 0, 0, 0] = np.nan
    states, _ = fc.flashrnn(**args, function="lstm", backend="vanilla")
    assert np.isnan(states[0, 0, 1:, 0, 0]).all()  # from the poisoned step on, that head's h is NaN
    assert not np.isnan(states[:, 1]).any()  # the other sequence is untouched


@pytest.mark.parametrize("view", ["transposed", "negative-stride", "every-other"])
def test_strided_views_give_the_contiguous_result(view):
    args = make_inputs()
    Wx = args["Wx"]
    if view == "transposed":  # same values, a non-contiguous layout
        strided = np.ascontiguousarray(Wx.transpose(1, 0, 2, 3, 4)).transpose(1, 0, 2, 3, 4)
    elif view == "negative-stride":
        strided = np.ascontiguousarray(Wx[:, ::-1])[:, ::-1]
    else:
        strided = np.repeat(Wx, 2, axis=1)[:, ::2]
    assert not strided.flags.c_contiguous and np.array_equal(strided, Wx)
    want, _ = fc.flashrnn(Wx, args["R"], args["b"], args["states"], function="lstm", backend="vanilla")
    got, _ = fc.flashrnn(strided, args["R"], args["b"], args["states"], function="lstm", backend="vanilla")
    np.testing.assert_array_equal(got, want)


def test_problem_describes_the_call():
    args = make_inputs(dtype=_arrays.bfloat16)
    from flashrnn_core.validate import validate

    p = validate(args["Wx"], args["R"], args["b"], args["states"], function="lstm")
    assert (p.B, p.T, p.N, p.D, p.dtype, p.device) == (B, T, N, D, _arrays.bfloat16, None)
    assert p.label() == "lstm-bfloat16-B2-T3-N2-D4"


@pytest.mark.gpu
def test_mixed_numpy_and_cupy_refused():
    import cupy

    args = make_inputs()
    with pytest.raises(ValueError, match="R: expected an array in host memory"):
        fc.forward(args["Wx"], cupy.asarray(args["R"]), args["b"], None, function="lstm")


@pytest.mark.gpu
def test_head_dimension_a_backend_cannot_take_names_one_that_can():
    import cupy

    from flashrnn_core.backends import why_not
    from flashrnn_core.validate import validate

    args = {k: cupy.asarray(v) for k, v in make_inputs().items()}
    args["Wx"] = cupy.zeros((B, T, 4, 1, 2000), cupy.float32) + 0.1
    args["R"] = cupy.zeros((4, 1, 2000, 2000), cupy.float32)
    args["b"] = cupy.zeros((4, 1, 2000), cupy.float32)
    args["states"] = None
    problem = validate(**args, function="lstm", backend="cuda_fused")
    assert why_not("cuda_fused", problem) is not None
    with pytest.raises(ValueError, match=r"'cuda_fused' cannot run .*; backend '(cuda|vanilla)' \(or 'auto'\) can"):
        fc.forward(**args, function="lstm", backend="cuda_fused")
