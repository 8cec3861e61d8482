"""cuda_fused backward (fused_bw.cu): gradients vs the float64 vanilla reference for every cell x dtype x shape
and every kind of upstream gradient, outputs fully overwritten, dR/db bitwise deterministic."""

from __future__ import annotations

import itertools
import zlib
from dataclasses import replace

import numpy as np
import pytest

import flashrnn_core as fc
from flashrnn_core.backends import fused
from flashrnn_core.cells import CELLS
from flashrnn_core.constrint import A100, H100
from flashrnn_core.validate import validate

from test_fused import DTYPES, TOL, _inputs, _rel, _shapes, poisoned  # noqa: F401 (fixture)
from conftest import gradient_case_id

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
    (3, 5, 1, 160, True, "all"),  # above one block's registers for most cells: 2-block clusters (sm_90)
    (5, 9, 3, 256, True, "all"),  # 4- and 8-block clusters: drs exchanged between blocks each step
    (64, 5, 8, 256, False, "h"),  # 128 blocks: elman on 2-block clusters of one warp a 16 rows (BW_CO_RESIDENT)
    (5, 5, 2, 384, True, "all"),  # float32 lstm/slstm/gru: scatter clusters of 8 blocks (no other stage takes them)
    (3, 6, 1, 512, False, "h+last"),  # 16-block clusters, lstm/slstm with R^T partly in shared memory; float32 scatter
    (2, 4, 1, 768, True, "h"),  # 16-block clusters: gru R^T partly in shared memory, lstm scatter clusters
    (11, 6, 2, 768, True, "all+last"),  # scatter clusters over two batch tiles and two heads (lstm, slstm)
    (16, 4, 12, 256, False, "h"),  # 12 heads: bf16 lstm, slstm and float32 gru on scatter clusters (fewer waves)
    # clusters of sizes other than a power of two, where no power-of-two cluster takes the head
    # (KernelModel.any_cluster_size): the backward of 16-bit lstm, slstm and gru D = 144 on 3 blocks (forward: 6,
    # 6, 3), of float32 elman D = 144 on 3 (forward 3); of lstm and slstm D = 112 on 7 (float32: forward 7 too);
    # 16-bit lstm and slstm D = 640 on 10-block scatter clusters, elman D = 640 on 10-block clusters both ways
    (5, 7, 1, 144, True, "all"),
    (4, 6, 2, 112, True, "h+last"),
    (3, 5, 1, 640, False, "h"),
]


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
@pytest.mark.parametrize("case", CASES, ids=gradient_case_id)
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
@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e20])
@pytest.mark.parametrize("function, D", [("gru", 768), ("lstm", 576), ("lstm", 672), ("lstm", 768),
                                         ("slstm", 672), ("slstm", 768)])
def test_half_operand_backward_scales_each_batch_row(function, D, scale, poisoned):
    """float32 gru D = 768's and lstm and slstm D = 576-768's backward holds drs as fp16 operands (fused_bw.cu
    ScatterTile::SCALED; lstm and slstm D = 672 and 768 with one receive buffer for the partials,
    ScatterTile::ONE_RECV, slstm's with one input stage too, ScatterTile::ONE_STAGE): a power of two a batch row
    keeps each row's gradients within fp16's range, so rows of upstream gradients 1e-12 and 1e6 times another's (at
    1e-12 fp16 alone would flush them to zero, at 1e20 overflow) each match vanilla, row by row; and two runs agree
    bit for bit."""
    import cupy

    B, T, N = 3, 5, 1
    dtype = DTYPES["float32"]
    _skip_unless_forward(function, dtype, B, N, D)
    launch = fused.FusedBackend().bw_params(validate(
        *[cupy.empty(s, dtype) for s in _shapes(function, B, 1, N, D)], function=function))
    if isinstance(launch, str):
        pytest.skip(launch)
    assert launch.choice.scatter and launch.choice.half_operands, launch.choice.summary()
    rng = np.random.default_rng(zlib.crc32(repr((function, scale)).encode()))
    host = _inputs(rng, function, dtype, B, T, N, D, True)
    rows = np.array([1.0, 1e-12, 1e6]).reshape(1, B, 1, 1, 1)
    dh = (rng.standard_normal((1, B, T, N, D)) * scale * rows).astype(np.float32)
    out = fc.forward(*[cupy.asarray(a) for a in host], function=function, backend="cuda_fused")
    grads = fc.backward(out, dstates=cupy.asarray(dh))
    again = fc.backward(out, dstates=cupy.asarray(dh))
    ref = fc.forward(*[a.astype(np.float64) for a in host], function=function, backend="vanilla")
    ref_grads = fc.backward(ref, dstates=dh.astype(np.float64))
    tol = TOL["float32"] * 10  # SPEC's 1e-3 for TF32-class products
    for name, batch_axis in (("dWx", 0), ("dstates_initial", 1)):
        got, want = cupy.asnumpy(getattr(grads, name)), getattr(ref_grads, name)
        for b in range(B):
            err = _rel(np.take(got, b, axis=batch_axis), np.take(want, b, axis=batch_axis))
            assert err < tol, f"{name} row {b} (upstream x{scale * rows.flat[b]:g}): relative error {err:.2e}"
        assert got.tobytes() == cupy.asnumpy(getattr(again, name)).tobytes()
    for name in ("dR", "db"):  # (sums over the rows: the largest row's)
        err = _rel(cupy.asnumpy(getattr(grads, name)), getattr(ref_grads, name))
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("function", list(CELLS))
def test_backward_deterministic_and_fused(function):
    import cupy

    B, T, N, D = 16, 40, 3, 64
    dtype = DTYPES["bfloat16"]
    assert isinstance(fused.choose(function, dtype, B, N, D, hardware=H100, direction="backward"), fused.Launch)
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


def test_overlapped_dr_plan(monkeypatch):
    """dR beside the kernel: a count every ~T/32 steps (a power of two, at least 16, at least two counts), sums of
    ~T/8 steps waiting on the count at their lower boundary, halving towards step 0, and the last sum, after the
    kernel, one count's steps; the environment sets the steps between counts (tests) or turns the overlap off."""
    from flashrnn_core.backends import recurrent_grad as rg

    monkeypatch.delenv(rg.OVERLAP_ENV, raising=False)  # (the rule, whatever this shell forces)
    assert [rg.overlap_count_steps(T) for T in (1, 32, 33, 64, 1000, 1024, 65536)] == [0, 0, 16, 16, 16, 32, 2048]
    plan = rg.overlap_plan(1024, 32)
    assert plan[0] == (896, 1024, 3) and plan[-3:] == [(64, 128, 29), (32, 64, 30), (0, 32, -1)]
    for T in (33, 100, 1000, 1024, 4096):  # the sums tile [0, T) from the top, each on a count at its boundary
        steps = rg.overlap_count_steps(T)
        plan = rg.overlap_plan(T, steps)
        assert [p[1] for p in plan] == [T] + [p[0] for p in plan[:-1]] and plan[-1][0] == 0
        assert all(t0 == T - (c + 1) * steps for t0, _, c in plan[:-1]) and plan[-1][2] == -1
        assert plan[-1][1] <= steps
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(rg.OVERLAP_ENV, "8")
        assert (rg.overlap_count_steps(37), rg.overlap_count_steps(16)) == (8, 0)
        assert rg.overlap_plan(37, 8) == [(29, 37, 0), (21, 29, 1), (13, 21, 2), (5, 13, 3), (0, 5, -1)]
        mp.setenv(rg.OVERLAP_ENV, "0")
        assert rg.overlap_count_steps(1024) == 0
        mp.setenv(rg.OVERLAP_ENV, "12")
        with pytest.raises(ValueError, match="power of two"):
            rg.overlap_count_steps(1024)


def test_overlap_counts_stay_in_their_slots():
    """fused_bw.cu's barrier_reporting_progress adds at slot (T - 1 - t) >> log2(steps) for every t of its barriers
    with t & (steps - 1) == (T - 1) & (steps - 1): t = T - 1 .. 0, and t = -1 in the scatter kernel (its first
    barrier runs in the round after step 0). Every such slot is one of counter_slots(T, steps), and the sums wait on
    slot count + 1, the boundary T - (count + 1) steps."""
    from flashrnn_core.backends import recurrent_grad as rg

    for T in (3, 5, 33, 37, 64, 100, 1000, 1024, 4096):
        for steps in (2, 8, 16, 32, 128):
            if 2 * steps >= T:
                continue
            mask, slots = steps - 1, rg.counter_slots(T, steps)
            added = [(T - 1 - t) >> mask.bit_length() for t in range(T - 1, -2, -1) if (t & mask) == ((T - 1) & mask)]
            assert max(added) < slots, (T, steps)
            for t0, _, count in rg.overlap_plan(T, steps)[:-1]:  # the boundary a sum waits for was counted there
                assert count + 1 in added and T - (count + 1) * steps == t0


def test_overlap_rule_on_the_reference_heads():
    """Where the overlap runs unforced (H100, 132 SMs; bf16 B=16 T=1024, the backward's grids): beside kernels
    that leave half the SMs idle, for sums of dR large enough to pay for what it leaves after the kernel."""
    from flashrnn_core.backends import recurrent_grad as rg

    def runs(function, N, D):
        launch = fused.choose(function, "bfloat16", 16, N, D, hardware=H100, direction="backward")
        flop = 2.0 * 16 * 1024 * CELLS[function].gates_r * N * D * D
        return not launch.choice.fused_dr and rg.overlaps(launch.grid[0] * launch.grid[1], 132, flop)

    assert all(runs(f, N, D) for f in ("lstm", "slstm", "gru") for N, D in ((3, 256), (1, 768)))
    assert runs("elman", 1, 768)
    assert not any(runs(f, 12, 64) or runs(f, 48, 16) for f in ("lstm", "slstm", "gru", "elman"))
    assert not runs("elman", 3, 256)  # 6.4 GFLOP: measured slower with it


@pytest.mark.gpu
@pytest.mark.parametrize("function, dtype_name, N, D", [
    ("lstm", "bfloat16", 3, 128),  # dr_gemm.cu's path
    ("gru", "float16", 2, 64),  # drs apart from dWx (the kernel writes both)
    ("elman", "float32", 2, 64),  # float32: dr_gemm.cu's split operands
    ("slstm", "bfloat16", 2, 256),  # cuBLAS, a GEMM batched over the heads a gate
    ("lstm", "bfloat16", 1, 768),  # cuBLAS, one GEMM; the scatter kernel
])
def test_overlapped_dr_matches_the_sum_after_the_kernel(function, dtype_name, N, D, poisoned, monkeypatch):
    """dR summed chunk by chunk beside the kernel (recurrent_grad.OverlappedDr, fused_bw.cu's progress count):
    the other gradients bitwise those of the sum after the kernel, dR within float32 summation order of it (then
    rounded to the storage type) and of vanilla's, and the same bits in two runs. T = 37 in chunks of 8: the
    last chunk (5 steps, ending at step 0) waits for the kernel's end; variable lengths, initial states."""
    import cupy

    from flashrnn_core.backends import recurrent_grad as rg

    B, T = 5, 37
    dtype = DTYPES[dtype_name]
    _skip_unless_forward(function, dtype, B, N, D)
    launch = fused.FusedBackend().bw_params(validate(*[cupy.empty(s, dtype) for s in _shapes(function, B, 1, N, D)],
                                                     function=function))
    if isinstance(launch, str) or launch.choice.fused_dr:
        pytest.skip(launch if isinstance(launch, str) else "dR in the kernel: nothing to overlap")
    rng = np.random.default_rng(zlib.crc32(repr((function, dtype_name, N, D)).encode()))
    host = _inputs(rng, function, dtype, B, T, N, D, True)
    lengths = np.array([T, 1, 20, T - 3, 9], np.int32)
    dst, dl = _upstream(rng, function, "all+last", B, T, N, D)
    dst, dl = (cupy.asarray(a.astype(np.float32).astype(dtype)) for a in (dst, dl))
    out = fc.forward(*[cupy.asarray(a) for a in host], function=function, backend="cuda_fused",
                     lengths=cupy.asarray(lengths))
    sums, overlapped_sum = [], rg.OverlappedDr.sum

    def counted_sum(self, *args):
        sums.append(self.steps)
        return overlapped_sum(self, *args)

    def grads(chunk):
        monkeypatch.setenv(rg.OVERLAP_ENV, chunk)
        g = fc.backward(out, dstates=dst, dlast_states=dl)
        return {name: cupy.asnumpy(getattr(g, name)) for name in ("dWx", "dR", "db", "dstates_initial")}

    monkeypatch.setattr(rg.OverlappedDr, "sum", counted_sum)

    serial, first, second = grads("0"), grads("8"), grads("8")
    assert sums == [8, 8], "the overlapped sum did not run"
    for name in ("dWx", "db", "dstates_initial"):
        np.testing.assert_array_equal(first[name], serial[name], err_msg=name)
    assert first["dR"].tobytes() == second["dR"].tobytes(), "dR differs between two runs"
    assert _rel(first["dR"], serial["dR"]) < (1e-5 if dtype_name == "float32" else 4e-3)
    ref = fc.forward(*[a.astype(np.float64) for a in host], function=function, backend="vanilla", lengths=lengths)
    ref_dR = fc.backward(ref, dstates=cupy.asnumpy(dst).astype(np.float64),
                         dlast_states=cupy.asnumpy(dl).astype(np.float64)).dR
    assert _rel(first["dR"], ref_dR) < TOL[dtype_name] * (2 if dtype_name != "float32" else 10)


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


def test_bw_variants_are_the_solvers_choices():
    """Every backward kernel compile --check builds is a ConstrINT choice, and every cell's 16-bit and float32
    reference head (D=64) has one on both CI presets (one block a head on A100; on H100 a cluster where the
    model weighs it faster)."""
    specs = [s for s in fused.solver_variants() if s.entry == fused.BW_ENTRY]
    for hw, function, dtype in itertools.product((A100, H100), CELLS, DTYPES.values()):
        launch = fused.choose(function, dtype, 16, 12, 64, hardware=hw, direction="backward")
        assert isinstance(launch, fused.Launch), launch
        assert launch.spec in specs or replace(launch.spec, min_sm=80) in specs
        choice = launch.choice
        # (sm_90: a cluster a head where the model weighs it faster, KernelModel.bw_clusters_weighed_from_d)
        assert choice.direction == "backward" and launch.grid == (12 * launch.cluster, 2)
        assert launch.cluster == 1 or hw.clusters
        assert launch.cluster > 1 or launch.threads == 2 * 64 * choice.k_split
        assert not (choice.fused_dr and dtype == DTYPES["float32"])  # dR tiles multiply 16-bit operands
        assert launch.smem_bytes <= hw.smem_per_block_optin


def test_backward_input_copy_strides_fit_32_bits():
    """The drs-exchange kernel's input copies keep each piece's per-step stride in bytes as 32 bits (fused_bw.cu
    InPieces): a float32 problem whose step of saved rows (N*D*n_saved*4 bytes) reaches 2^32 gets no launch, and
    says which limit; half the heads still launch."""
    launch = fused.choose("lstm", DTYPES["float32"], 1, 2**23, 16, hardware=H100, direction="backward")
    assert not isinstance(launch, str) and not launch.choice.scatter
    reason = fused.choose("lstm", DTYPES["float32"], 1, 2**24, 16, hardware=H100, direction="backward")
    assert isinstance(reason, str) and "N*D*n_saved*itemsize < 2^32" in reason


def test_backward_too_large_for_one_block_says_why():
    """One block a head where R^T fits one (no sm_80 head above that); a cluster a head on sm_90 where it does not;
    lstm and slstm D=768 (4.7 MB of R^T, ~380 KB an SM of 16 with the drs buffers and stages) on scatter clusters,
    and where the model estimates them faster than the cluster kernel with R^T in shared memory; where no stage
    takes a head (slstm D=704: 4 MB of R^T and only 11-block clusters split it), no launch, said in words; slstm
    D=640, which no power-of-two cluster splits, on a 10-block scatter cluster."""
    launch = fused.choose("lstm", DTYPES["bfloat16"], 16, 12, 64, hardware=A100, direction="backward")
    assert launch.cluster == 1
    launch = fused.choose("lstm", DTYPES["bfloat16"], 16, 12, 32, hardware=H100, direction="backward")
    assert launch.cluster == 1  # (below KernelModel.bw_clusters_weighed_from_d: one block, no cluster weighed)
    reason = fused.choose("lstm", DTYPES["bfloat16"], 16, 3, 256, hardware=A100, direction="backward")
    assert isinstance(reason, str) and "fused backward kernel on A100" in reason
    launch = fused.choose("lstm", DTYPES["bfloat16"], 16, 3, 256, hardware=H100, direction="backward")
    assert launch.cluster > 1 and launch.grid == (3 * launch.cluster, 2) and "cluster" in launch.spec.label
    # lstm D=512 and gru D=768: a 16-block cluster kernel with R^T partly in shared memory is feasible, and the
    # scatter kernel, weighed against it (problems._weighed_with), is estimated faster.
    from flashrnn_core.constrint.problems import DEFAULT_MODEL, build_fused, params_from

    for function, D in (("lstm", 512), ("gru", 768)):
        launch = fused.choose(function, DTYPES["bfloat16"], 16, 1, D, hardware=H100, direction="backward")
        assert launch.cluster == 16 and launch.choice.scatter
        fp = build_fused(H100, function, "bfloat16", 16, 1, D, "backward", DEFAULT_MODEL)
        cluster_kernel = params_from(fp, fp.problem.solve(explain=False).values)
        assert cluster_kernel.r_ktiles_in_smem > 0 and not cluster_kernel.scatter
        assert launch.choice.step_cycles < cluster_kernel.step_cycles
    for function in ("lstm", "slstm"):
        launch = fused.choose(function, DTYPES["bfloat16"], 16, 1, 768, hardware=H100, direction="backward")
        assert launch.cluster == 16 and launch.choice.scatter and "scatter" in launch.spec.label
    reason = fused.choose("slstm", DTYPES["bfloat16"], 16, 1, 704, hardware=H100, direction="backward")
    assert isinstance(reason, str) and "fused backward kernel" in reason and "registers" in reason
    assert "scatter cluster" in reason
    launch = fused.choose("slstm", DTYPES["bfloat16"], 16, 1, 640, hardware=H100, direction="backward")
    assert launch.cluster == 10 and launch.choice.scatter and "cluster10 scatter" in launch.spec.label
    # A cluster kernel that runs in more than one wave (12 heads) is weighed against the scatter kernel, which
    # holds R^T on fewer blocks (problems._weighed_with: measured 42-54% faster at 12x256-12x768 in bf16); in one
    # wave (3 heads) it is not, and lstm 3x256 keeps the cluster kernel (measured 29% faster there).
    for function, D in (("lstm", 256), ("gru", 512), ("elman", 768)):
        launch = fused.choose(function, DTYPES["bfloat16"], 16, 12, D, hardware=H100, direction="backward")
        assert launch.choice.scatter, (function, D, launch.choice.summary())
        fp = build_fused(H100, function, "bfloat16", 16, 12, D, "backward", DEFAULT_MODEL)
        cluster_kernel = params_from(fp, fp.problem.solve(explain=False).values)
        assert launch.choice.waves < cluster_kernel.waves and not cluster_kernel.r_ktiles_in_smem
    launch = fused.choose("lstm", DTYPES["bfloat16"], 16, 3, 256, hardware=H100, direction="backward")
    assert not launch.choice.scatter and launch.choice.waves == 1 and launch.cluster == 8
    # float32 (R^T as bf16 hi + lo, twice the bytes): lstm/slstm D = 384 and 512 and gru D = 384 only on scatter
    # clusters, and lstm/slstm D = 256 where they are weighed against the cluster kernel (problems._weighed_with,
    # measured faster); gru D = 256's cluster kernel holds R^T in registers, so no scatter kernel is weighed there.
    for function, D, blocks in (("lstm", 512, 16), ("slstm", 512, 16), ("lstm", 384, 8), ("gru", 384, 8),
                                ("lstm", 256, 8), ("slstm", 256, 8)):
        launch = fused.choose(function, DTYPES["float32"], 16, 3, D, hardware=H100, direction="backward")
        assert launch.cluster == blocks and launch.choice.scatter and "float32" in launch.spec.label
    launch = fused.choose("gru", DTYPES["float32"], 16, 3, 256, hardware=H100, direction="backward")
    assert launch.cluster > 1 and not launch.choice.scatter and not launch.choice.r_ktiles_in_smem
    # float32 D = 768: R^T's hi + lo fit no scatter cluster; gru's fp16 operands do (drs scaled a batch row), lstm's
    # only with one receive buffer for its float32 partials (ScatterTile::ONE_RECV), slstm's (whose stages hold
    # more state rows) only with one input stage too (ScatterTile::ONE_STAGE, the very last stage: prefetch 0)
    launch = fused.choose("gru", DTYPES["float32"], 16, 1, 768, hardware=H100, direction="backward")
    assert launch.choice.scatter and launch.choice.half_operands and " f16ops" in launch.spec.label
    assert dict(launch.spec.defines)["FLASHRNN_F32_HALF"] == "1" and not launch.choice.one_recv
    launch = fused.choose("lstm", DTYPES["float32"], 16, 1, 768, hardware=H100, direction="backward")
    assert launch.choice.scatter and launch.choice.half_operands and launch.choice.one_recv
    assert dict(launch.spec.defines)["FLASHRNN_ONE_RECV"] == "1" and " onerecv" in launch.spec.label
    assert launch.choice.prefetch_steps > 0
    for D, blocks in ((768, 16), (672, 14)):
        launch = fused.choose("slstm", DTYPES["float32"], 16, 1, D, hardware=H100, direction="backward")
        assert launch.cluster == blocks and launch.choice.scatter and launch.choice.one_recv, launch
        assert launch.choice.prefetch_steps == 0 and dict(launch.spec.defines)["FLASHRNN_PREFETCH"] == "0"
        assert " p0 " in launch.spec.label


def scatter_configurations(hw, function, dtype_name, B, N, D):
    """The scatter stage's configurations of one shape: for each (cluster, warps, prefetch), the least and the
    most of R^T's tiles in shared memory."""
    from dataclasses import replace as replace_model

    from flashrnn_core.constrint.problems import DEFAULT_MODEL, build_fused, params_from

    fp = build_fused(hw, function, dtype_name, B, N, D, "backward", replace_model(DEFAULT_MODEL, bw_scatter=True))
    by_shape: dict = {}
    for values in fp.problem.solutions():
        by_shape.setdefault((values["cluster"], values["warps"], values["prefetch"]), []).append(values)
    chosen = []
    for group in by_shape.values():
        fewest, most = (f(group, key=lambda v: v["r_smem_tiles"]) for f in (min, max))
        chosen += [fewest] if fewest is most else [fewest, most]
    return [params_from(fp, v) for v in chosen]


def test_scatter_configurations_compile_without_spills():
    """Every scatter configuration the GPU tests run (D = 256; float32's at prefetch 3) compiles for sm_90 within
    the solver's register estimate's promise: no spill; and the solver's lstm and slstm 1x768 choices at B = 16
    and 256, and float32's at D = 384 and 512."""
    import os

    from flashrnn_core.compile import run_jobs

    configs = [c for f in CELLS for c in scatter_configurations(H100, f, "bfloat16", 9, 2, 256)]
    configs += [fused.choose(f, DTYPES["bfloat16"], B, 1, 768, hardware=H100, direction="backward").choice
                for f in ("lstm", "slstm") for B in (16, 256)]
    # float32 (two operand parts a tile, float partials): the GPU tests' D = 256 configurations at the deepest
    # prefetch (the others differ in the stages' shared memory only), and the solver's D = 384 and 512 choices.
    configs += [c for f in CELLS for c in scatter_configurations(H100, f, "float32", 9, 2, 256)
                if c.prefetch_steps == 3]
    configs += [fused.choose(f, DTYPES["float32"], 16, 1, D, hardware=H100, direction="backward").choice
                for f in ("lstm", "slstm") for D in (384, 512)]
    assert len(configs) > 40 and all(c.scatter for c in configs)
    outcomes = run_jobs([(fused.launch_of(c).spec, "sm_90") for c in configs], os.cpu_count() or 1)
    for config, outcome in zip(configs, outcomes):
        assert not outcome.error, outcome.error
        assert outcome.resources.spill_stores == 0 and outcome.resources.stack == 0, fused.launch_of(config).spec.label


def test_kernel_refuses_a_launch_the_solver_did_not_describe():
    """The solver's threads and shared memory are held to the kernel's Tile by static_asserts (a disagreement
    does not compile), and so is dR in the kernel for float32's split operands."""
    from flashrnn_core.errors import CompileError
    from flashrnn_core.runtime import KernelSpec, compile_spec

    def chosen(dtype_name: str, D: int, N: int = 12, direction: str = "backward"):
        return fused.choose("lstm", DTYPES[dtype_name], 16, N, D, hardware=H100, direction=direction).spec

    def edited(spec, define: str, value):  # ``value(old)``: the define's new value from its old one
        return replace(spec, defines=tuple((k, str(value(v)) if k == define else v) for k, v in spec.defines))

    def refused(spec, match: str):
        with pytest.raises(CompileError, match=match):
            compile_spec(spec, "sm_90", use_cache=False)

    smem, threads = "the solver's shared memory disagrees", "the solver's threads disagree"
    refused(edited(chosen("bfloat16", 64), "FLASHRNN_SMEM_BYTES", lambda v: int(v) + 16), smem)
    refused(edited(chosen("float32", 32), "FLASHRNN_FUSED_DR", lambda v: 1), "dR in the kernel multiplies 16-bit")
    refused(edited(chosen("bfloat16", 768, N=1), "FLASHRNN_SMEM_BYTES", lambda v: int(v) - 512), smem)  # scatter
    refused(edited(chosen("bfloat16", 64, direction="forward"), "FLASHRNN_THREADS", lambda v: int(v) + 32), threads)
    # Without the host's numbers (a source compiled alone, on common/entry.cuh's defaults) nothing is checked.
    for source, entry in ((fused.SOURCE, fused.ENTRY), (fused.BW_SOURCE, fused.BW_ENTRY)):
        alone = compile_spec(KernelSpec(source, entry, label=f"{source} alone"), "sm_90", use_cache=False)
        assert alone.resources is not None and alone.resources.spill_stores == 0


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["block", "cluster", "scatter"])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
@pytest.mark.parametrize("function", list(CELLS))
def test_every_feasible_backward_configuration_matches_vanilla(function, dtype_name, kind, poisoned):
    """The solver picks one configuration a shape, but may pick any it admits on another GPU or shape (and
    ``python -m flashrnn_core.tune`` stores the fastest measured): each one (k split, prefetch, dR in the
    kernel or not; blocks a head) gives vanilla's gradients. Clusters: every configuration of heads no block
    holds, and of heads one block holds too (D = 64 and 128: the solver weighs them there,
    KernelModel.bw_clusters_weighed_from_d; elman's from D = 128).
    Scatter clusters are the solver's last stage (16-bit: lstm/slstm D = 768 and where weighed faster; float32:
    the heads no other stage takes, lstm/slstm D = 384-512): here every (cluster, warps, prefetch) of theirs at
    D = 256, with the fewest and the most of R^T's tiles in shared memory. Kernels are compiled up front on every
    core."""
    import os

    from flashrnn_core.compile import run_jobs
    from flashrnn_core.constrint.hardware import current
    from flashrnn_core.constrint.problems import DEFAULT_MODEL, all_feasible
    from flashrnn_core.runtime import device_arch
    from flashrnn_core.tune import pinned

    B, T, N = 9, 7, 2
    D = 64 if dtype_name != "float32" else 32
    clustered = kind != "block"
    cases = []  # (D, configurations)
    if clustered:  # heads no block holds: every cluster configuration (sm_90)
        if current().clusters is False:
            pytest.skip("thread-block clusters need sm_90")
        D = 128 if dtype_name == "float32" and function != "elman" else 256  # (elman float32 128 fits a block)
        weighed_from = DEFAULT_MODEL.bw_clusters_weighed_from(function)
        sizes = [held for held in (64, 128) if weighed_from <= held]  # ... of heads one block holds too
        if dtype_name == "float32" and function != "elman":  # ... and float32's with R^T partly in shared memory
            sizes.append(256)
        if kind == "cluster":
            cases += [(d, [c for c in all_feasible(current(), function, dtype_name, B, N, d, direction="backward")
                           if c.blocks_per_head > 1]) for d in sizes if d != D]
    if kind == "scatter":
        D = 256
        if function == "elman" and dtype_name != "float32":  # (its blocks' shared memory is under half an SM's: the stage takes none)
            pytest.skip("elman D=256: no scatter configuration (one block an SM)")
        cases.append((D, scatter_configurations(current(), function, dtype_name, B, N, D)))
    else:
        configs = [c for c in all_feasible(current(), function, dtype_name, B, N, D, direction="backward")
                   if (c.blocks_per_head > 1) == clustered]
        assert clustered or {c.k_split for c in configs} >= {2, 4}
        cases.append((D, configs))
    assert all(configs and all((c.blocks_per_head > 1) == clustered for c in configs) for _, configs in cases)
    specs = [fused.launch_of(c).spec for _, configs in cases for c in configs]
    failed = [o for o in run_jobs([(spec, device_arch()) for spec in specs], os.cpu_count() or 1) if o.error]
    assert not failed, failed[0].error
    for D, configs in cases:
        _check_backward_configurations(function, dtype_name, B, T, N, D, configs, pinned)


def _check_backward_configurations(function, dtype_name, B, T, N, D, configs, pinned):
    """Each of ``configs`` (pinned) gives vanilla's gradients on one set of random inputs of this shape."""
    import cupy

    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(zlib.crc32(repr((function, dtype_name, "every config")).encode()))
    host = _inputs(rng, function, dtype, B, T, N, D, True)
    dst, dl = _upstream(rng, function, "all+last", B, T, N, D)
    dst, dl = (a.astype(np.float32).astype(dtype) for a in (dst, dl))
    ref = fc.forward(*[a.astype(np.float64) for a in host], function=function, backend="vanilla")
    ref_grads = fc.backward(ref, dstates=dst.astype(np.float64), dlast_states=dl.astype(np.float64))
    Wx, R, b, s0 = (cupy.asarray(a) for a in host)
    problem = validate(Wx, R, b, s0, function=function)
    states, saved = fused.FusedBackend().forward(problem, Wx, R, b, s0)
    tol = TOL[dtype_name] * (2 if dtype_name != "float32" else 10)
    for config in configs:
        grads = pinned(config).backward(problem, Wx, R, b, s0, states, saved, cupy.asarray(dst), cupy.asarray(dl))
        for name, got, want in (("dWx", grads.dWx, ref_grads.dWx), ("dR", grads.dR, ref_grads.dR),
                                ("db", grads.db, ref_grads.db),
                                ("dinit", grads.dstates_initial, ref_grads.dstates_initial)):
            got = cupy.asnumpy(got)
            if name == "dinit" and function == "slstm":
                got, want = got[:3], want[:3]
            err = _rel(got, want.reshape(got.shape))
            assert err < tol, f"{fused.launch_of(config).spec.label}: {name} relative error {err:.2e} >= {tol:g}"
