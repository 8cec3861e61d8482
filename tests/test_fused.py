"""cuda_fused: forward vs the float64 vanilla reference, outputs fully written, what it refuses, and (on a CPU)
that every kernel variant compiles for sm_80 and sm_90."""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pytest

import flashrnn_core as fc
from flashrnn_core import _arrays
from flashrnn_core.backends import fused
from flashrnn_core.cells import CELLS
from flashrnn_core.backends import AUTO_ORDER, why_not
from flashrnn_core.constrint import A100, H100, problems, solve_fused
from flashrnn_core.constrint.problems import DIRECTIONS
from flashrnn_core.validate import validate
from conftest import assert_states_close, random_inputs, saved_error
from conftest import relative_error as _rel  # (the name these tests use)

DTYPES = {"float32": _arrays.float32, "bfloat16": _arrays.bfloat16, "float16": _arrays.float16}
TOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}  # SPEC.md, relative to a float64 reference
TF32_TOL = 1e-3  # SPEC.md's float32 where TF32 matrix units are used: float32 heads with fp16 operands


def _tolerance(dtype_name, *launches):
    """SPEC's tolerance for these launches: TF32's where any holds float32 as fp16 operands (FLASHRNN_F32_HALF)."""
    return TF32_TOL if any(launch.choice.half_operands for launch in launches) else TOL[dtype_name]


# (B, T, N, D, initial states): odd B, B = 1 and 256, T = 1 and 2, D = 48 (an odd number of k-tiles), every
# D of the issue; the B = 256 x 12 heads shape makes the solver pick wider batch tiles; D >= 256 (and float32
# D = 128) run on clusters where the solver finds a valid launch, and are skipped with its reason otherwise; D = 512
# and 768 in 16-bit, and D = 256 and 512 in float32, keep part of R in shared memory (Tile::RS); D = 144 and 208
# (and float32 D = 112) take clusters of sizes other than a power of two (KernelModel.any_cluster_size), float32
# D = 144 and 192 (gru) and 16-bit gru D = 384 (test_fused_bw) R in shared memory on them (r_shared_any_cluster).
SHAPES = [
    (3, 17, 2, 16, False),
    (5, 9, 3, 32, True),
    (16, 33, 2, 64, False),
    (1, 1, 1, 64, True),
    (7, 10, 2, 48, True),
    (9, 12, 2, 128, True),
    (256, 3, 12, 64, True),
    (5, 6, 2, 256, True),
    (3, 2, 1, 512, False),
    (2, 5, 1, 768, True),
    (3, 5, 2, 112, True),
    (256, 2, 16, 64, False),  # wide batch tiles
    (64, 2, 30, 32, True),
    (3, 4, 1, 144, True),  # clusters of 3 and 6 blocks (no power-of-two cluster splits D = 144 into warps' dims)
    (5, 6, 1, 208, False),  # 13-block clusters (lstm, slstm, elman)
    (4, 3, 2, 192, True),  # float32 gru: 6-block clusters with part of R in shared memory (r_shared_any_cluster)
    (3, 4, 1, 640, False),  # float32: fp16 operands (KernelModel.f32_half_operands), as D = 768
]


def _inputs(rng, function, dtype, B, T, N, D, with_states):
    return [None if a is None else a.astype(np.float32).astype(dtype)
            for a in random_inputs(rng, function, B, T, N, D, with_states)]


def _shapes(function, B, T, N, D):
    cell = CELLS[function]
    return (B, T, cell.gates_w, N, D), (cell.gates_r, N, D, D), (cell.gates_b, N, D)


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs of cuda_fused come from NaN-filled memory: any element the kernel does not write stays NaN."""
    import cupy

    def nan_empty(shape, dtype):
        return cupy.full(shape, np.nan, dtype=dtype)

    monkeypatch.setattr(fused, "_empty", nan_empty)


def _shape_id(shape):
    B, T, N, D, s = shape
    return f"B{B}-T{T}-N{N}-D{D}" + ("-s0" if s else "")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
def test_forward_matches_vanilla(function, dtype_name, shape, poisoned):
    import cupy

    B, T, N, D, with_states = shape
    dtype = DTYPES[dtype_name]
    reason = fused.FusedBackend().unsupported(validate(
        *[cupy.empty(s, dtype) for s in _shapes(function, B, 1, N, D)], function=function))
    if reason is not None:
        assert f"D={D}" in reason or "sm_" in reason, reason
        pytest.skip(reason)
    rng = np.random.default_rng(zlib.crc32(repr((function, dtype_name, shape)).encode()))
    host = _inputs(rng, function, dtype, B, T, N, D, with_states)
    dev = [None if a is None else cupy.asarray(a) for a in host]

    out = fc.forward(*dev, function=function, backend="cuda_fused")
    assert out.backend == "cuda_fused"
    ref = fc.forward(*[None if a is None else a.astype(np.float64) for a in host], function=function,
                     backend="vanilla")

    states, saved = cupy.asnumpy(out.states), cupy.asnumpy(out.saved)
    assert states.shape == ref.states.shape and states.dtype == dtype
    assert saved.shape == (B, T, CELLS[function].n_saved, N, D) and saved.dtype == dtype
    backend, problem = fused.FusedBackend(), validate(*dev, function=function)
    launches = [backend.params(problem, save) for save in (True, False)]
    tol = _tolerance(dtype_name, *launches)
    assert_states_close(function, states, ref.states, tol)
    err = _rel(saved, ref.saved)
    assert err < tol, f"saved pre-activations: relative error {err:.2e} >= {tol:g}"
    # The inference kernel (FLASHRNN_SAVE=0, the solver's inference choice): every element written (NaN-poisoned),
    # nothing saved, the states within the tolerance, and bit for bit the forward's where it runs its geometry.
    infer = fc.forward(*dev, function=function, backend="cuda_fused", save_for_backward=False)
    assert infer.saved is None
    infer_states = cupy.asnumpy(infer.states)
    assert_states_close(function, infer_states, ref.states, tol, "inference state")
    if _saving_twins(*(launch.choice for launch in launches)):
        np.testing.assert_array_equal(infer_states, states)


def _saving_twins(saving, inference) -> bool:
    """The two forwards run one kernel but for the saved values (FLASHRNN_SAVE=0 the only difference), so their
    states are equal bit for bit; otherwise each only matches vanilla (another geometry, or sLSTM's reciprocal
    form, FusedParams.slstm_own_h_reciprocal)."""
    return saving.template_args() == {k: v for k, v in inference.template_args().items() if k != "FLASHRNN_SAVE"}


@pytest.mark.gpu
@pytest.mark.parametrize("D", [16, 64])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
def test_every_forward_geometry_matches_vanilla(function, dtype_name, D, poisoned):
    """The solver picks one configuration a shape, but another GPU or ``python -m flashrnn_core.tune`` may pick any
    it admits: every geometry (cluster, k split or whole-K warps, batch tile; at its cheapest prefetch) of a small
    head matches vanilla, and so does its inference twin (bit for bit the same states where _saving_twins). D = 16
    has one k-tile (whole-K warps or none), D = 64 both kinds of k_split = 2 warps."""
    from flashrnn_core.constrint.hardware import current
    from flashrnn_core.constrint.problems import all_feasible
    from flashrnn_core.tune import distinct_geometries

    B, T, N = 9, 7, 2
    if dtype_name == "float32" and D == 64:
        D = 32  # (float32 D = 64 heads hold R in registers only on a few geometries)
    configs = distinct_geometries(all_feasible(current(), function, dtype_name, B, N, D))
    assert any(c.whole_k for c in configs) and any(not c.whole_k for c in configs)
    _pinned_match_vanilla(function, dtype_name, configs, B, T, N, D, "every geometry")


def _pinned_match_vanilla(function, dtype_name, configs, B, T, N, D, seed, lengths=None):
    """Each of ``configs`` (FusedParams), pinned, matches vanilla from NaN-poisoned outputs (the ``poisoned``
    fixture), and so does its inference twin (bit for bit the same states where _saving_twins). Their kernels
    compile first, on every core."""
    import os

    import cupy

    from flashrnn_core.compile import run_jobs
    from flashrnn_core.runtime import device_arch
    from flashrnn_core.tune import pinned

    launches = [fused.launch_of(replace(c, direction=d)) for c in configs for d in ("forward", "inference")]
    failed = [o for o in run_jobs([(launch.spec, device_arch()) for launch in launches], os.cpu_count() or 1)
              if o.error]
    assert not failed, failed[0].error

    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(zlib.crc32(repr((function, dtype_name, D, seed)).encode()))
    host = _inputs(rng, function, dtype, B, T, N, D, True)
    dev = [cupy.asarray(a) for a in host]
    problem = validate(*dev, function=function, lengths=None if lengths is None else cupy.asarray(lengths))
    ref = fc.forward(*[a.astype(np.float64) for a in host], function=function, backend="vanilla", lengths=lengths)
    for config in configs:
        label = fused.launch_of(config).spec.label
        tol = TF32_TOL if config.half_operands else TOL[dtype_name]
        backend = pinned(config)
        states, saved = (cupy.asnumpy(a) for a in backend.forward(problem, *dev))
        assert_states_close(function, states, ref.states, tol, f"{label}: state")
        err = saved_error(saved, ref.saved, lengths)
        assert err < tol, f"{label}: saved: relative error {err:.2e} >= {tol:g}"
        infer, none = backend.forward(problem, *dev, save=False)
        assert none is None
        if _saving_twins(config, replace(config, direction="inference")):
            np.testing.assert_array_equal(cupy.asnumpy(infer), states, err_msg=label)
        else:
            assert_states_close(function, cupy.asnumpy(infer), ref.states, tol, f"{label} inference: state")


@pytest.mark.gpu
@pytest.mark.parametrize("function, D", [("lstm", 96), ("gru", 112), ("elman", 176)])
def test_one_block_half_operands_match_vanilla(function, D, poisoned):
    """float32 heads that an A100 (no clusters) holds in one block only as fp16 operands
    (KernelModel.f32_half_operands): that one-block kernel, pinned on this GPU."""
    choice = solve_fused(A100, function, "float32", 9, 2, D)
    assert choice and choice.half_operands and choice.blocks_per_head == 1, choice
    _pinned_match_vanilla(function, "float32", [choice], 9, 7, 2, D, "one block, fp16 operands")


@pytest.mark.gpu
@pytest.mark.parametrize("varlen", [False, True], ids=["T", "lengths"])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("function", ["lstm", "slstm", "gru", "elman"])
def test_dma_warps_match_vanilla(function, dtype_name, varlen, poisoned):
    """DMA warps (fused_fw.cu Tile::DMA: h's columns rotated a block, the exchange counted on three mbarrier groups
    the mma wait for in turn, the copies and sends on their own warps; a split-K pair's k-tiles alternating,
    Tile::INTERLEAVE) on every geometry the solver admits them at D = 768 (16-block clusters), with an odd batch and,
    in turn, variable lengths."""
    from flashrnn_core.constrint.hardware import current
    from flashrnn_core.constrint.problems import all_feasible
    from flashrnn_core.tune import distinct_geometries

    B, T, N, D = 9, 6, 1, 768
    hw = current()
    if not hw.clusters:
        pytest.skip(f"DMA warps run on thread-block clusters (sm_90), not on {hw.arch}")
    configs = [c for c in distinct_geometries(all_feasible(hw, function, dtype_name, B, N, D)) if c.dma_warps]
    assert configs, f"no DMA-warp geometry of {function} D={D}"
    lengths = np.array([6, 1, 3, 6, 2, 5, 4, 6, 1], np.int32) if varlen else None
    _pinned_match_vanilla(function, dtype_name, configs, B, T, N, D, "dma", lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("varlen", [False, True], ids=["T", "lengths"])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("function", ["lstm", "slstm"])
def test_head_split_matches_vanilla(function, dtype_name, varlen, poisoned):
    """A head on two 16-block clusters (fused_fw.cu Tile::G, HeadHandoff; problems.HEAD_SPLIT, pinned: the stage is
    off until measured) matches vanilla from NaN-poisoned outputs, with an odd batch over two batch tiles (four
    clusters polling their partners) and, in turn, variable lengths; its inference twin gives the same states."""
    from flashrnn_core.constrint.hardware import current

    B, T, N, D = 9, 6, 1, 768
    hw = current()
    if not hw.clusters:
        pytest.skip(f"a head on two clusters runs on thread-block clusters (sm_90), not on {hw.arch}")
    split = problems.assess(hw, function, dtype_name, B, N, D, blocks_per_head=16, k_split=2, prefetch_steps=4,
                            r_ktiles_in_smem=8, dma_warps=2, head_clusters=2)
    assert split and split.head_clusters == 2, split
    lengths = np.array([6, 1, 3, 6, 2, 5, 4, 6, 1], np.int32) if varlen else None
    _pinned_match_vanilla(function, dtype_name, [split], B, T, N, D, "split", lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("function", ["lstm", "slstm"])
def test_wide_warps_equal_eight_dims(function, dtype_name, poisoned):
    """16 dims a warp (fused_fw.cu Tile::WIDE) sums exactly what 8 dims a warp does: a split-K pair's alternate
    k-tiles are the two chains (k % 2) of the k_split 1 kernel, so the states and saved values are bitwise those of
    the 8-dims DMA kernel (problems.WIDE_WARPS), from NaN-poisoned outputs; both match vanilla
    (test_dma_warps_match_vanilla takes every DMA geometry, the wide ones among them)."""
    import cupy

    from flashrnn_core.constrint.hardware import current
    from flashrnn_core.tune import pinned

    B, T, N, D = 9, 6, 2, 768
    hw = current()
    if not hw.clusters:
        pytest.skip(f"wide warps run on thread-block clusters (sm_90), not on {hw.arch}")
    wide = solve_fused(hw, function, dtype_name, B, N, D)
    eight = solve_fused(hw, function, dtype_name, B, N, D,
                        model=replace(problems.DEFAULT_MODEL, wide_warp_stages=False))
    assert wide.wide_warps and eight.dma_warps and eight.k_split == 1 and not eight.wide_warps, eight.summary()
    rng = np.random.default_rng(zlib.crc32(repr((function, dtype_name, "wide")).encode()))
    dev = [cupy.asarray(a) for a in _inputs(rng, function, DTYPES[dtype_name], B, T, N, D, True)]
    problem = validate(*dev, function=function)
    (w_states, w_saved), (e_states, e_saved) = (
        [cupy.asnumpy(a) for a in pinned(c).forward(problem, *dev)] for c in (wide, eight))
    assert not np.isnan(w_states).any() and not np.isnan(w_saved).any()
    np.testing.assert_array_equal(w_states, e_states)
    np.testing.assert_array_equal(w_saved, e_saved)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda_fused", "cuda"])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_slstm_initial_normalisers_off_a_steps_range(backend, dtype_name, poisoned):
    """sLSTM from initial states no step leaves (a step leaves n >= 1, or n = c = 0 untouched): n = 0 with c != 0
    (a fresh state with a cell value), 0 < n < 1 and n < 0, mixed per element with n >= 1. SlstmCell::forward
    drops the max with the scale from den where n >= 0 makes it redundant and clamps n at 0 for it: SPEC's
    formula for every n, held here against vanilla in float64."""
    import cupy

    B, T, N, D = 5, 3, 2, 64
    rng = np.random.default_rng(11)
    host = list(random_inputs(rng, "slstm", B, T, N, D, True))
    n = host[3][2]
    kind = rng.integers(0, 4, n.shape)
    n[kind == 0] = 0.0  # fresh, with the random c kept
    n[kind == 1] = rng.uniform(0.05, 0.95, n.shape)[kind == 1]
    n[kind == 2] = -rng.uniform(0.05, 2.0, n.shape)[kind == 2]
    dtype = DTYPES[dtype_name]
    host = [a.astype(np.float32).astype(dtype) for a in host]
    out = fc.forward(*[cupy.asarray(a) for a in host], function="slstm", backend=backend)
    ref = fc.forward(*[a.astype(np.float64) for a in host], function="slstm", backend="vanilla")
    assert_states_close("slstm", cupy.asnumpy(out.states), ref.states, TOL[dtype_name])


def _half_operand_inputs(function, B, T, D, seed):
    """float32 inputs of a head that the fused forward holds as fp16 operands on this GPU, or a skip."""
    import cupy

    rng = np.random.default_rng(seed)
    host = _inputs(rng, function, _arrays.float32, B, T, 1, D, True)
    dev = [cupy.asarray(a) for a in host]
    params = fused.FusedBackend()._choose(validate(*dev, function=function))
    if isinstance(params, str):
        pytest.skip(params)
    assert params.choice.half_operands, params.choice.summary()
    return host, dev


@pytest.mark.gpu
@pytest.mark.parametrize("function", ["lstm", "gru"])
def test_float32_half_operands_hold_tf32_tolerance_over_long_sequences(function, poisoned):
    """SPEC's float32 tolerance where TF32 matrix units are used (1e-3) at T = 1024, where the fp16 operands'
    rounding has the most steps to grow (float32 1x768, KernelModel.f32_half_operands)."""
    host, dev = _half_operand_inputs(function, 2, 1024, 768, 5)
    out = fc.forward(*dev, function=function, backend="cuda_fused")
    ref = fc.forward(*[a.astype(np.float64) for a in host], function=function, backend="vanilla")
    states = out.states.get()
    assert_states_close(function, states, ref.states, TF32_TOL)
    assert np.isfinite(states).all()


@pytest.mark.gpu
def test_float32_half_operands_saturate_and_keep_nans(poisoned):
    """fp16 operands saturate a float32 entry of R beyond fp16's range to +-65504 instead of making it inf (whose
    product with a zero h is NaN), and a NaN in R stays a NaN (common/mma.cuh split)."""
    host, dev = _half_operand_inputs("lstm", 2, 3, 768, 6)
    Wx, R, b, states0 = dev
    R[0, 0, 5, 7] = 1e30
    R[1, 0, 9, :] = -1e30
    states0[0, :, :, :, 7] = 0.0  # h_0 of the dim that meets the huge entry: 0 * inf would be NaN
    out = fc.forward(Wx, R, b, states0, function="lstm", backend="cuda_fused").states.get()
    assert np.isfinite(out).all()
    R[2, 0, 3, 4] = np.nan
    out = fc.forward(Wx, R, b, states0, function="lstm", backend="cuda_fused").states.get()
    assert np.isnan(out[0, :, :, 0, 3]).all()  # h of dim 3: every step (its gate z read the NaN)


@pytest.mark.gpu
def test_auto_picks_fused_and_falls_back():
    import cupy

    rng = np.random.default_rng(0)
    small = [cupy.asarray(a) for a in _inputs(rng, "lstm", _arrays.bfloat16, 2, 3, 2, 64, False)[:3]]
    assert fc.forward(*small, function="lstm").backend == "cuda_fused"
    assert fc.forward(*[cupy.asarray(a) for a in _inputs(rng, "lstm", _arrays.bfloat16, 2, 3, 1, 768, False)[:3]],
                      function="lstm").backend == "cuda_fused"  # R partly in shared memory, one 16-block cluster
    big = [cupy.asarray(a) for a in _inputs(rng, "lstm", _arrays.float32, 2, 3, 1, 1024, False)[:3]]
    problem = validate(*big, function="lstm")
    expected = next(name for name in AUTO_ORDER if why_not(name, problem) is None)  # "cuda" where it is built
    assert expected != "cuda_fused" and fc.forward(*big, function="lstm").backend == expected


@pytest.mark.gpu
def test_backward_runs_on_fused_saved_tensors():
    """The backward (delegated until issue 6) reads this forward's saved tensors: gradients match vanilla's."""
    import cupy

    rng = np.random.default_rng(1)
    host = _inputs(rng, "lstm", _arrays.float32, 3, 5, 2, 32, True)
    dh = rng.standard_normal((1, 3, 5, 2, 32)).astype(np.float32)
    out = fc.forward(*[cupy.asarray(a) for a in host], function="lstm", backend="cuda_fused")
    grads = fc.backward(out, dstates=cupy.asarray(dh))
    ref = fc.forward(*[a.astype(np.float64) for a in host], function="lstm", backend="vanilla")
    ref_grads = fc.backward(ref, dstates=dh.astype(np.float64))
    for name in ("dWx", "dR", "db", "dstates_initial"):
        err = _rel(cupy.asnumpy(getattr(grads, name)), getattr(ref_grads, name))
        assert err < 1e-3, f"{name}: relative error {err:.2e}"


# ---- without a GPU -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", list(CELLS))
def test_unsupported_says_why(function):
    """ConstrINT's Infeasible becomes the refusal, with the binding constraints in words."""
    reason = fused.choose(function, _arrays.bfloat16, 16, 1, 24, hardware=H100)
    assert isinstance(reason, str) and "D=24" in reason and "D divisible by 16" in reason
    if function != "elman":  # (elman's R, one gate, is a quarter of lstm's)
        # float32 D=1024: R (8 MB for lstm even as fp16 operands) fits no 16-block cluster
        reason = fused.choose(function, _arrays.float32, 16, 1, 1024, hardware=H100)
        assert isinstance(reason, str) and "D=1024" in reason and ("registers" in reason or "shared memory" in reason)
        # float32 D=768: R's hi and lo parts (9.4 MB for lstm) fit no cluster, fp16 ones do
        launch = fused.choose(function, _arrays.float32, 16, 1, 768, hardware=H100)
        assert launch.choice.half_operands and dict(launch.spec.defines)["FLASHRNN_F32_HALF"] == "1", launch
        assert " f16ops" in launch.spec.label
    # bf16 D=768: R partly in shared memory, one 16-block cluster a head (the fallback: all of R in registers first)
    launch = fused.choose(function, _arrays.bfloat16, 16, 1, 768, hardware=H100)
    assert not isinstance(launch, str) and launch.cluster == 16, launch
    assert (launch.choice.r_ktiles_in_smem > 0) == (function != "elman")  # elman's R (1.2 MB) fits the registers
    assert fused.choose(function, _arrays.bfloat16, 16, 12, 64, hardware=H100).choice.r_ktiles_in_smem == 0
    # a head above one block on a GPU without clusters
    reason = fused.choose(function, _arrays.bfloat16, 16, 1, 256, hardware=A100)
    assert isinstance(reason, str) and "sm_80" in reason and "no thread-block clusters" in reason
    assert "float64" in fused.choose(function, np.float64, 16, 1, 64, hardware=H100)
    launch = fused.choose(function, _arrays.bfloat16, 16, 12, 64, hardware=H100)
    assert not isinstance(launch, str) and launch.grid == (12 * launch.cluster, 2)
    assert launch.smem_bytes <= H100.smem_per_block_optin
    launch = fused.choose(function, _arrays.bfloat16, 16, 3, 256, hardware=H100)
    assert not isinstance(launch, str) and launch.cluster > 1 and launch.grid == (3 * launch.cluster, 2)


def test_half_operands_are_said_in_the_log(monkeypatch, caplog):
    """A float32 forward at TF32's precision says so, once a kernel, on the "flashrnn_core" logger."""
    from types import SimpleNamespace

    launch = fused.choose("lstm", _arrays.float32, 16, 1, 768, hardware=H100)
    monkeypatch.setattr(fused, "choose", lambda *a, **k: launch)
    fused.say_half_operands.cache_clear()
    problem = SimpleNamespace(function="lstm", dtype=_arrays.float32, B=16, N=1, D=768, device=None)
    with caplog.at_level("INFO", logger="flashrnn_core"):
        for _ in range(2):
            assert fused.FusedBackend().params(problem) is launch
    said = [r.getMessage() for r in caplog.records if "fp16 operands" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(launch.spec.label) and "TF32" in said[0]


def test_head_split_launch_zeroes_its_handoff_first():
    """A forward whose head spans two clusters (problems.HEAD_SPLIT) zeroes its hand-off buffer before every
    launch, on the launch's stream (the kernel's tags are the step + 1: none may stay from the last launch); its
    size is the kernel's (HeadHandoff: batch tiles x heads x blocks x 2 buffers x words a slice)."""
    import contextlib

    calls = []

    class Buffer:
        def fill(self, value):
            calls.append(("fill", value, entered[-1] if entered else None))

    class Prepared:
        def __call__(self, *values, stream=None):
            calls.append(("launch", values, stream))

    entered = []

    @contextlib.contextmanager
    def stream():
        entered.append("s")
        yield
        entered.pop()

    launch = fused._HandoffLaunch(Prepared(), Buffer())
    launch("x")
    s = stream()
    launch("y", stream=s)
    assert calls == [("fill", 0, None), ("launch", ("x",), None), ("fill", 0, "s"), ("launch", ("y",), s)]
    split = problems.assess(H100, "lstm", "bfloat16", 16, 3, 768, blocks_per_head=16, k_split=2, prefetch_steps=4,
                            r_ktiles_in_smem=8, dma_warps=2, head_clusters=2, model=replace(
                                problems.DEFAULT_MODEL, handoff_cycles=0))
    assert not split  # (3 heads x 2 tiles x 2 clusters: more than the slots allow)
    split = problems.assess(H100, "lstm", "bfloat16", 9, 1, 768, blocks_per_head=16, k_split=2, prefetch_steps=4,
                            r_ktiles_in_smem=8, dma_warps=2, head_clusters=2)
    assert fused.handoff_words(split) == 2 * 1 * 32 * 2 * 96
    assert fused.handoff_words(solve_fused(H100, "lstm", "bfloat16", 16, 1, 768)) == 0


def test_launch_is_the_solver_choice():
    """One conversion: the launch's geometry and defines are the solver's FusedParams."""
    choice = solve_fused(H100, "gru", "float16", 64, 12, 128)
    launch = fused.launch_of(choice)
    d = dict(launch.spec.defines)
    assert (launch.grid, launch.threads, launch.smem_bytes, launch.cluster) == (
        choice.grid, choice.threads_per_block, choice.smem_bytes, choice.blocks_per_head)
    assert d["FLASHRNN_CELL"] == "GruCell" and d["FLASHRNN_STORAGE"] == "__half"
    assert d["FLASHRNN_FAST_ACTIVATIONS"] == "1" and launch.spec.smem_dynamic == choice.smem_bytes
    assert {k: int(v) for k, v in d.items() if k in choice.template_args()} == choice.template_args()
    sm90_only = choice.blocks_per_head > 1 or choice.smem_bytes > A100.smem_per_block_optin
    assert launch.spec.min_sm == (90 if sm90_only else 80)
    bw = fused.launch_of(solve_fused(H100, "gru", "float16", 64, 12, 64, direction="backward"))
    assert bw.spec.entry == fused.BW_ENTRY and bw.grid == (12, 8) and bw.cluster == 1


def test_solver_keeps_narrow_tiles_within_one_wave():
    """12x64 on H100: 8-sequence tiles while the blocks fit one wave (B=16, 64). (B=256: test_constrint's
    test_model_choices_follow_the_measurements.)"""
    for B in (16, 64):
        assert fused.choose("lstm", _arrays.bfloat16, B, 12, 64, hardware=H100).choice.batch_tile == 8


def test_every_choice_fits_a_block():
    """Every (cell, dtype, D) the solver accepts launches within the preset's threads and shared memory."""
    for hw in (A100, H100):
        for function in CELLS:
            for dtype in DTYPES.values():
                for D in (16, 48, 64, 128, 256, 512, 768, 1024):
                    for B, N in ((16, 12), (256, 12), (1, 1)):
                        launch = fused.choose(function, dtype, B, N, D, hardware=hw)
                        if isinstance(launch, str):
                            assert f"D={D}" in launch
                            continue
                        assert launch.threads <= hw.max_threads_per_block
                        assert launch.smem_bytes <= hw.smem_per_block_optin
                        assert launch.choice.registers_estimate <= launch.choice.register_cap


@pytest.fixture
def small_variant_grid(monkeypatch, tmp_path):
    """solver_variants over one D, B and N, in an empty cache directory; its in-process cache cleared before and
    after (so the full list is solved again, or read from disk, by the next test that asks)."""
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    for name, value in (("VARIANT_DIMS", (32,)), ("VARIANT_BATCHES", (16,)), ("VARIANT_HEADS", (1,))):
        monkeypatch.setattr(fused, name, value)
    fused.solver_variants.cache_clear()
    yield tmp_path
    fused.solver_variants.cache_clear()


def test_variant_list_is_kept_on_disk(small_variant_grid, monkeypatch):
    """A process that lists the kernels reads the list another one solved (minutes of solves), the same kernels in
    the same order; an unreadable file is a miss, and another grid (or package source) another file."""
    solved = fused.solver_variants()
    path = fused.variants_path()
    assert solved and path.is_file() and path.parent == small_variant_grid / fused.VARIANTS_DIR

    def no_solving():
        raise AssertionError("solved again: the list on disk was not read")

    fused.solver_variants.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(fused, "_solve_variant_choices", no_solving)
        assert fused.solver_variants() == solved
    path.write_text("{not json")
    fused.solver_variants.cache_clear()
    assert fused.solver_variants() == solved  # solved again, and stored again
    assert fused._read_variant_choices(path) is not None
    monkeypatch.setattr(fused, "VARIANT_DIMS", (48,))
    assert fused.variants_path() != path


def test_variant_list_solved_in_processes_is_the_serial_one(small_variant_grid):
    """``compile --jobs N`` solves the list in N spawned processes (the grid read in this one): the same kernels,
    the same oldest sm each, in the same order."""
    serial = [(fused.launch_of(p).spec, sm) for p, sm in fused._solve_variant_choices()]
    fused.store_solver_variants(2)
    stored = fused._read_variant_choices(fused.variants_path())
    assert serial and [(fused.launch_of(p).spec, sm) for p, sm in stored] == serial


def test_kernel_variants_are_the_solver_choices():
    """The variants are exactly the distinct kernels (forward, inference and backward) the solver picks on the CI
    presets (a sample of shapes re-solved here must each be listed, built for the oldest preset that picks it)."""
    variants = {s.defines: s for s in fused.solver_variants()}
    assert len(variants) == len(fused.solver_variants())  # deduplicated
    for hw, function, dtype, D, B, N in ((A100, "lstm", "bfloat16", 64, 16, 12), (H100, "lstm", "bfloat16", 64, 256, 12),
                                         (H100, "elman", "float32", 256, 1, 1), (H100, "slstm", "float16", 384, 64, 12),
                                         (A100, "gru", "float32", 48, 256, 1)):
        for direction in DIRECTIONS:
            choice = solve_fused(hw, function, dtype, B, N, D, direction=direction)
            if not choice:
                assert direction == "backward" and D >= 256  # above one block's registers: cuda's backward
                continue
            spec = fused.launch_of(choice).spec
            assert spec.defines in variants, spec.label
            assert variants[spec.defines].min_sm <= max(hw.sm, spec.min_sm)
    # The inference kernels: fused_fw.cu without the saved outputs, in its forward twin's shared memory.
    forwards = [s for s in variants.values() if s.entry == fused.ENTRY]
    infers = [s for s in forwards if ("FLASHRNN_SAVE", "0") in s.defines]
    assert infers and all(s.label.endswith(" infer") and s.defines[-1] == ("FLASHRNN_SAVE", "0") for s in infers)
    assert not any(s.label.endswith(" infer") for s in forwards if s not in infers)
    assert all(s.min_sm == 90 for s in variants.values() if dict(s.defines).get("FLASHRNN_CLUSTER", "1") != "1")
    assert {s.entry for s in variants.values()} == {fused.ENTRY, fused.BW_ENTRY}


def _compile_or_skip():
    try:
        from flashrnn_core.runtime import compile_spec  # noqa: F401
        import cuda.core  # noqa: F401
    except ImportError as err:
        pytest.skip(f"runtime unavailable: {err}")


def _check_compiles(spec, arch):
    from flashrnn_core.runtime import compile_spec

    if int(arch[3:]) < spec.min_sm:
        return  # cluster variants: sm_90 only
    result = compile_spec(spec, arch)  # cached: CI's `compile --check` then finds every variant built
    assert result.cubin, f"{spec.label} {arch}: no binary"
    res = result.resources
    assert res is not None and res.spill_stores == 0 and res.spill_loads == 0 and res.stack == 0, \
        f"{spec.label} {arch}: registers spill ({res})"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_reference_variants_compile(arch):
    """The variants of the reference shapes (12x64, 48x16) compile for both architectures."""
    _compile_or_skip()
    for spec in fused.solver_variants():
        d = dict(spec.defines)
        if d["FLASHRNN_D"] in ("16", "64") and d.get("FLASHRNN_NBT", "1") == "1" and d["FLASHRNN_STORAGE"] == "__nv_bfloat16":
            _check_compiles(spec, arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_variant_compiles(arch):
    _compile_or_skip()
    for spec in fused.FusedBackend().kernel_variants():
        _check_compiles(spec, arch)
