"""The JAX adapter (flashrnn_core.jax): values and gradients against the core's forward/backward, eager and
under jax.jit (buffer_callback, and the pure_callback fallback), vmap, bfloat16, what it refuses, the cost of
the callback, and zero-copy on GPU.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import flashrnn_core as fc  # noqa: E402
import flashrnn_core.jax as fj  # noqa: E402
from flashrnn_core import _arrays, api  # noqa: E402
from flashrnn_core.cells import CELLS, FUNCTIONS  # noqa: E402
from test_cells import adapter_inputs  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 for exact comparisons; float32 stays float32


def make_inputs(function: str, B=2, T=4, N=2, D=3, dtype=np.float64, init=True, seed=0) -> list:
    """(Wx, R, b, states0) as NumPy arrays of ``dtype`` (test_cells.adapter_inputs)."""
    arrays = adapter_inputs(function, B, T, N, D, init, seed)
    return [None if a is None else a.astype(dtype) for a in arrays]


def rel(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert not np.isnan(a).any(), "NaN"
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


def loss_and_reference(function: str, inputs: list, seed: int = 1):
    """A loss on states and last_states with random weights, and the core's value and Grads for it."""
    result = fc.forward(*inputs, function=function)
    rng = np.random.default_rng(seed)
    w, w_last = rng.standard_normal(result.states.shape), rng.standard_normal(result.last_states.shape)
    w, w_last = w.astype(result.states.dtype), w_last.astype(result.states.dtype)

    def loss(Wx, R, b, s0):
        states, last = fj.flashrnn(Wx, R, b, s0, function)
        return (states * w).sum() + (last * w_last).sum()

    value = (result.states * w).sum() + (result.last_states * w_last).sum()
    return loss, value, fc.backward(result, w, w_last)


@pytest.fixture(params=["buffer_callback", "pure_callback"])
def callback(request, monkeypatch):
    """Run traced calls through buffer_callback, or through the pure_callback fallback of older JAX."""
    if request.param == "pure_callback":
        monkeypatch.setattr(fj, "_buffer_callback", None)
    return request.param


def test_framework_imported_only_in_the_adapter():
    """Only flashrnn_core/jax.py imports jax, and there the name is the framework, not the module itself."""
    package = Path(fc.__file__).parent
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            if any(n.split(".")[0] == "jax" for n in names):
                importers.add(path.name)
    assert importers == {"jax.py"}
    assert fj.jax is jax and fj.jnp is jnp


# ---------------------------------------------------------------------------------- values, gradients


@pytest.mark.parametrize("init", [False, True], ids=["zero", "init"])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_eager_values_and_gradients_are_the_core_ones(function, init):
    inputs = make_inputs(function, init=init)
    loss, value, grads = loss_and_reference(function, inputs)
    argnums = (0, 1, 2, 3) if init else (0, 1, 2)
    got_value, got = jax.value_and_grad(loss, argnums=argnums)(*[None if a is None else jnp.asarray(a) for a in inputs])
    assert rel(got_value, value) < 1e-12
    for name, g, ref in zip(fc.Grads._fields, got, grads):
        assert g.dtype == ref.dtype and rel(g, ref) < 1e-12, name


@pytest.mark.parametrize("function", FUNCTIONS)
def test_jit_values_and_gradients_are_the_core_ones(function, callback):
    inputs = make_inputs(function, dtype=np.float32)
    loss, value, grads = loss_and_reference(function, inputs)
    got_value, got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*map(jnp.asarray, inputs))
    assert rel(got_value, value) < 1e-6
    for name, g, ref in zip(fc.Grads._fields, got, grads):
        assert g.dtype == ref.dtype and rel(g, ref) < 1e-6, name


def test_jit_forward_and_no_initial_states(callback):
    inputs = make_inputs("lstm", init=False)
    states, last = jax.jit(lambda W, R, b: fj.flashrnn(W, R, b, function="lstm"))(*map(jnp.asarray, inputs[:3]))
    ref = fc.forward(*inputs, function="lstm")
    assert rel(states, ref.states) < 1e-12 and rel(last, ref.last_states) < 1e-12


def test_vmap_runs_once_per_element():
    """vmap over a leading axis (sequential callbacks) equals a Python loop; eager and jitted."""
    stacked = [np.stack([make_inputs("gru", seed=k)[i] for k in range(3)]) for i in range(4)]
    run = jax.vmap(lambda W, R, b, s: fj.flashrnn(W, R, b, s, "gru")[0])
    for fn in (run, jax.jit(run)):
        out = fn(*map(jnp.asarray, stacked))
        for k in range(3):
            assert rel(out[k], fc.forward(*[a[k] for a in stacked], function="gru").states) < 1e-12


def test_bfloat16_storage(callback):
    """bf16 arrays in and out (gradients in bf16), eager and jitted, within SPEC's 2e-2 of float32 storage."""
    ref_inputs = [jnp.asarray(a) for a in make_inputs("elman", T=8, D=8, dtype=np.float32)]
    low = [a.astype(jnp.bfloat16) for a in ref_inputs]

    def loss(*args):
        return (fj.flashrnn(*args, function="elman")[0].astype(jnp.float32) ** 2).sum()

    ref_value, ref_grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*ref_inputs)
    for fn in (jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))):
        value, grads = fn(*low)
        assert rel(value, ref_value) < 2e-2
        for g, r in zip(grads, ref_grads):
            assert g.dtype == jnp.bfloat16 and rel(g.astype(jnp.float32), r) < 2e-2


def test_primal_runs_the_inference_forward(monkeypatch, callback):
    """Nothing differentiates a plain (or jitted) call: it runs the forward that saves nothing for a backward;
    jax.grad runs the one that saves (and still gets the core's gradients: the tests above)."""
    saves = []
    real = api.forward
    monkeypatch.setattr(api, "forward",
                        lambda *a, **k: saves.append(k.get("save_for_backward", True)) or real(*a, **k))
    inputs = [jnp.asarray(a) for a in make_inputs("elman", dtype=np.float32)]
    states = jax.jit(lambda *x: fj.flashrnn(*x, function="elman")[0])(*inputs)
    jax.grad(lambda W: fj.flashrnn(W, *inputs[1:], function="elman")[0].sum())(inputs[0])
    assert saves == [False, True]
    assert rel(states, fc.forward(*make_inputs("elman", dtype=np.float32), function="elman").states) == 0


def test_eager_inputs_reach_the_core_without_copies(monkeypatch):
    """On CPU the core reads JAX's own buffers (the results come back as copies: JAX owns its buffers)."""
    seen = []
    real = api.forward
    monkeypatch.setattr(api, "forward", lambda *a, **k: seen.append(a) or real(*a, **k))
    inputs = [jnp.asarray(a) for a in make_inputs("lstm")]
    fj.flashrnn(*inputs, function="lstm")
    assert [a.ctypes.data for a in seen[0]] == [x.unsafe_buffer_pointer() for x in inputs]


# -------------------------------------------------------------------------------------- what it refuses


def test_what_does_not_work_fails_clearly():
    """Documented in the module: bad arguments raise the core's errors, forward mode and export JAX's own,
    second derivatives ours."""
    inputs = [jnp.asarray(a) for a in make_inputs("lstm", init=False)[:3]]
    with pytest.raises(ValueError, match="function: expected one of"):
        fj.flashrnn(*inputs, function="tanh")
    with pytest.raises(ValueError, match="R: expected shape"):
        fj.flashrnn(inputs[0], inputs[1][:3], inputs[2], function="lstm")
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda W: fj.flashrnn(W, *inputs[1:], function="lstm")[0], (inputs[0],), (inputs[0],))

    def grad_sum(W):
        return jax.grad(lambda V: fj.flashrnn(V, *inputs[1:], function="lstm")[0].sum())(W).sum()

    for second in (jax.grad(grad_sum), jax.jit(jax.grad(grad_sum))):
        with pytest.raises(NotImplementedError, match="first derivatives only"):
            second(inputs[0])
    with pytest.raises(NotImplementedError, match="serialization of host_callbacks"):
        jax.export.export(jax.jit(lambda W: fj.flashrnn(W, *inputs[1:], function="lstm")[0]))(inputs[0])


# ---------------------------------------------------------------------------------------------- cost


def _median_ms(fn, n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def test_callback_overhead_is_small(capsys):
    """Measures what the module docstring states: a jitted call against the core called directly on NumPy.
    Printed with ``-s``; asserted only loosely (shared CI machines are noisy)."""
    inputs = make_inputs("lstm", B=2, T=16, N=1, D=16, dtype=np.float32, init=False)[:3]
    arrays = [jnp.asarray(a) for a in inputs]
    jitted = jax.jit(lambda *a: fj.flashrnn(*a, function="lstm")[0])
    direct = _median_ms(lambda: fc.forward(*inputs, function="lstm"), 40)
    through_jit = _median_ms(lambda: jitted(*arrays).block_until_ready(), 40)
    with capsys.disabled():
        print(f"\nlstm B2 T16 D16 float32: core on NumPy {direct:.2f} ms, "
              f"jitted through the callback {through_jit:.2f} ms")
    assert through_jit < 2 * direct + 5


# ----------------------------------------------------------------------------------------------- GPU


def jax_gpu():
    """JAX's first GPU, or a skip where this jaxlib has none (the CPU wheel on a GPU machine)."""
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("this jaxlib has no GPU backend (pip install 'jax[cuda12]')")


@pytest.mark.gpu
def test_gpu_eager_hands_over_without_copies(monkeypatch):
    seen = []
    real = api.forward

    def spy(*a, **k):
        result = real(*a, **k)
        seen.append((a, result))
        return result

    monkeypatch.setattr(api, "forward", spy)
    gpu = jax_gpu()
    inputs = [jax.device_put(jnp.asarray(a), gpu) for a in make_inputs("lstm", N=1, D=64, dtype=np.float32)]
    states, _ = fj.flashrnn(*inputs, function="lstm")
    (args, result), = seen
    assert [a.data.ptr for a in args] == [x.unsafe_buffer_pointer() for x in inputs]
    assert states.unsafe_buffer_pointer() == result.states.data.ptr


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, _arrays.bfloat16], ids=["float32", "bfloat16"])
def test_gpu_jit_matches_vanilla(dtype):
    gpu = jax_gpu()
    inputs = make_inputs("lstm", B=4, T=32, N=2, D=32, dtype=np.float32)
    loss, value, grads = loss_and_reference("lstm", inputs)
    args = [jax.device_put(jnp.asarray(a).astype(dtype), gpu) for a in inputs]
    got_value, got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*args)
    tol = 1e-3 if dtype == np.float32 else 2e-2
    assert rel(got_value, value) < tol
    for name, g, ref in zip(fc.Grads._fields, got, grads):
        assert rel(np.asarray(g.astype(jnp.float32)), ref) < tol, name


# ------------------------------------------------------------------------------------ variable lengths

LENGTHS = [6, 2, 1, 4]  # B=4, T=6: full, short, a single step, between; unsorted


def _alone_reference(function: str, inputs: list, lengths: list, ds: np.ndarray):
    """Each sequence run alone through the core over its own length (the upstream gradient of its padded
    steps added to its last valid step): per sequence (states, dWx, dstates_initial), and dR, db summed."""
    from test_lengths import _alone

    per, dR, db = [], 0, 0
    for res, g in _alone(*inputs, function, lengths, ds):
        per.append((res.states[:, 0], g.dWx[0], g.dstates_initial[:, 0]))
        dR, db = dR + g.dR, db + g.db
    return per, dR, db


@pytest.mark.parametrize("function", FUNCTIONS)
def test_lengths_equal_each_sequence_alone(function, callback):
    """Eager and jitted (lengths traced like any array): values and gradients against each sequence alone,
    dWx zero past a sequence's end, last_states at each sequence's end."""
    inputs = make_inputs(function, B=4, T=6)
    ds = np.random.default_rng(2).standard_normal((CELLS[function].states, 4, 6, 2, 3))
    per, dR, db = _alone_reference(function, inputs, LENGTHS, ds)

    def loss(Wx, R, b, s0, lengths):
        states, last = fj.flashrnn(Wx, R, b, s0, function, lengths=lengths)
        return (states * ds).sum(), (states, last)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    for fn in (grad, jax.jit(grad)):
        (dWx, got_dR, got_db, ds0), (states, last) = fn(*map(jnp.asarray, inputs), jnp.asarray(LENGTHS))
        for i, (n, (s_i, dWx_i, ds0_i)) in enumerate(zip(LENGTHS, per)):
            assert rel(states[:, i, :n], s_i) < 1e-12 and rel(last[:, i, 0], s_i[:, -1]) < 1e-12
            assert np.array_equal(states[:, i, n:], np.repeat(states[:, i, n - 1:n], 6 - n, axis=1))
            assert rel(dWx[i, :n], dWx_i) < 1e-10 and not np.asarray(dWx[i, n:]).any()
            assert rel(ds0[:, i], ds0_i) < 1e-10
        assert rel(got_dR, dR) < 1e-10 and rel(got_db, db) < 1e-10


def test_lengths_are_not_differentiable_and_traced():
    """lengths' cotangent is float0 (asked for with allow_int); one jitted function serves other lengths
    (traced, not static); a list works too."""
    inputs = [jnp.asarray(a) for a in make_inputs("gru", B=4, T=6, init=False)[:3]]

    def loss(Wx, lengths):
        return fj.flashrnn(Wx, *inputs[1:], function="gru", lengths=lengths)[0].sum()

    d_lengths = jax.grad(loss, argnums=1, allow_int=True)(inputs[0], jnp.asarray(LENGTHS))
    assert d_lengths.dtype == jax.dtypes.float0 and d_lengths.shape == (4,)
    jitted = jax.jit(lambda W, lengths: fj.flashrnn(W, *inputs[1:], function="gru", lengths=lengths)[0])
    for lengths in (LENGTHS, [1, 6, 3, 3]):
        ref = fc.forward(*map(np.asarray, inputs), function="gru", lengths=lengths).states
        assert rel(jitted(inputs[0], jnp.asarray(lengths)), ref) < 1e-12
        assert rel(fj.flashrnn(*inputs, function="gru", lengths=lengths)[0], ref) < 1e-12
    assert jitted._cache_size() == 1
    with pytest.raises(ValueError, match=r"lengths: expected every length in 1..T=6"):
        fj.flashrnn(*inputs, function="gru", lengths=[7, 1, 1, 1])


@pytest.mark.gpu
def test_gpu_jit_lengths_equal_each_sequence_alone():
    gpu = jax_gpu()
    inputs = make_inputs("lstm", B=4, T=6, N=2, D=32, dtype=np.float32)
    ds = np.random.default_rng(2).standard_normal((2, 4, 6, 2, 32)).astype(np.float32)
    per, dR, _ = _alone_reference("lstm", [a.astype(np.float64) for a in inputs], LENGTHS, ds.astype(np.float64))

    def loss(Wx, R, b, s0, lengths):
        return (fj.flashrnn(Wx, R, b, s0, "lstm", lengths=lengths)[0] * ds).sum()

    args = [jax.device_put(jnp.asarray(a), gpu) for a in (*inputs, np.array(LENGTHS, np.int32))]
    dWx, got_dR = jax.jit(jax.grad(loss, argnums=(0, 1)))(*args)
    for i, (n, (_, dWx_i, _)) in enumerate(zip(LENGTHS, per)):
        assert rel(np.asarray(dWx[i, :n]), dWx_i) < 2e-4 and not np.asarray(dWx[i, n:]).any()
    assert rel(np.asarray(got_dR), dR) < 2e-4  # SPEC's float32 tolerance, doubled for gradients
