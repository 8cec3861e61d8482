"""The PyTorch adapter (flashrnn_core.torch): zero-copy hand-over, autograd against the core's backward,
gradcheck, torch.compile, the modules and from_torch against torch.nn.LSTM/GRU/RNN.

CPU tests run on the vanilla backend; ``gpu`` tests check CUDA pointers, stream ordering and cuDNN equivalence.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flashrnn_core as fc  # noqa: E402
import flashrnn_core.torch as ft  # noqa: E402
from flashrnn_core import _arrays, api  # noqa: E402
from flashrnn_core.cells import CELLS, FUNCTIONS  # noqa: E402
from test_cells import adapter_inputs, random_states  # noqa: E402

torch.manual_seed(0)


def make_inputs(function: str, B=2, T=4, N=2, D=3, dtype=torch.float64, init=True, seed=0, device="cpu"):
    """(Wx, R, b, states0) tensors of ``dtype`` on ``device`` (test_cells.adapter_inputs)."""
    arrays = adapter_inputs(function, B, T, N, D, init, seed)
    return [None if a is None else torch.tensor(a, dtype=dtype, device=device) for a in arrays]


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(a).any(), "NaN"
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def ptr(a) -> int:
    """Data pointer of a NumPy or CuPy array."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


@pytest.fixture
def spy(monkeypatch):
    """Records (arguments, result, CuPy's current stream or None) of every api.forward call (the adapter calls
    it through the module)."""
    calls = []
    real = api.forward

    def forward(*args, **kwargs):
        result = real(*args, **kwargs)
        stream = None
        if _arrays.is_cupy_array(args[0]):
            import cupy

            stream = cupy.cuda.get_current_stream().ptr
        calls.append((args, result, stream))
        return result

    monkeypatch.setattr(api, "forward", forward)
    return calls


# --------------------------------------------------------------------------------------- hand-over


def test_framework_imported_only_in_the_adapter():
    """Only flashrnn_core/torch.py imports torch, and there the name is the framework, not the module itself."""
    package = Path(fc.__file__).parent
    importers = {p.name for p in package.rglob("*.py") if "torch" in _imported_modules(p)}
    assert importers == {"torch.py"}
    assert ft.torch is torch and ft.F is torch.nn.functional


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a source file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_cpu_tensors_and_arrays_share_memory(dtype):
    t = torch.randn(3, 4, 5).to(dtype)
    a = ft.to_array(t)
    assert ptr(a) == t.data_ptr() and a.shape == (3, 4, 5)
    assert np.dtype(a.dtype) == {torch.bfloat16: _arrays.bfloat16}.get(dtype, np.dtype(str(dtype)[6:]))
    back = ft.to_tensor(a)
    assert back.data_ptr() == t.data_ptr() and back.dtype == dtype
    np.testing.assert_array_equal(np.asarray(a, np.float64), t.double().numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_flashrnn_hands_over_without_copies(spy, dtype):
    Wx, R, b, s0 = (a.to(dtype) for a in make_inputs("lstm"))
    states, last = ft.flashrnn(Wx, R, b, s0, "lstm", "vanilla")
    (args, result, _), = spy
    assert [ptr(a) for a in args] == [t.data_ptr() for t in (Wx, R, b, s0)]
    assert states.data_ptr() == ptr(result.states) and states.dtype == dtype
    assert last.data_ptr() == states[:, :, -1:].data_ptr()


@pytest.mark.parametrize("mode", ["no_grad", "constants", "grad"])
def test_inference_op_where_no_gradient_is_wanted(spy, mode):
    """Under no_grad or on inputs that need no gradient, flashrnn runs the forward that saves nothing for a
    backward (same states); with a leaf that needs one, the training forward."""
    inputs = make_inputs("gru", dtype=torch.float32)
    if mode == "grad":
        inputs[1].requires_grad_()
    if mode == "no_grad":
        inputs[0].requires_grad_()
        with torch.no_grad():
            states, _ = ft.flashrnn(*inputs, function="gru")
    else:
        states, _ = ft.flashrnn(*inputs, function="gru")
    (_, result, _), = spy
    assert (result.saved is None) == (mode != "grad")
    assert states.requires_grad == (mode == "grad")
    ref = fc.forward(*[a.detach().numpy() for a in inputs], function="gru")
    assert rel(states.detach(), torch.from_numpy(ref.states)) == 0


# ------------------------------------------------------------------------------------ autograd


@pytest.mark.parametrize("init", [False, True], ids=["zero", "init"])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_values_and_gradients_are_the_core_ones(function, init):
    """Forward and autograd against flashrnn_core.forward/backward on the same NumPy arrays (float32)."""
    inputs = make_inputs(function, dtype=torch.float32, init=init)
    leaves = [None if a is None else a.requires_grad_() for a in inputs]
    states, last = ft.flashrnn(*leaves, function=function)
    w, w_last = torch.randn_like(states), torch.randn_like(last)
    ((states * w).sum() + (last * w_last).sum()).backward()

    result = fc.forward(*[None if a is None else a.detach().numpy() for a in inputs], function=function)
    grads = fc.backward(result, w.numpy(), w_last.numpy())
    assert rel(states, torch.from_numpy(result.states)) == 0
    for name, leaf, ref in zip(fc.Grads._fields, leaves, grads):
        if leaf is not None:
            assert rel(leaf.grad, torch.from_numpy(ref)) < 1e-6, name
            assert leaf.grad.dtype == leaf.dtype


@pytest.mark.parametrize("function", FUNCTIONS)
def test_gradcheck_float64(function):
    """Exact derivatives of a loss on h (for slstm the SPEC's gradients are exact on h only)."""
    inputs = [a.requires_grad_() for a in make_inputs(function, B=2, T=3, N=2, D=2)]

    def run(*args):
        states, last = ft.flashrnn(*args, function=function)
        return (states if function != "slstm" else states[:1]), last[:1]

    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_bfloat16_storage_on_cpu():
    """bf16 tensors in and out (gradients in bf16), within SPEC's 2e-2 of float32 storage."""
    ref = [a.float().requires_grad_() for a in make_inputs("gru", T=8, D=8)]
    low = [a.detach().bfloat16().requires_grad_() for a in ref]
    outs = []
    for leaves in (ref, low):
        states, _ = ft.flashrnn(*leaves, function="gru")
        states.float().pow(2).sum().backward()
        outs.append(states)
    assert outs[1].dtype == torch.bfloat16 and rel(outs[1], outs[0]) < 2e-2
    for lo, hi in zip(low, ref):
        assert lo.grad.dtype == torch.bfloat16 and rel(lo.grad, hi.grad) < 2e-2


def test_errors_are_the_core_ones():
    Wx, R, b, _ = make_inputs("lstm")
    with pytest.raises(ValueError, match="function"):
        ft.flashrnn(Wx, R, b, function="tanh")
    with pytest.raises(ValueError, match="R: expected shape"):
        ft.flashrnn(Wx, R[:3], b, function="lstm")


# ------------------------------------------------------------------------------------ torch.library


def test_opcheck_forward_and_backward_ops():
    """Fake implementations (shapes, dtypes, strides), schemas and the autograd registration agree with the
    real ops. The AOT-dispatch check is left to the torch.compile test below (it costs ~7 s more here)."""
    Wx, R, b, s0 = make_inputs("slstm", dtype=torch.float32)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.flashrnn_core.forward.default, (Wx.requires_grad_(), R, b, s0, "slstm", "auto"),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.flashrnn_core.forward_inference.default, (Wx.detach(), R, b, s0, "slstm", "auto"),
                          test_utils=("test_schema", "test_faketensor"))
    states, saved = torch.ops.flashrnn_core.forward(Wx.detach(), R, b, s0, "slstm", "auto")
    torch.library.opcheck(torch.ops.flashrnn_core.backward.default,
                          (Wx.detach(), R, b, s0, states, saved, torch.ones_like(states), "slstm", "auto"),
                          test_utils=checks)


def test_torch_compile_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) traces the op (no graph break) and its backward: same values, same grads.
    aot_eager: the same tracing as inductor, without its C++ compile time on CI."""
    inputs = [a.float().requires_grad_() for a in make_inputs("lstm")]

    def loss(Wx, R, b, s0):
        states, last = ft.flashrnn(Wx * 2, R, b, s0, "lstm")
        return states.sum() + last.pow(2).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    values, grads = [], []
    for fn in (loss, compiled):
        values.append(fn(*inputs))
        grads.append(torch.autograd.grad(values[-1], inputs))
    assert torch.equal(values[0], values[1])
    for g_eager, g_compiled in zip(*grads):
        assert torch.equal(g_eager, g_compiled)

    module = ft.GRU(5, 6, num_layers=2, bidirectional=True, num_heads=2)
    x = torch.randn(7, 3, 5)
    assert torch.equal(torch.compile(module, fullgraph=True, backend="aot_eager")(x)[0], module(x)[0])


# ---------------------------------------------------------------------------------------- modules

MODULES = {"lstm": ft.LSTM, "slstm": ft.sLSTM, "gru": ft.GRU, "elman": ft.Elman}


@pytest.mark.parametrize("batch_first", [False, True], ids=["TBI", "BTI"])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_module_shapes_and_state_passing(function, batch_first):
    """nn.LSTM's interface; running a sequence in two halves, passing the last states on, equals one run."""
    m = MODULES[function](5, 8, num_layers=2, num_heads=2, batch_first=batch_first, dtype=torch.float64)
    x = torch.randn(3, 6, 5, dtype=torch.float64)  # [B, T, I]
    x = x if batch_first else x.transpose(0, 1)
    out, h_n = m(x)
    S = CELLS[function].states
    parts = (h_n,) if S == 1 else h_n
    assert isinstance(h_n, torch.Tensor) == (S == 1) and len(parts) == S
    assert all(p.shape == (2, 3, 8) for p in parts)
    assert out.shape == ((3, 6, 8) if batch_first else (6, 3, 8))

    tdim = 1 if batch_first else 0
    first, mid = m(x.narrow(tdim, 0, 2))
    second, end = m(x.narrow(tdim, 2, 4), mid)
    assert rel(torch.cat([first, second], tdim), out) < 1e-12
    for a, ref in zip((end,) if S == 1 else end, parts):
        assert rel(a, ref) < 1e-12


def test_module_is_flashrnn_on_its_projection():
    """One layer, one direction: the input projection, then flashrnn with the module's R and b."""
    m = ft.sLSTM(4, 6, num_heads=3, batch_first=True)
    x = torch.randn(2, 5, 4)
    Wx = (x @ m.weight_ih_l0.T).view(2, 5, 4, 3, 2)
    states, last = ft.flashrnn(Wx, m.weight_hh_l0, m.bias_l0, function="slstm")
    out, (h, c, n, mm) = m(x)
    assert torch.equal(out, states[0].reshape(2, 5, 6))
    assert torch.equal(torch.stack([h, c, n, mm])[:, 0], last[:, :, 0].reshape(4, 2, 6))


def test_module_dropout_between_layers_and_errors():
    x = torch.randn(5, 2, 3)
    for layers in (1, 2):
        m = ft.Elman(3, 4, num_layers=layers, dropout=0.5)
        torch.manual_seed(1)
        trained = m.train()(x)[0]
        torch.manual_seed(1)
        assert torch.equal(m(x)[0], trained)
        assert torch.equal(m.eval()(x)[0], trained) == (layers == 1)  # only between layers, only in training
    assert not ft.Elman(3, 4, bias=False).bias_l0.requires_grad
    with pytest.raises(ValueError, match="multiple of num_heads"):
        ft.LSTM(3, 5, num_heads=2)
    with pytest.raises(ValueError, match="hx: expected 2 tensor"):
        ft.LSTM(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="input: expected 3 dimensions"):
        ft.LSTM(3, 4)(torch.randn(5, 3))


# -------------------------------------------------------------------------------------- from_torch

TORCH_CASES = [(kind, layers, bidir, bias, batch_first) for kind in ("LSTM", "GRU", "RNN")
               for layers, bidir, bias, batch_first in ((1, False, True, False), (2, True, True, True),
                                                        (2, False, False, False))]


def _mapped_grads(original: torch.nn.Module, new: torch.nn.Module, suffix: str) -> list[tuple]:
    """(name, torch's grad, ours in torch's layout) for one layer-direction: W_ih, W_hh, b_ih, b_hh."""
    kind, H = type(original), original.hidden_size
    R = getattr(new, "weight_hh" + suffix).grad
    out = [("weight_ih", getattr(original, "weight_ih" + suffix).grad, getattr(new, "weight_ih" + suffix).grad)]
    R = R[[1, 2, 0]] if kind is torch.nn.GRU else R  # ours (g, r, z) -> torch (r, z, n)
    out.append(("weight_hh", getattr(original, "weight_hh" + suffix).grad, R.reshape(-1, H)))
    if original.bias:
        db = getattr(new, "bias" + suffix).grad.reshape(-1, H)  # b_ih and b_hh each get the gradient of their sum
        b_ih, b_hh = (db[[1, 2, 3]], db[[1, 2, 0]]) if kind is torch.nn.GRU else (db, db)
        out += [("bias_ih", getattr(original, "bias_ih" + suffix).grad, b_ih.reshape(-1)),
                ("bias_hh", getattr(original, "bias_hh" + suffix).grad, b_hh.reshape(-1))]
    return out


def check_from_torch(original: torch.nn.Module, dtype: torch.dtype, device: str, tol: float) -> None:
    """Outputs, last states and every gradient (input, hx, weights) of from_torch(original) against original."""
    original = original.to(device=device, dtype=dtype)
    new = ft.from_torch(original)
    dirs, L, H = 1 + original.bidirectional, original.num_layers, original.hidden_size
    x = torch.randn(3, 5, original.input_size, dtype=dtype, device=device)  # B=3, T=5 if batch_first
    S, B = (2 if isinstance(original, torch.nn.LSTM) else 1), (3 if original.batch_first else 5)
    hx = [torch.randn(L * dirs, B, H, dtype=dtype, device=device) for _ in range(S)]
    results = []
    for module in (original, new):
        xs = x.clone().requires_grad_()
        hs = [h.clone().requires_grad_() for h in hx]
        out, last = module(xs, tuple(hs) if S == 2 else hs[0])
        last = last if S == 2 else (last,)
        weights = [torch.randn_like(t) for t in (out, *last)] if not results else results[0][-1]
        sum((t * w).sum() for t, w in zip((out, *last), weights)).backward()
        results.append((out, last, xs.grad, [h.grad for h in hs], weights))
    (out0, last0, dx0, dh0, _), (out1, last1, dx1, dh1, _) = results
    assert rel(out1, out0) < tol and rel(dx1, dx0) < tol
    for a, b in zip((*last1, *dh1), (*last0, *dh0)):
        assert rel(a, b) < tol
    for layer in range(L):
        for suffix in new._suffixes(layer):
            for name, ref, got in _mapped_grads(original, new, suffix):
                assert rel(got, ref) < tol, f"{name}{suffix}: {rel(got, ref):.1e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind,layers,bidir,bias,batch_first", TORCH_CASES,
                         ids=[f"{k}-L{n}-{'bi' if d else 'uni'}-{'bias' if b else 'nobias'}-{'BTI' if f else 'TBI'}"
                              for k, n, d, b, f in TORCH_CASES])
def test_from_torch_matches_torch(kind, layers, bidir, bias, batch_first, dtype):
    original = getattr(torch.nn, kind)(4, 6, num_layers=layers, bias=bias, batch_first=batch_first,
                                       bidirectional=bidir)
    check_from_torch(original, dtype, "cpu", 1e-4 if dtype == torch.float32 else 1e-10)


def test_from_torch_refuses_what_it_cannot_convert():
    with pytest.raises(ValueError, match="proj_size=2"):
        ft.from_torch(torch.nn.LSTM(4, 6, proj_size=2))
    with pytest.raises(ValueError, match="nonlinearity='relu'"):
        ft.from_torch(torch.nn.RNN(4, 6, nonlinearity="relu"))
    with pytest.raises(TypeError, match="expected a torch.nn.LSTM, GRU or RNN"):
        ft.from_torch(torch.nn.Linear(4, 6))


# -------------------------------------------------------------------------------------------- GPU


@pytest.fixture
def cuda(monkeypatch):
    """Skips where this torch has no CUDA (a CPU wheel on a GPU machine); reference matmuls without TF32."""
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA (install a CUDA wheel of torch)")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_tensors_hand_over_without_copies(cuda, spy, dtype):
    Wx, R, b, s0 = (a.to(dtype) for a in make_inputs("lstm", N=1, D=64, dtype=torch.float32, device="cuda"))
    states, _ = ft.flashrnn(Wx, R, b, s0, "lstm")
    (args, result, _), = spy
    assert [ptr(a) for a in args] == [t.data_ptr() for t in (Wx, R, b, s0)]
    assert states.data_ptr() == ptr(result.states) and states.is_cuda and states.dtype == dtype


@pytest.mark.gpu
def test_cuda_work_runs_on_the_current_torch_stream(cuda, spy):
    """Queued behind a long sleep on a side stream, the op must see the side stream's write to Wx: on any
    other stream it would read Wx before the doubling."""
    import cupy

    Wx, R, b, s0 = make_inputs("lstm", B=64, T=64, N=1, D=64, dtype=torch.float32, device="cuda")
    reference = ft.flashrnn(Wx * 2, R, b, s0, "lstm")[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of spinning on the side stream
        Wx.mul_(2)
        states, _ = ft.flashrnn(Wx, R, b, s0, "lstm")
        after = cupy.cuda.get_current_stream().ptr
    torch.cuda.current_stream().wait_stream(side)
    assert spy[-1][2] == side.cuda_stream  # CuPy ran the call on torch's current stream
    assert after != side.cuda_stream  # and was given its own current stream back afterwards
    assert rel(states, reference) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_from_torch_matches_cudnn(cuda, kind):
    original = getattr(torch.nn, kind)(32, 64, num_layers=2, bidirectional=True)
    check_from_torch(original, torch.float32, "cuda", 1e-3)


# ------------------------------------------------------------------------------------ variable lengths

LENGTHS = [6, 2, 1, 4]  # B=4, T=6: full, short, a single step, between; unsorted


@pytest.mark.parametrize("function", FUNCTIONS)
def test_lengths_equal_each_sequence_alone(function):
    """Values and every gradient with lengths against each sequence run alone over its own length; the
    upstream gradient on a padded step goes to the sequence's last valid state, dWx past its end is zero."""
    inputs = [a.requires_grad_() for a in make_inputs(function, B=4, T=6)]
    states, last = ft.flashrnn(*inputs, function=function, lengths=torch.tensor(LENGTHS))
    w, w_last = torch.randn_like(states), torch.randn_like(last)
    ((states * w).sum() + (last * w_last).sum()).backward()
    Wx, R, b, s0 = (a.detach() for a in inputs)
    dR, db = torch.zeros_like(R), torch.zeros_like(b)
    for i, n in enumerate(LENGTHS):
        alone = [Wx[i:i + 1, :n].clone().requires_grad_(), R.clone().requires_grad_(), b.clone().requires_grad_(),
                 s0[:, i:i + 1].clone().requires_grad_()]
        s_i, last_i = ft.flashrnn(*alone, function=function)
        w_i = w[:, i:i + 1, :n].clone()
        w_i[:, 0, -1] += w[:, i, n:].sum(dim=1)  # the padded steps are copies of the last valid state
        ((s_i * w_i).sum() + (last_i * w_last[:, i:i + 1]).sum()).backward()
        assert rel(states[:, i, :n], s_i[:, 0]) < 1e-12
        assert torch.equal(states[:, i, n:], s_i[:, 0, -1:].expand(-1, 6 - n, -1, -1).detach())
        assert torch.equal(last[:, i], last_i[:, 0])
        assert rel(inputs[0].grad[i, :n], alone[0].grad[0]) < 1e-10
        assert not inputs[0].grad[i, n:].any(), "dWx past a sequence's end must be zero"
        assert rel(inputs[3].grad[:, i], alone[3].grad[:, 0]) < 1e-10
        dR, db = dR + alone[1].grad, db + alone[2].grad
    assert rel(inputs[1].grad, dR) < 1e-10 and rel(inputs[2].grad, db) < 1e-10


@pytest.mark.parametrize("function", FUNCTIONS)
def test_lengths_gradcheck_float64(function):
    inputs = [a.requires_grad_() for a in make_inputs(function, B=3, T=3, N=1, D=2)]
    lengths = torch.tensor([2, 3, 1])

    def run(*args):
        states, last = ft.flashrnn(*args, function=function, lengths=lengths)
        return (states if function != "slstm" else states[:1]), last[:1]

    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_lengths_kinds_hand_over_and_errors(spy):
    """A list, int32 and int64 tensors give the same states; an int32 CPU tensor reaches the core without a
    copy (the core keeps int32 lengths); a full-length batch is the plain call; the core's checks name the
    argument."""
    Wx, R, b, s0 = make_inputs("gru", B=4, T=6)
    as_int32 = torch.tensor(LENGTHS, dtype=torch.int32)
    ref = ft.flashrnn(Wx, R, b, s0, "gru", lengths=as_int32)[0]
    assert ptr(spy[-1][1].problem.lengths) == as_int32.data_ptr() and ptr(spy[-1][0][0]) == Wx.data_ptr()
    assert torch.equal(ft.flashrnn(Wx, R, b, s0, "gru", lengths=LENGTHS)[0], ref)
    assert torch.equal(ft.flashrnn(Wx, R, b, s0, "gru", lengths=as_int32.long())[0], ref)
    full = ft.flashrnn(Wx, R, b, s0, "gru")[0]
    assert torch.equal(ft.flashrnn(Wx, R, b, s0, "gru", lengths=[6] * 4)[0], full)
    with pytest.raises(ValueError, match=r"lengths: expected every length in 1..T=6"):
        ft.flashrnn(Wx, R, b, s0, "gru", lengths=[7, 1, 1, 1])
    with pytest.raises(ValueError, match="lengths: expected shape"):
        ft.flashrnn(Wx, R, b, s0, "gru", lengths=[1, 1, 1])
    for not_integers in (torch.ones(4), [1.5, 1, 1, 1]):  # a list becomes a tensor of its own dtype
        with pytest.raises(ValueError, match="lengths: expected an integer dtype"):
            ft.flashrnn(Wx, R, b, s0, "gru", lengths=not_integers)


def test_opcheck_ops_with_lengths():
    Wx, R, b, s0 = make_inputs("lstm", B=4, T=6, dtype=torch.float32)
    lengths = torch.tensor(LENGTHS)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.flashrnn_core.forward.default,
                          (Wx.requires_grad_(), R, b, s0, "lstm", "auto", lengths), test_utils=checks)
    states, saved = torch.ops.flashrnn_core.forward(Wx.detach(), R, b, s0, "lstm", "auto", lengths)
    torch.library.opcheck(torch.ops.flashrnn_core.backward.default,
                          (Wx.detach(), R, b, s0, states, saved, torch.ones_like(states), "lstm", "auto", lengths),
                          test_utils=checks)


def test_lengths_torch_compile_fullgraph_matches_eager():
    """lengths travels through the traced op and its backward (no graph break)."""
    Wx, R, b, s0 = (a.float() for a in make_inputs("gru", B=4, T=6))
    Wx.requires_grad_()
    lengths = torch.tensor(LENGTHS)

    def loss(Wx, lengths):
        states, last = ft.flashrnn(Wx, R, b, s0, "gru", lengths=lengths)
        return states.sum() + last.pow(2).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager, traced = loss(Wx, lengths), compiled(Wx, lengths)
    assert torch.equal(eager, traced)
    assert torch.equal(torch.autograd.grad(eager, Wx)[0], torch.autograd.grad(traced, Wx)[0])


def _packed(x_btf: torch.Tensor, lengths: list[int], batch_first: bool, enforce_sorted: bool):
    """x ``[B, T, F]`` packed as torch.nn.LSTM takes it (sorted by length first where enforce_sorted asks it)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    x = x_btf if batch_first else x_btf.transpose(0, 1)
    return pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=enforce_sorted)


def test_packed_module_is_flashrnn_with_lengths():
    """One layer, one direction: PackedSequence in and out equals flashrnn on the padded projection with lengths."""
    from torch.nn.utils.rnn import pack_padded_sequence

    m = ft.LSTM(3, 4, num_heads=2, batch_first=True, dtype=torch.float64)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    out, (h, c) = m(_packed(x, LENGTHS, True, enforce_sorted=False))
    Wx = (x @ m.weight_ih_l0.T).view(4, 6, 4, 2, 2)
    states, last = ft.flashrnn(Wx, m.weight_hh_l0, m.bias_l0, function="lstm", lengths=LENGTHS)
    ref = pack_padded_sequence(states[0].reshape(4, 6, 4), torch.tensor(LENGTHS), batch_first=True,
                               enforce_sorted=False)
    assert isinstance(out, type(ref)) and torch.equal(out.data, ref.data)
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        assert torch.equal(getattr(out, field), getattr(ref, field)), field
    assert torch.equal(torch.stack([h, c])[:, 0], last[:, :, 0].reshape(2, 4, 4))


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("function", ["lstm", "slstm"])
def test_packed_module_equals_each_sequence_alone(function, enforce_sorted):
    """Two layers, bidirectional, with hx: the packed batch's outputs and h_n, in the caller's batch order, are
    those of each sequence run alone through the module (the reverse direction starts at its own end)."""
    from torch.nn.utils.rnn import pad_packed_sequence

    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    m = MODULES[function](3, 4, num_layers=2, bidirectional=True, num_heads=2, dtype=torch.float64)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    hx = _module_hx(function, 4)
    out, h_n = m(_packed(x, lengths, False, enforce_sorted), hx)
    padded, got_lengths = pad_packed_sequence(out)  # [T, B, 2H], the caller's order
    assert got_lengths.tolist() == lengths
    for i, n in enumerate(lengths):
        out_i, h_i = m(x[i:i + 1, :n].transpose(0, 1), tuple(h[:, i:i + 1] for h in hx))
        assert rel(padded[:n, i], out_i[:, 0]) < 1e-12
        assert not padded[n:, i].any()  # pad_packed_sequence's zeros past the end
        for a, ref in zip(h_n, h_i):
            assert rel(a[:, i], ref[:, 0]) < 1e-12


def _module_hx(function: str, batch: int) -> tuple[torch.Tensor, ...]:
    """hx for a 2-layer bidirectional module of hidden size 4 (consistent slstm states)."""
    rng = np.random.default_rng(3)
    states = random_states(rng, function, (4, batch, 4), "init")  # [S, L * dirs, B, H]
    return tuple(torch.tensor(s) for s in states)


def check_packed_against_torch(kind: str, enforce_sorted: bool, batch_first: bool, dtype, device: str, tol: float):
    """A PackedSequence through torch.nn.<kind> and through from_torch of it: the same packed structure (fields,
    order), the same data, h_n, and gradients on the input, hx and the weights."""
    original = getattr(torch.nn, kind)(3, 5, num_layers=2, bidirectional=True, batch_first=batch_first)
    original = original.to(device=device, dtype=dtype)
    new = ft.from_torch(original)
    x = torch.randn(4, 6, 3, dtype=dtype, device=device)
    S = 2 if kind == "LSTM" else 1
    hx = [torch.randn(4, 4, 5, dtype=dtype, device=device) for _ in range(S)]
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    results = []
    for module in (original, new):
        xs, hs = x.clone().requires_grad_(), [h.clone().requires_grad_() for h in hx]
        out, h_n = module(_packed(xs, lengths, batch_first, enforce_sorted), tuple(hs) if S == 2 else hs[0])
        h_n = h_n if S == 2 else (h_n,)
        weights = [torch.randn_like(t) for t in (out.data, *h_n)] if not results else results[0][-1]
        sum((t * w).sum() for t, w in zip((out.data, *h_n), weights)).backward()
        results.append((out, h_n, xs.grad, [h.grad for h in hs], weights))
    (out0, h0, dx0, dh0, _), (out1, h1, dx1, dh1, _) = results
    assert type(out1) is type(out0) and out1.data.shape == out0.data.shape
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        a, ref = getattr(out1, field), getattr(out0, field)
        assert (a is None and ref is None) or torch.equal(a, ref), field
    assert len(h1) == len(h0) and all(a.shape == ref.shape for a, ref in zip(h1, h0))
    assert rel(out1.data, out0.data) < tol and rel(dx1, dx0) < tol
    for a, ref in zip((*h1, *dh1), (*h0, *dh0)):
        assert rel(a, ref) < tol
    for layer in range(2):
        for suffix in new._suffixes(layer):
            for name, ref, got in _mapped_grads(original, new, suffix):
                assert rel(got, ref) < tol, f"{name}{suffix}: {rel(got, ref):.1e}"


@pytest.mark.parametrize("batch_first", [False, True], ids=["TBI", "BTI"])
@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_packed_sequence_matches_torch(kind, enforce_sorted, batch_first):
    check_packed_against_torch(kind, enforce_sorted, batch_first, torch.float64, "cpu", 1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("lengths_device", ["cpu", "cuda"])
def test_cuda_lengths_equal_each_sequence_alone(cuda, lengths_device):
    """On CUDA tensors (whichever backend auto picks for lengths), with CPU or CUDA lengths."""
    inputs = [a.requires_grad_() for a in make_inputs("lstm", B=4, T=6, N=2, D=16, dtype=torch.float32,
                                                      device="cuda")]
    states, last = ft.flashrnn(*inputs, function="lstm", lengths=torch.tensor(LENGTHS, device=lengths_device))
    w = torch.randn_like(states)
    (states * w).sum().backward()
    Wx, R, b, s0 = (a.detach() for a in inputs)
    for i, n in enumerate(LENGTHS):
        alone = Wx[i:i + 1, :n].clone().requires_grad_()
        s_i, _ = ft.flashrnn(alone, R, b, s0[:, i:i + 1], "lstm")
        w_i = w[:, i:i + 1, :n].clone()
        w_i[:, 0, -1] += w[:, i, n:].sum(dim=1)
        (s_i * w_i).sum().backward()
        assert states.is_cuda and rel(states[:, i, :n], s_i[:, 0]) < 1e-4  # SPEC's float32 tolerance
        assert rel(last[:, i, 0], s_i[:, 0, -1]) < 1e-4
        assert rel(inputs[0].grad[i, :n], alone.grad[0]) < 2e-4 and not inputs[0].grad[i, n:].any()


@pytest.mark.gpu
@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_packed_sequence_matches_cudnn(cuda, kind, enforce_sorted):
    check_packed_against_torch(kind, enforce_sorted, False, torch.float32, "cuda", 1e-3)
