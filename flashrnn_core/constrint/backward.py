"""The fused backward kernel (``cuda_src/fused_bw.cu``) as an integer constraint problem.

``build_backward(hardware, function, dtype, B, N, D, model)`` is what ``solve_fused(..., direction="backward")``
solves. The kernel runs ``cluster`` blocks per (head, tile of 8 sequences), each owning ``D / cluster`` dims:
``warps_m`` M tiles of 16 rows of R^T, each shared by ``ksplit`` warps that split K (every gate's rows,
``Gr * D / 16`` k-tiles) and meet in shared memory, so a lane runs ``4 / ksplit`` cells. A cluster's blocks send
their drs columns to each other every step (distributed shared memory, as the forward's h). Its inputs are staged
by cp.async ``prefetch`` steps ahead; dR is summed in the kernel (``fused_dr``, one block a head: m16n8k8 tiles,
``ceil(DR_TILES / warps)`` accumulator tiles a warp) or is a GEMM over all B*T after it.

Variables (names as in the solver's explanations):
    cluster      blocks a head (a thread-block cluster when > 1, sm_90)
    warps_m      M tiles of 16 dims a block: 16 * warps_m * cluster == D
    ksplit       warps sharing one 16-row M tile (1, 2 or 4)
    prefetch     steps of inputs in flight ahead of the one computed (cp.async stages: prefetch + 2)
    fused_dr     1 where the kernel sums dR itself (16-bit storage only)
    ktw          k-tiles of R^T a warp holds: ceil(Gr * D / 16 / ksplit)
    r_smem_kt    of those, how many live in shared memory (a fallback stage, as the forward's: problems._stages)
    r_shared     1 when r_smem_kt > 0;  clustered: 1 when cluster > 1
    cells        cells a lane runs: 4 / ksplit
    tpw          dR tiles a warp holds: ceil(Gr * D / 16 * D / 8 / warps)
    alloc8, warp_groups, batch_tiles: as the forward's (problems.py)

Registers: ``BW_REGISTER_FIT`` (ptxas reports of every variant, ``bench/bw_register_data.py``; R^T partly in shared
memory has its own rule, ``KernelModel.bw_reg_rest_with_smem``). Latency: the
forward's constants where the work is the same (mma, ldmatrix, barriers) and the ``bw_*`` constants of
``KernelModel`` for the rest, calibrated by the measured sweep ``BW_LATENCY_CALIBRATION`` names.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

from .hardware import Hardware
from .solver import Expr, Problem, Var, divides

if TYPE_CHECKING:  # (problems imports this module)
    from .problems import FusedParams, FusedProblem, KernelModel

#: How the register coefficients (``KernelModel.bw_reg_*``) were chosen (documentation):
BW_REGISTER_FIT = """
Data: ptxas -v (NVRTC 12.9) for the 576 variants of cuda_src/fused_bw.cu that 2 D KS <= 1024 threads admits: 4
cells x {bf16 with and without dR in the kernel, float32} x D in 16..128 x KS in {1, 2, 4}, prefetch 2, on sm_80
and sm_90 (bench/results/constrint/bw_registers.json, ``python bench/bw_register_data.py --out ...``); 199 spill.
Fit (``python bench/bw_register_data.py --fit ...``): a linear program over ``bw_register_data.features``
(coefficients >= 0): every spilling variant estimated above its cap, minimising how far clean variants are
estimated above theirs plus 0.02 x |estimate - ptxas| where ptxas stayed below its cap. Rounded up: 0 of 199
spilling variants accepted, 19 of 377 clean ones rejected (options lost, never a spill); ptxas from 22 below to 107
above the fit where it was not capped (it takes what the cap allows). Checked, not fitted: prefetch 1 and 3 on
sm_90 (576 more variants, bench/results/constrint/bw_registers_prefetch13_sm90.json): 0 of 198 spilling variants
accepted, 20 of 378 clean ones rejected. CI compiles every choice the solver makes on its presets
(``test_constrint``'s ptxas agreement test).
Stop 19 (the stages hold only the state rows the cells read; a thread keeps 3 registers a piece of its inputs, not
7) took registers off most variants; the data were taken again (same command, bw_registers.json now holds them: 202
spill) and the same program gives the same coefficients (the spilling variants bind them): 0 of 202 spilling
variants accepted, 16 of 374 clean ones rejected, ptxas from 44 below to 70 above the fit.
"""

#: How the latency constants (``KernelModel.bw_*`` after the registers) were chosen (documentation):
BW_LATENCY_CALIBRATION = """
The structure (instructions a warp issues, at most one per ``bw_dependent_cpi`` cycles for a warp alone, a cost per
warp of the block for its barriers, the input stages' latency over the prefetch depth, dR in the kernel as tiles a
warp accumulates against dR as GEMMs after it at a fraction of DRAM bandwidth) is from issue 6's measurements
(fused_bw.cu's header). The constants were set on the H200 sweep of every feasible configuration of the 7 backward
reference shapes (111 configurations: bench/results/constrint/2026-11-30-h200-sweep-backward.json): the GEMMs'
efficiency from the dR-in-kernel / GEMM differences at B = 16, 64, 256 (12x64) and at 48x16, the load latency from
prefetch 1 against 2 at 48x16, then a grid over (cpi, fixed, per warp, skeleton, dR tile) for the smallest rms log
error among those whose choice, on the H200 and the H100 preset alike, is within 5% of the best measured on every
shape (``bench/calibrate_bw.py`` does a free least-squares fit and reports choices; its fit is closer in time but
chooses worse): rms log error 0.52 -> 0.18, worst choice 1.092 -> 1.008. A held-out sweep of 5 other shapes
(sweep_fused.py --holdout) then checked it where the constants were not set: 4 within 4% of the best, and one (2
blocks an SM assumed, 1 measured) that ``bw_occupancy_reg_margin`` fixed.
"""

BT = 8  # sequences a block (the m16n8 mma's n): fused_bw.cu Tile::BT
CELLS_PER_M_TILE_LANE = 4  # cells of a lane's m16n8 accumulator (dealt out over the ksplit warps)


def build_backward(hw: Hardware, function: str, dtype, B: int, N: int, D: int, model: "KernelModel") -> "FusedProblem":
    """The constraint problem of one backward shape (the objective included)."""
    from .problems import FusedProblem, geometry

    from .problems import _r_in_shared_memory_allowed

    if model.bw_scatter:
        return build_scatter(hw, function, dtype, B, N, D, model)
    geo = geometry(function, dtype, D, "backward")
    p = Problem()
    kt, dr_tiles = max(1, geo.kt), dr_tile_count(geo)
    r_shared_allowed = _r_in_shared_memory_allowed(model, hw, geo)
    v = {
        "cluster": p.var("cluster", model.clusters if hw.clusters else (1,)),
        "warps_m": p.var("warps_m", range(1, max(1, D // 16) + 1), priority=-1),
        "ksplit": p.var("ksplit", model.bw_ksplits, prefer="high"),
        "prefetch": p.var("prefetch", model.bw_prefetches, prefer="high"),
        "fused_dr": p.var("fused_dr", (0, 1) if geo.split == 1 else (0,), prefer="high"),
        "ktw": p.var("ktw", range(1, kt + 1), priority=-1),
        "r_smem_kt": p.var("r_smem_kt", range(0, kt + 1) if r_shared_allowed else (0,)),
        "r_shared": p.var("r_shared", (0, 1) if r_shared_allowed else (0,), priority=-1),
        "clustered": p.var("clustered", (0, 1), priority=-1),
        "cells": p.var("cells", (1, 2, 4), priority=-1),
        "tpw": p.var("tpw", range(1, dr_tiles + 1), priority=-1),
        "alloc8": p.var("alloc8", range(1, 1025), priority=-1),
        "warp_groups": p.var("warp_groups", range(1, hw.max_threads_per_block // hw.warp_size + 1), priority=-1),
        "batch_tiles": p.var("batch_tiles", range(1, math.ceil(B / BT) + 1), priority=-1),
    }
    regs, smem = resources(geo, model, v)
    _add_constraints(p, v, geo, hw, model, B, N, kt, dr_tiles, regs, smem)
    fp = FusedProblem(p, v, geo, hw, model, B, N, regs, smem)
    p.minimize(lambda values: estimate(fp, values)["total"])
    return fp


def dr_tile_count(geo) -> int:
    """m16n8k8 tiles of one head's dR ([Gr*D, D]): fused_bw.cu's Tile::DR_TILES."""
    return max(1, geo.gr * geo.D // 16 * (geo.D // 8))


def configuration_values(geo, ksplit: int, prefetch: int, fused_dr: bool, cluster: int = 1,
                         r_smem_kt: int = 0) -> dict[str, int]:
    """The problem's variables for one given configuration (the ones ``resources`` and ``estimate`` read), as
    the constraints determine them: for fits and calibrations over measured or compiled variants."""
    warps_m = geo.D // 16 // cluster
    warps = warps_m * ksplit
    return {"cluster": cluster, "warps_m": warps_m, "ksplit": ksplit, "prefetch": prefetch, "fused_dr": int(fused_dr),
            "ktw": -(-max(1, geo.kt) // ksplit), "r_smem_kt": r_smem_kt, "r_shared": int(r_smem_kt > 0),
            "clustered": int(cluster > 1), "cells": CELLS_PER_M_TILE_LANE // ksplit,
            "tpw": -(-dr_tile_count(geo) // warps)}


def on_domain(var: Var, table: dict[int, int]) -> Expr:
    """The polynomial of ``var`` that takes ``table[x]`` at every x of the table (Lagrange's): a per-value
    constant the solver can hold in a constraint. ``var``'s domain must be the table's keys."""
    total = Expr.lift(0)
    for x, y in table.items():
        term = Expr.lift(Fraction(y))
        for other in table:
            if other != x:
                term = term * (var - other) * Fraction(1, x - other)
        total = total + term
    return total


def split_k(ksplit: Expr) -> Expr:
    """``ksplit`` where it is 2 or 4, 0 where it is 1 (exact over the domain {1, 2, 4}: the polynomial through
    those three points), for what exists only when warps split K."""
    return ksplit - Fraction(1, 3) * (ksplit - 2) * (ksplit - 4)


def resources(geo, m: "KernelModel", v: dict[str, Var]) -> tuple[Expr, Expr]:
    """(registers per thread, dynamic shared memory per block) as polynomials of the variables; the shared
    memory is fused_bw.cu's ``Tile::SMEM_BYTES`` exactly (its static_assert holds the launch to it)."""
    from .problems import any_cluster_margin

    ksplit, prefetch, fused_dr, ktw, cells, tpw, warps_m, r_smem, r_shared, clustered = (
        v[k] for k in ("ksplit", "prefetch", "fused_dr", "ktw", "cells", "tpw", "warps_m", "r_smem_kt", "r_shared",
                       "clustered"))
    split, item, D = geo.split, geo.itemsize, geo.D
    # Registers: R^T's A-fragments (4 a k-tile and operand part), the cells' live values, dR's accumulators
    # (BW_REGISTER_FIT; split-K's own addressing got 0 there). With R^T partly in shared memory (r_shared = 1):
    # its registers one for one, and the rest at a factor of its estimate that falls with the block's warps
    # and is lower for float32 (KernelModel.bw_reg_rest_with_smem*).
    r_regs = 4 * split * (ktw - r_smem)
    rest = (m.bw_reg_base + m.bw_reg_per_cell_value * cells * geo.live_per_cell + m.bw_reg_per_dr * 4 * tpw * fused_dr
            + m.bw_reg_cluster_split * clustered * (split - 1))
    smem_factor = (m.bw_reg_rest_with_smem - m.bw_reg_rest_with_smem_per_warp * warps_m * ksplit
                   - m.bw_reg_rest_with_smem_split * (split - 1))
    regs = (m.bw_reg_margin + (1 + m.bw_reg_margin_fraction) * (rest + m.bw_reg_per_r * r_regs) * (1 - r_shared)
            + r_shared * (r_regs + smem_factor * rest + any_cluster_margin(m)))
    # Shared memory, as Tile: drs double-buffered as bf16 operands over every gate's rows (+8 pad), the split-K
    # partial sums (none at ksplit 1), the input stages (prefetch + 2 of them), the staged outputs (two), over the
    # block's 16 * warps_m dims; two mbarriers in a cluster; R^T's shared-memory k-tiles.
    row = (16 * warps_m + 16 // item) * item  # one staged row of the block's dims and a 16-byte pad, bytes
    buf = 2 * split * BT * (geo.gr * D + 8) * 2
    # ksplit * warps_m * 4 * 32 floats of split-K partial sums when ksplit > 1, none at 1: over ksplit's domain
    # {1, 2, 4}, ``split_k(ksplit)`` is exactly ksplit where it is above 1 and 0 at 1.
    red = split_k(ksplit) * warps_m * 4 * 32 * 4
    stage = (BT * geo.n_saved + BT * geo.staged_state_rows(fused_dr)) * row
    outputs = geo.gw + geo.gr * (1 - fused_dr) * (1 if geo.function == "gru" else 0)
    out = 2 * BT * outputs * row
    bars = 16 * clustered
    r_bytes = warps_m * ksplit * r_smem * split * 512
    return regs, buf + red + (prefetch + 2) * stage + out + bars + r_bytes


def _add_constraints(p: Problem, v: dict[str, Var], geo, hw: Hardware, model: "KernelModel", B: int, N: int,
                     kt: int, dr_tiles: int, regs: Expr, smem: Expr) -> None:
    """Every condition of a valid, spill-free launch of fused_bw.cu, named for the explanations (hardware
    budgets first)."""
    from .problems import add_block_budgets, add_cluster_constraints

    ksplit, ktw, cells, tpw, cluster = v["ksplit"], v["ktw"], v["cells"], v["tpw"], v["cluster"]
    warps = v["warps_m"] * ksplit
    add_block_budgets(p, v, hw, regs, smem, warps)
    add_cluster_constraints(p, v, hw, model, smem, max(1, geo.kt))
    p.add(BT * v["batch_tiles"] >= B, name="batch tiles cover the batch")
    p.add(BT * (v["batch_tiles"] - 1) < B, name="batch tiles: the least that cover it")
    # -- the kernel's tiling
    p.add(divides(16, geo.D), name="D divisible by 16 (mma tiles)")
    p.add(16 * v["warps_m"] * cluster == geo.D, name="D split evenly: blocks per head x 16-dim M tiles x 16 == D")
    p.add(v["r_smem_kt"] <= ktw, name="R^T k-tiles in shared memory <= k-tiles per warp")
    p.add(v["fused_dr"] + v["clustered"] <= 1, name="dR in the kernel: one block a head")
    p.add(warps <= 12 + 20 * (1 - v["r_shared"]), name="R^T in shared memory: at most 12 warps (its register rule)")
    p.add(ktw * ksplit >= kt, name="k-tiles a warp >= ceil(Gr*D/16 / ksplit)")
    p.add((ktw - 1) * ksplit < kt, name="k-tiles a warp: the least such")
    p.add(cells * ksplit == CELLS_PER_M_TILE_LANE, name="cells a lane x ksplit == 4")
    p.add(tpw * warps >= dr_tiles, name="dR tiles a warp >= ceil(dR tiles / warps)")
    p.add((tpw - 1) * warps < dr_tiles, name="dR tiles a warp: the least such")
    p.add(Expr.lift(N * geo.D * max(geo.gw, geo.n_saved)) <= 2**31 - 1,
          name="N*D*gates < 2^31 (32-bit per-step pointer offsets)")
    p.add(Expr.lift(N * geo.D * geo.n_saved * geo.itemsize) <= 2**32 - 1,
          name="N*D*n_saved*itemsize < 2^32 (the input copies' 32-bit per-step byte strides, fused_bw.cu InPieces)")


def estimate(fp: "FusedProblem", values: dict[str, int]) -> dict[str, float]:
    """Cycles per time step of the whole backward (``total``) with its terms.

    A block's step is its warps' instructions (``instructions``: per warp, counted per cell, per k-tile, per dR
    tile) issued by the schedulers they share, at most one per ``bw_dependent_cpi`` cycles for a warp alone
    (a lane's instructions mostly wait on their predecessor: issue 6 measured KS = 1, one warp a scheduler, at
    ~6 cycles an instruction), or the step's dependent chain where that is longer, plus the fixed cost of its
    barriers and stage waits; no shorter than the input stages' load latency over the prefetch depth. Waves
    run one after another; dR as GEMMs after the kernel adds its streamed bytes per step. A cluster adds the
    forward's exchange term (``problems._exchange_cycles``: drs's Gr*D/cluster columns from each other block)
    to the chain, and R^T's shared-memory k-tiles their loads' issue and the SM's shared-memory bandwidth.
    """
    from .problems import _at, _exchange_cycles, blocks_per_sm, cluster_slots

    if fp.model.bw_scatter:
        return scatter_estimate(fp, values)
    geo, m, hw = fp.geo, fp.model, fp.hw
    ks, cells, ktw, tpw, dr = (values[k] for k in ("ksplit", "cells", "ktw", "tpw", "fused_dr"))
    cluster, r_smem = values["cluster"], values["r_smem_kt"]
    warps = values["warps_m"] * ks
    threads = warps * hw.warp_size
    regs, smem = _at(fp.regs, fp, values), int(_at(fp.smem, fp, values))
    per_sm = max(1, blocks_per_sm(hw, threads, regs + m.bw_occupancy_reg_margin, smem))
    blocks = fp.N * cluster * math.ceil(fp.B / BT)
    waves = max(1, math.ceil(blocks / max(1, cluster_slots(hw, cluster, per_sm) * cluster)))
    on_sm = min(per_sm, math.ceil(blocks / hw.sm_count))
    wps = warps * on_sm / m.schedulers
    cost = m.bw_cells[geo.function]
    per_cell = cost.issue + m.bw_input_issue * (geo.n_saved + 2 * geo.states) + m.bw_output_issue * geo.gw
    instructions = {
        "skeleton": m.bw_skeleton_issue,
        "cells": cells * per_cell,
        "mma": geo.mma_split * ktw + geo.split * math.ceil(ktw / 2),  # mma and ldmatrix.x4 of drs
        "r_smem": geo.split * r_smem,  # R^T's shared-memory fragments (one 16-byte load each)
        "reduction": m.bw_ksplit_issue * cells if ks > 1 else 0,
        "dr_tiles": m.bw_dr_tile_issue * tpw * dr,
    }
    per_warp = sum(instructions.values())
    issue = per_warp * max(wps, m.bw_dependent_cpi) * (1 + m.bw_co_resident_issue * (on_sm - 1))
    chains = min(ktw, m.chains_wanted)
    r_bandwidth = warps * on_sm * r_smem * geo.split * 512 / m.smem_bytes_per_cycle
    exchange = _exchange_cycles(fp, {**values, "nbt": 1})
    chain = (m.ldmatrix_latency + max(math.ceil(ktw / chains) * geo.mma_split * m.mma_latency, r_bandwidth)
             + (m.ksplit_exchange + m.sync_threads if ks > 1 else 0) + cost.latency + m.sync_threads + exchange)
    step = max(issue, chain) + m.bw_fixed + m.bw_fixed_per_warp * warps
    step = max(step, m.bw_load_latency / values["prefetch"])
    gemm = 0 if dr else dr_after_cycles(fp)
    total = waves * step + gemm
    return {"total": total, "step": step, "issue": issue, "chain": chain, "gemm": gemm, "waves": waves,
            "exchange": exchange,
            "blocks": blocks, "on_sm": on_sm, "warps_per_scheduler": wps, "instructions": per_warp,
            "prefetch_bound": m.bw_load_latency / values["prefetch"], "regs": regs, "smem": smem,
            "blocks_per_sm": per_sm, **{f"instr_{k}": x for k, x in instructions.items()}}


def params_from(fp: "FusedProblem", values: dict[str, int]) -> "FusedParams":
    """A backward solution's ``FusedParams``: ``blocks_per_head`` blocks per head (``sync`` "cluster" when > 1)
    and batch tile of 8; ``warps_along_dims`` M tiles of 16 rows a block, each over ``k_split`` warps."""
    if fp.model.bw_scatter:
        return scatter_params_from(fp, values)
    cluster, ks = values["cluster"], values["ksplit"]
    return _backward_params(
        fp, estimate(fp, values), values, warps=values["warps_m"] * ks, r_smem_tiles=values["r_smem_kt"],
        rows_per_block=fp.geo.D // cluster, warps_along_dims=values["warps_m"], dims_per_warp=16, k_split=ks,
        ktiles_per_warp=values["ktw"], fused_dr=bool(values["fused_dr"]))


def _backward_params(fp: "FusedProblem", e: dict, values: dict[str, int], warps: int, r_smem_tiles: int,
                     **kernel_fields) -> "FusedParams":
    """The ``FusedParams`` fields both backward kernels fill alike, from the solution ``values`` and its estimate
    ``e``: the head on ``values["cluster"]`` blocks of ``warps`` warps and batch tiles of 8, R^T's bytes split
    between registers and shared memory (``r_smem_tiles`` tiles of 512 bytes a warp), the estimate's figures;
    ``kernel_fields`` are the kernel's own (its rows, warps and tiles of R^T)."""
    from .problems import FusedParams, register_cap

    geo, hw, cluster = fp.geo, fp.hw, values["cluster"]
    threads = warps * hw.warp_size
    tiles = math.ceil(fp.B / BT)
    r_smem_bytes = warps * r_smem_tiles * geo.split * 512
    r_total = geo.gr * geo.D * geo.D * 2 * geo.split // cluster
    return FusedParams(
        function=geo.function, dtype=geo.dtype, direction="backward", B=fp.B, N=fp.N, D=geo.D, hardware=hw.name,
        arch=hw.arch, blocks_per_head=cluster, dims_per_block=geo.D // cluster, batch_ntiles=1, batch_tile=BT,
        batch_tiles=tiles, warps_per_block=warps, threads_per_block=threads, r_ktiles_in_smem=r_smem_tiles,
        r_bytes_registers=r_total - r_smem_bytes, r_bytes_smem=r_smem_bytes, prefetch_steps=values["prefetch"],
        sync="block" if cluster == 1 else "cluster", smem_bytes=int(e["smem"]),
        registers_estimate=math.ceil(round(e["regs"], 6)), register_cap=register_cap(hw, threads),
        blocks_per_sm=int(e["blocks_per_sm"]), grid=(fp.N * cluster, tiles), waves=int(e["waves"]),
        step_cycles=e["total"], step_us=hw.cycles_to_us(e["total"]),
        breakdown={k: round(float(x), 1) for k, x in e.items()}, **kernel_fields)


# ---------------------------------------------------------------------------------------------- scatter clusters

#: The data behind ``KernelModel.bw_scatter_reg_rest`` (documentation): ptxas -v (NVRTC 12.9, sm_90) of
#: fused_bw.cu's scatter kernel at D = 768 on 16 blocks, prefetch 1: the most register tiles of R^T (KRF, 4
#: registers each) that compile without a spill, and the rest that leaves under the register cap.
SCATTER_REGISTER_DATA = """
cell   warps cap  max KRF of tiles  rest   (ptxas with KRF = 0)
lstm   6     255  38 of 96          103    132
lstm   8     255  40 of 72          95     125
lstm   12    168  23 of 48          76     107
slstm  6     255  33 of 96          123    151
slstm  8     255  38 of 72          103    133
slstm  12    168  18 of 48          96     133
gru    6     255  38 of 72          103    129
gru    8     255  39 of 54          99     124
gru    12    168  25 of 36          68     103
elman  6     255  24 of 24          -      103
elman  8     255  18 of 18          -      96
elman  12    168  12 of 12          -      94
(Stop 19: the stages hold only the state rows the cells read and a thread keeps 3 registers a piece of its
inputs instead of 7: lstm 8 warps 33 -> 40 register tiles, slstm 29 -> 38, which made slstm D = 768 fit. Found by
bisection, ``python bench/scatter_register_data.py``: the fewest R_SMEM that ptxas compiles without a spill.)
"""

#: The same for the float32 variant (``KernelModel.bw_scatter_reg_rest_float32``; rest = cap - 8 KRF), at the heads
#: it is for (float32 R^T at D = 768 is 9.4 MB, no 16 SMs hold it): ``python bench/scatter_register_data.py --dtype
#: float32 --d 512 --warps 4,8,16``, ``--d 384 --cluster 8 --warps 6,8,12`` and ``--d 256 --cluster 4 --warps 8,16``
#: (16 warps there spilled under the D = 512 rule, which a wider block's cells raise). At D = 256 on 16 blocks every
#: tile fits at 4, 8 and 16 warps.
SCATTER_REGISTER_DATA_FLOAT32 = """
D    blocks cell   warps cap  max KRF of tiles  rest   (ptxas with KRF = 0)
512  16     lstm   4     255  19 of 64          103    166
512  16     lstm   8     255  23 of 32          71     86
512  16     lstm   16    128  9 of 16           56     72
512  16     slstm  4     255  18 of 64          111    168
512  16     slstm  8     255  22 of 32          79     99
512  16     slstm  16    128  7 of 16           72     83
512  16     gru    4     255  20 of 48          95     148
512  16     gru    8     255  23 of 24          71     86
512  16     gru    16    128  10 of 12          48     64
384  8      lstm   6     255  19 of 48          103    142
384  8      lstm   8     255  20 of 36          95     114
384  8      lstm   12    168  11 of 24          80     96
384  8      slstm  6     255  16 of 48          127    164
384  8      slstm  8     255  17 of 36          119    155
384  8      slstm  12    168  9 of 24           96     96
384  8      gru    6     255  20 of 36          95     109
384  8      gru    8     255  20 of 27          95     106
384  8      gru    12    168  11 of 18          80     90
256  4      lstm   8     255  21 of 32          87     126
256  4      lstm   16    128  8 of 16           64     72
256  4      slstm  8     255  19 of 32          103    157
256  4      slstm  16    128  6 of 16           80     92
256  4      gru    8     255  22 of 24          79     93
256  4      gru    16    128  8 of 12           64     80
prefetch 3 (``--prefetch 3``), where it differs:
512  16     lstm   8     255  23 of 32          71     84
512  16     slstm  16    128  7 of 16           72     80
512  16     gru    4     255  21 of 48          87     155
512  16     gru    8     255  24 of 24          -      89
384  8      lstm   6     255  19 of 48          103    150
384  8      lstm   8     255  21 of 36          87     111
384  8      lstm   12    168  12 of 24          72     96
384  8      slstm  6     255  16 of 48          127    152
384  8      slstm  8     255  17 of 36          119    151
384  8      slstm  12    168  9 of 24           96     106
384  8      gru    6     255  20 of 36          95     110
384  8      gru    8     255  21 of 27          87     107
(gru D = 512 at 4 warps and prefetch 3 spilled 4 bytes with 20 register tiles, the rule's choice before its margin.)
"""


#: The same for float32 storage with fp16 operands (``KernelModel.bw_scatter_reg_rest_f32_half``; rest = cap - 4 KRF):
#: ``python bench/scatter_register_data.py --dtype float32-half --cells lstm,slstm,gru --warps 6,8,12,16
#: [--prefetch 3]`` (stop 47).
SCATTER_REGISTER_DATA_F32_HALF = """
cell   warps cap  max KRF of tiles  rest   (ptxas with KRF = 0)   prefetch 3: max KRF, rest
lstm   6     255  29 of 96          139    158                    31, 131
lstm   8     255  33 of 72          123    142                    35, 115
lstm   12    168  19 of 48          92     103                    19, 92
lstm   16    128  10 of 36          88     101                    9, 92
slstm  6     255  25 of 96          155    172                    25, 155
slstm  8     255  29 of 72          139    160                    28, 143
slstm  12    168  14 of 48          112    121                    13, 116
slstm  16    128  7 of 36           100    106                    7, 100
gru    6     255  33 of 72          123    137                    35, 115
gru    8     255  34 of 54          119    128                    36, 111
gru    12    168  19 of 36          92     99                     19, 92
gru    16    128  10 of 27          88     96                     10, 88
"""


def build_scatter(hw: Hardware, function: str, dtype, B: int, N: int, D: int, model: "KernelModel") -> "FusedProblem":
    """The scatter-cluster backward (fused_bw.cu ``backward_scatter``) as a problem: ``cluster`` blocks a head,
    each owning ``16 * mb`` dims; ``warps`` warps, each holding ``mpw`` M tiles of 16 of every dim against the
    block's ``Gr * mb`` k-tiles (its cells' gate columns), ``r_smem_tiles`` of those ``mpw * Gr * mb`` tiles in
    shared memory; ``2 * mb`` of the warps run the cells (two a lane)."""
    from .problems import FusedProblem, add_block_budgets, geometry

    geo = geometry(function, dtype, D, "backward", half_operands=model.f32_half_operands)
    p = Problem()
    mt = max(1, D // 16)
    v = {
        "cluster": p.var("cluster", tuple(c for c in model.clusters if c > 1)),
        "warps": p.var("warps", tuple(sorted(model.bw_scatter_reg_rest[geo.function]))),
        "prefetch": p.var("prefetch", (0,) if model.bw_scatter_one_stage else model.bw_prefetches, prefer="high"),
        "r_smem_tiles": p.var("r_smem_tiles", range(0, mt * geo.gr * mt + 1)),
        "mb": p.var("mb", range(1, mt + 1), priority=-1),
        "mpw": p.var("mpw", range(1, mt + 1), priority=-1),
        "alloc8": p.var("alloc8", range(1, 1025), priority=-1),
        "warp_groups": p.var("warp_groups", range(1, hw.max_threads_per_block // hw.warp_size + 1), priority=-1),
        "batch_tiles": p.var("batch_tiles", range(1, math.ceil(B / BT) + 1), priority=-1),
    }
    regs, smem = scatter_resources(geo, model, v)
    cluster, warps, mb, mpw = v["cluster"], v["warps"], v["mb"], v["mpw"]
    add_block_budgets(p, v, hw, regs, smem, warps)
    max_cluster = hw.max_cluster if hw.clusters else 1
    p.add(cluster <= max_cluster, name=f"blocks per head <= {max_cluster} (thread-block clusters)")
    p.add(2 * (smem + hw.smem_reserved_per_block) >= hw.smem_per_sm + 1,
          name="scatter clusters: one block an SM (shared memory over half the SM's)")
    p.add(BT * v["batch_tiles"] >= B, name="batch tiles cover the batch")
    p.add(BT * (v["batch_tiles"] - 1) < B, name="batch tiles: the least that cover it")
    p.add(divides(16, D), name="D divisible by 16 (mma tiles)")
    p.add(16 * mb * cluster == D, name="D split evenly: blocks per head x 16-dim M tiles x 16 == D")
    p.add(mpw * warps == mt, name="the warps share D/16 M tiles evenly")
    p.add(2 * mb <= warps, name="two warps an M tile of the block's dims run its cells")
    p.add(v["r_smem_tiles"] <= mpw * geo.gr * mb, name="R^T tiles in shared memory <= a warp's tiles")
    p.add(Expr.lift(N * D * max(geo.gw, geo.n_saved)) <= 2**31 - 1,
          name="N*D*gates < 2^31 (32-bit per-step pointer offsets)")
    fp = FusedProblem(p, v, geo, hw, model, B, N, regs, smem)
    p.minimize(lambda values: scatter_estimate(fp, values)["total"])
    return fp


def scatter_resources(geo, m: "KernelModel", v: dict[str, Var]) -> tuple[Expr, Expr]:
    """(registers per thread, dynamic shared memory per block): fused_bw.cu's ``ScatterTile::SMEM_BYTES``
    exactly (one drs buffer of the block's columns (hi and lo for float32), two receive buffers (one where
    ``KernelModel.bw_scatter_one_recv``) of CL x mb x 32 lanes x ``scatter_piece_bytes`` (bf16 partials, float32's in
    float32),
    prefetch + 1 stages, one output buffer, mbarriers (16 bytes), R^T's shared-memory tiles); rows of the
    block's dims and a 16-byte pad, none in the one-stage form (``KernelModel.bw_scatter_one_stage``)."""
    mb, mpw, warps, rst, prefetch = (v[k] for k in ("mb", "mpw", "warps", "r_smem_tiles", "prefetch"))
    item, split = geo.itemsize, geo.split
    rest = (m.bw_scatter_reg_rest if item == 2 else
            m.bw_scatter_reg_rest_f32_half if geo.half_operands else m.bw_scatter_reg_rest_float32)
    regs = 4 * split * (mpw * geo.gr * mb - rst) + on_domain(warps, rest[geo.function])
    row = (16 * mb + (0 if m.bw_scatter_one_stage else 16 // item)) * item  # one staged row, bytes (Staging::ROW)
    drs = split * BT * (geo.gr * 16 * mb + 8) * 2
    buffers = 1 if m.bw_scatter_one_recv else 2  # (ScatterTile::RECV_BUFFERS)
    recv = buffers * v["cluster"] * mb * 32 * scatter_piece_bytes(geo)
    stage = (BT * geo.n_saved + BT * geo.staged_state_rows(0)) * row
    outputs = geo.gw + (geo.gr if geo.function == "gru" else 0)
    scales = (mb + 1) * BT * 4 if geo.half_operands else 0  # (ScatterTile::SCALE_BYTES)
    return regs, drs + recv + (prefetch + 1) * stage + BT * outputs * row + 16 + warps * rst * split * 512 + scales


def scatter_piece_bytes(geo) -> int:
    """Bytes of one lane's partial of one M tile (fused_bw.cu ScatterTile::PIECE): 4 bf16, or 4 floats where the
    storage is float32 (bf16 partials would round dh past SPEC's float32 tolerance)."""
    return 4 * geo.itemsize


def dr_after_cycles(fp: "FusedProblem") -> float:
    """dR summed after the kernel (backends/recurrent_grad.py), in cycles a step: drs (or dWx) and h_{t-1} read
    (``KernelModel.bw_gemm_rows_extra`` rows besides drs's Gr), B rows a step, at the fitted DRAM efficiency."""
    geo, m = fp.geo, fp.model
    gemm_bytes = fp.B * fp.N * geo.D * geo.itemsize * (geo.gr + m.bw_gemm_rows_extra)
    return gemm_bytes / (fp.hw.bytes_per_cycle() * m.bw_gemm_efficiency)


def scatter_estimate(fp: "FusedProblem", values: dict[str, int]) -> dict[str, float]:
    """Cycles per time step (``total``) of the scatter kernel, from the backward's constants (not calibrated on
    it): the warps' mma over their tiles (a chain of ``Gr * mb`` k-tiles a pass, two passes, or the SM's issue;
    three mma a tile in float32), R^T's shared-memory tiles at the SM's bandwidth, the exchange of the partials
    (bf16; float32's in float32) at the forward's fitted rate,
    the cells (two a lane), the barriers; the dR GEMMs after the kernel as ``estimate``. A step is no shorter than
    the inputs' load over the prefetch depth, or with one stage, than the load, the cells and the barriers."""
    from .problems import _at, cluster_exchange_cycles, cluster_slots

    geo, m, hw = fp.geo, fp.model, fp.hw
    cluster, warps, mb, mpw, rst = (values[k] for k in ("cluster", "warps", "mb", "mpw", "r_smem_tiles"))
    kl = geo.gr * mb
    wps = warps / m.schedulers
    mma = max(2 * kl * geo.mma_split * m.mma_latency, mpw * kl * geo.mma_split * wps * m.mma_issue)
    r_bandwidth = warps * rst * geo.split * 512 / m.smem_bytes_per_cycle
    received = (cluster - 1) * 16 * mb * BT * scatter_piece_bytes(geo) // 4
    exchange = cluster_exchange_cycles(m, hw, cluster, received, backward=True)
    cost = m.bw_cells[geo.function]
    cells = cost.latency + 2 * cost.issue * max(1.0, 2 * mb / m.schedulers)
    step = (m.ldmatrix_latency + max(mma, r_bandwidth) + exchange + cells + 2 * m.sync_threads
            + m.bw_fixed_per_warp * warps)
    if values["prefetch"] == 0:  # (one stage: step t-1's load is issued after step t's cells, needed at t-1's)
        step = max(step, m.bw_load_latency + cells + 2 * m.sync_threads)
    else:
        step = max(step, m.bw_load_latency / values["prefetch"])
    gemm = dr_after_cycles(fp)
    regs, smem = _at(fp.regs, fp, values), int(_at(fp.smem, fp, values))
    # The waves of clusters (one block an SM) are reported, not priced: ``total`` is the stage's objective, and
    # pricing them there moved 16-bit D = 384/512 heads at N = 12 or B = 256 to 12-warp configurations that
    # spilled; nor are they priced where the stage is weighed against another (problems._weighed_with says why).
    waves = max(1, math.ceil(fp.N * math.ceil(fp.B / BT) / max(1, cluster_slots(hw, cluster, 1))))
    return {"total": step + gemm, "step": step, "mma": mma, "r_bandwidth": r_bandwidth, "exchange": exchange,
            "cells": cells, "gemm": gemm, "waves": waves, "regs": regs, "smem": smem, "blocks_per_sm": 1}


def scatter_params_from(fp: "FusedProblem", values: dict[str, int]) -> "FusedParams":
    """A scatter solution's ``FusedParams``: ``warps_along_dims`` = its warps, ``ktiles_per_warp`` = the R^T
    tiles a warp holds, ``r_ktiles_in_smem`` = how many of those live in shared memory, ``scatter`` set."""
    geo, warps = fp.geo, values["warps"]
    return _backward_params(
        fp, scatter_estimate(fp, values), values, warps=warps, r_smem_tiles=values["r_smem_tiles"],
        rows_per_block=geo.D, warps_along_dims=warps, dims_per_warp=16 * values["mpw"], k_split=1,
        ktiles_per_warp=values["mpw"] * geo.gr * values["mb"], fused_dr=False, scatter=True,
        half_operands=geo.half_operands, one_recv=fp.model.bw_scatter_one_recv)
