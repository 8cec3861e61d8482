"""cuda_fused backward (fused_bw.cu): gradients vs the float64 vanilla reference for every cell x dtype x shape
and every kind of upstream gradient, outputs fully overwritten, dR/db bitwise deterministic."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import flashrnn_core as fc
from flashrnn_core.backends import fused
from flashrnn_core.cells import CELLS
from flashrnn_core.validate import validate

from test_fused import DTYPES, TOL, _inputs, _rel, _shapes, poisoned  # noqa: F401 (fixture)

# (B, T, N, D, initial states, upstream): odd B, B = 1, T = 1, N > 1, an odd number of k-tiles (D = 48 elman,
# gru D = 16), the reference head sizes, and every kind of upstream gradient: "all" states, "h" only, "last"
# states only, and their sums.
CASES = [
    (3, 17, 2, 16, False, "h"),
    (5, 9, 3, 32, True, "all"),
    (16, 9, 2, 64, False, "last"),  # T short: after ~30 Elman steps the gradient underflows float16 outputs
    (1, 1, 1, 64, True, "all+last"),
    (7, 10, 2, 48, True, "h+last"),
    (9, 6, 2, 96, True, "all"),
    (20, 5, 4, 16, True, "h"),
]


def _case_id(case):
    B, T, N, D, s, mode = case
    return f"B{B}-T{T}-N{N}-D{D}" + ("-s0" if s else "") + f"-{mode}"


def _upstream(rng, function, mode, B, T, N, D):
    S = CELLS[function].states
    dstates = dlast = None
    if "all" in mode:
        dstates = rng.standard_normal((S, B, T, N, D))
    if "h" in mode:
        dstates = rng.standard_normal((1, B, T, N, D))
    if "last" in mode:
        dlast = rng.standard_normal((S, B, 1, N, D))
    if function == "slstm" and dstates is not None and dstates.shape[0] == S:
        dstates[3] = 0.0  # m carries no gradient (cells/slstm.cuh); keep the upstream on it zero, as autograd does
    if function == "slstm" and dlast is not None:
        dlast[3] = 0.0
    return dstates, dlast


def _skip_unless_forward(function, dtype, B, N, D):
    import cupy

    reason = fused.FusedBackend().unsupported(validate(
        *[cupy.empty(s, dtype) for s in _shapes(function, B, 1, N, D)], function=function))
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
def test_backward_matches_vanilla(function, dtype_name, case, poisoned):
    import cupy

    B, T, N, D, with_states, mode = case
    dtype = DTYPES[dtype_name]
    _skip_unless_forward(function, dtype, B, N, D)
    rng = np.random.default_rng(zlib.crc32(repr((function, dtype_name, case)).encode()))
    host = _inputs(rng, function, dtype, B, T, N, D, with_states)
    dst, dl = _upstream(rng, function, mode, B, T, N, D)
    dst, dl = (None if a is None else a.astype(np.float32).astype(dtype) for a in (dst, dl))

    out = fc.forward(*[None if a is None else cupy.asarray(a) for a in host], function=function,
                     backend="cuda_fused")
    grads = fc.backward(out, dstates=None if dst is None else cupy.asarray(dst),
                        dlast_states=None if dl is None else cupy.asarray(dl))
    ref = fc.forward(*[None if a is None else a.astype(np.float64) for a in host], function=function,
                     backend="vanilla")
    ref_grads = fc.backward(ref, dstates=None if dst is None else dst.astype(np.float64),
                            dlast_states=None if dl is None else dl.astype(np.float64))
    tol = TOL[dtype_name] * (2 if dtype_name != "float32" else 10)  # two chained approximations: fw and bw
    for name in ("dWx", "dR", "db", "dstates_initial"):
        got = cupy.asnumpy(getattr(grads, name))
        want = getattr(ref_grads, name)
        assert got.shape == want.shape, name
        if name == "dstates_initial" and function == "slstm":
            got, want = got[:3], want[:3]  # the m row: a convention term, compared separately below
        err = _rel(got, want)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:g}"


@pytest.mark.gpu
@pytest.mark.parametrize("function", list(CELLS))
def test_backward_deterministic_and_fused(function):
    import cupy

    B, T, N, D = 16, 40, 3, 64
    dtype = DTYPES["bfloat16"]
    cell = CELLS[function]
    assert fused.bw_unsupported(function, cell, dtype, D) is None
    rng = np.random.default_rng(7)
    host = _inputs(rng, function, dtype, B, T, N, D, True)
    out = fc.forward(*[cupy.asarray(a) for a in host], function=function, backend="cuda_fused")
    dh = cupy.asarray(rng.standard_normal((1, B, T, N, D)).astype(np.float32).astype(dtype))
    g1 = fc.backward(out, dstates=dh)
    g2 = fc.backward(out, dstates=dh)
    for name in ("dWx", "dR", "db", "dstates_initial"):
        a, b = cupy.asnumpy(getattr(g1, name)), cupy.asnumpy(getattr(g2, name))
        assert a.tobytes() == b.tobytes(), f"{name} differs between two runs"
    # Issue 6, memory: what the forward keeps for the backward is its states plus one set of gate activations.
    memory = fc.backward_memory(function, dtype, B, T, N, D)
    assert out.saved.nbytes == memory["saved"] <= memory["gate_set"]
    assert out.states.nbytes == memory["states"]


@pytest.mark.parametrize("function", list(CELLS))
def test_backward_memory_is_states_plus_one_gate_set(function):
    cell = CELLS[function]
    memory = fc.backward_memory(function, DTYPES["bfloat16"], 3, 5, 2, 16)
    elements = 3 * 5 * 2 * 16
    assert memory == {"states": 2 * cell.states * elements, "saved": 2 * cell.n_saved * elements,
                      "total": 2 * (cell.states + cell.n_saved) * elements, "gate_set": 2 * cell.gates_b * elements}
    assert memory["saved"] <= memory["gate_set"]
    with pytest.raises(ValueError, match="function: expected one of"):
        fc.backward_memory("rnn", DTYPES["bfloat16"], 1, 1, 1, 16)


def test_bw_variants_listed():
    specs = [s for s in fused.FusedBackend().kernel_variants() if s.entry == fused.BW_ENTRY]
    labels = {s.label for s in specs}
    assert "lstm cuda_fused bw bfloat16 D64" in labels and "lstm cuda_fused bw bfloat16 D16" in labels
    for function, cell in CELLS.items():
        for dtype in DTYPES.values():
            threads, smem, prefetch = fused.bw_geometry(cell, dtype, 64)
            assert threads == 512  # 4 warps split K for each 16 rows (bw_ksplit)
            assert prefetch >= 1 and (smem <= fused.BW_SMEM_TARGET or prefetch == 1)
            assert smem <= 163 * 1024  # what an A100 block can opt in to


def test_host_and_kernel_agree_on_summing_dr_in_the_kernel():
    """The host allocates dR's partial sums (and skips its GEMMs) where bw_fused_dr says the kernel sums dR; the
    kernel checks that against its own Tile::FUSED_DR at compile time: a disagreeing define does not compile."""
    from dataclasses import replace

    from flashrnn_core.errors import CompileError
    from flashrnn_core.runtime import compile_spec

    cell, dtype = CELLS["lstm"], DTYPES["bfloat16"]
    assert fused.bw_fused_dr(cell, dtype, 64) and not fused.bw_fused_dr(cell, DTYPES["float32"], 32)
    spec = next(s for s in fused.FusedBackend().kernel_variants() if s.label == "lstm cuda_fused bw bfloat16 D64")
    flipped = replace(spec, defines=tuple((k, "0" if k == "FLASHRNN_FUSED_DR" else v) for k, v in spec.defines))
    with pytest.raises(CompileError, match="bw_fused_dr disagrees"):
        compile_spec(flipped, "sm_90", use_cache=False)
