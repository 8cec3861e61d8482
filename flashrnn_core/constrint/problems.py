"""The fused persistent kernels as integer constraint problems: which tile parameters launch validly, without
spills, and which of those is fastest by a per-step latency model.

``solve_fused(hardware, function, dtype, B, N, D, direction) -> FusedParams | Infeasible``.

The kernel modelled is ``cuda_src/fused_fw.cu`` (issue 5's design; ``Tile`` there is the geometry mirrored
here): every block owns ``D / blocks_per_head`` output dims of one head (all their gates) and a tile of
``8 * nbt`` sequences; R's rows live on chip as mma.sync m16n8k16 A-fragments (in registers, or some k-tiles
of them in shared memory), ``h`` double-buffered in shared memory, ``Wx`` staged ``prefetch`` steps ahead with
cp.async, the step's outputs staged in shared memory; heads larger than one block take a thread-block cluster
(sm_90) and exchange ``h`` slices through distributed shared memory each step. ``direction="backward"``
is ``cuda_src/fused_bw.cu``'s own problem (one block per head and 8 sequences, warps splitting K, fused dR or
not): ``constrint/backward.py`` builds it; estimates, results and the tuning cache are shared.

Everything that is a modelling *choice* is in ``KernelModel`` (one place to change): the kernel features the
model may use (R in shared memory, cooperative grids), the register estimate (fitted to ptxas reports of
fused_fw.cu for sm_90, see ``REGISTER_FIT``) and the latency constants (the forward's refitted on an H200 sweep,
see ``LATENCY_CALIBRATION``; the backward's in ``backward.BW_LATENCY_CALIBRATION``).

Variables (names as in the solver's explanations):
    cluster      blocks per head (a thread-block cluster when > 1)
    warps_d      warps along the block's output dims (each owns ``dims_per_warp`` dims and all their gates)
    ksplit       warps splitting K for the same rows (1 or 2; partial sums meet in shared memory)
    wholek       1: the ksplit = 2 warps each run the whole K and split the batch columns (Tile::WHOLE_K)
    dma          1: ``KernelModel.dma_warps`` more warps copy and send h (Tile::DMA; clusters of 8+, D >= 768)
    ktw          k-tiles (of 16) of R one warp holds: ``ktw * ksplit == K / 16`` (twice that with wholek)
    own          batch columns (of 2 per lane) a warp finishes: ``own * ksplit == 2``
    nbt          batch n-tiles of 8 sequences per block (the mma's n = 8)
    prefetch     steps of Wx in flight ahead of the one computed
    r_smem_kt    of the warp's ktw k-tiles of R, how many live in shared memory instead of registers
    r_shared     1 when r_smem_kt > 0 (the register estimate of such kernels is its own fit, REGISTER_FIT)
    late_x       1 where the kernel reads Wx cell by cell (blocks of 384+ threads, where registers are tight)
    clustered    1 when cluster > 1 (mbarriers, h exchange)
    alloc8       registers a thread is allocated, in units of 8 (ceil(estimate / 8))
    warp_groups  the block's warps in groups of ``Hardware.warp_alloc_unit`` (4), rounded up
    batch_tiles  blocks along the batch: ceil(B / (8 nbt))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from typing import Any

from .hardware import Hardware
from .solver import Expr, Infeasible, Problem, Var, divides, predicate

#: Bump when the model (constraints, register fit, latency constants) changes: tuning-cache keys carry it.
#: 7: the backward stages hold only the state rows the cells read (every backward choice's shared memory).
#: 8: float32 heads may keep R in shared memory on 16-block clusters (the rule was 16-bit only).
#: 9: sLSTM's backward reads c and n of the previous states, not m (its saved v holds i and f): smaller stages.
#: 10: the backward weighs the scatter-cluster kernel against a cluster kernel with R^T in shared memory.
#: 11: the inference forward's own solve (direction "inference"); the forward's cluster exchange refitted.
#: 12: prefetch 3, and a cluster's deeper prefetch priced (PREFETCH_ON_CLUSTERS); an admissible lower bound.
#: 13: the backward prices blocks that share an SM (BW_CO_RESIDENT), in place of a rule against such clusters;
#:     elman weighs clusters from D = 128; the backward's exchange refitted (BW_EXCHANGE_REFIT).
#: 14: float32's own factor in the register rule of backward kernels with R^T in shared memory
#:     (bw_reg_rest_with_smem_split): float32 lstm and slstm D = 256 and gru D = 512 take the fused backward.
#: 15: the scatter-cluster backward exchanges bf16 partials (half the receive buffers and the bytes).
#: 16: dR after the backward kernel reads drs and h_{t-1} only (no gathered copy: bw_gemm_rows_extra 3 -> 1).
#: 17: heads no power-of-two cluster takes may take a cluster of any size up to the GPU's largest (last stages).
#: 18: ... and, for heads nothing else takes, R partly in shared memory on clusters of any size.
#: 19: the backward weighs the scatter-cluster kernel against cluster kernels that run in more than one wave.
#: 20: float32 forwards that nothing else takes hold R and h as one fp16 operand (f32_half_operands, last stages).
#: 21: ... and float32 backwards on scatter clusters, drs scaled a batch row (bw_scatter_reg_rest_f32_half).
#: 22: DMA warps with split K (fused_fw.cu Tile::INTERLEAVE; 16-bit and fp16 operands): gru and elman D = 768.
#: 23: float32 backwards nothing else takes may run the scatter kernel with one receive buffer (ONE_RECV): lstm
#:     D = 672 and 768.
#: 24: ... and after those, with one input stage and unpadded rows (ONE_STAGE): slstm D = 672 and 768.
#: 25: 16-bit lstm and slstm forwards at D = 768 weigh 16 dims a warp (WIDE_WARPS).
#: 26: ... with the register factor refitted on speed (slstm at 13 k-tiles of R in shared memory); the head
#:     split's hand-off priced as measured (HEAD_SPLIT, still off).
#: 27: ... and gru's (odd Gr) with DMA warps their own register factor (PAIRED_R_LOADS: gru 1x768 12 -> 9 k-tiles
#:     of R in shared memory).
MODEL_VERSION = 27

MMA_M, MMA_N, MMA_K = 16, 8, 16  # mma.sync m16n8k16 (bf16/fp16 operands, float32 accumulators)

# ---------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class CellCost:
    """Per-cell latency constants (cycles at the preset's clock, 1.98 GHz on H100/H200; 16-bit storage's hardware
    tanh).

    latency: the dependent chain of one cell's pointwise step (MUFU ex2/rcp/tanh stages and FMAs between);
    issue: issue slots one more cell in the same thread adds (independent cells overlap their latencies).
    The forward's (``KernelModel.cells``) are fitted with the other forward constants (``LATENCY_CALIBRATION``).
    """

    latency: int
    issue: int


@dataclass(frozen=True)
class KernelModel:
    """Every constant and switch of the fused-kernel model. ``DEFAULT_MODEL`` is what ``solve_fused`` uses."""

    # -- what the kernel implements (a variable's domain, or a feature switched off)
    clusters: tuple[int, ...] = (1, 2, 4, 8, 16)
    #: Heads that none of ``clusters`` takes (a D whose share of a power-of-two cluster is no whole number of a
    #: warp's dims, 16-bit lstm D = 144 or backward D = 640) may take a cluster of any size up to the GPU's
    #: largest, 3 to 15 blocks too: ``_stages`` tries them last, so that no head the power-of-two sizes take
    #: changes its kernel on estimates that no measurement of odd clusters has calibrated. The kernels hold
    #: nothing specific to a power of two (a block's rank and its slices are taken modulo CL); the launch asks
    #: only that the grid be a whole number of clusters.
    any_cluster_size: bool = True
    #: R (R^T) partly in shared memory on clusters of any size, not only the largest: set by ``_stages`` on the last
    #: of the any-size stages alone, for heads nothing else takes (REGISTER_FIT's last paragraph says why the
    #: largest clusters are the rule; ``compile --check`` holds each such choice to no spills).
    r_shared_any_cluster: bool = False
    #: ... where the register rule, fitted on 16-block clusters, gets this many registers of margin (forward and
    #: backward), and not for these forward heads, (function, storage dtype, D or None for every D): ptxas spilled
    #: their choices at every margin tried (ANY_CLUSTER_REGISTERS).
    r_shared_any_cluster_margin: int = 8
    r_shared_any_cluster_forward_spills: tuple[tuple[str, str, int | None], ...] = (
        ("elman", "float32", None), ("gru", "bfloat16", 480), ("gru", "float16", 480))
    #: float32 storage, forward: R and h as one fp16 operand each (common/mma.cuh OperandOf, FLASHRNN_F32_HALF), not
    #: bf16 hi + lo: TF32's precision (SPEC's 1e-3 for TF32 matrix units), half of R's bytes and a third of the mma.
    #: Set by ``_stages`` on its last stages, for the float32 forwards that nothing else takes (H100: lstm, slstm
    #: and gru D = 768, whose R is 7-9.4 MB split, more than 16 SMs hold, and most of D = 336-720 on clusters of 3-16
    #: blocks; A100: lstm D = 80-96, gru 80-112, elman 144-192 in one block): a float32 caller gets
    #: SPEC's 1e-4 wherever a launch gives it. The backward's scatter stage too (fused_bw.cu ScatterTile::SCALED:
    #: drs, a gradient of no bounded range, is scaled by a power of two a batch row into fp16's): gru D = 768, and
    #: lstm, slstm, gru D = 576 (lstm and slstm D = 768's float32 stages and partials leave R^T too little room).
    f32_half_operands: bool = False
    #: ... whether ``_stages`` offers those stages at all (False: float32 forwards with split operands only)
    f32_half_operand_stages: bool = True
    #: The backward's scatter kernel with one receive buffer for the partials instead of two (fused_bw.cu
    #: ScatterTile::ONE_RECV: a relaxed cluster barrier a step says every block has read them before any sends the
    #: next step's). Set by ``_stages`` on its last stages, float32's fp16-operand scatter stages again, for the
    #: backwards nothing else takes: float32 lstm D = 672 and 768, whose float32 partials' second buffer (24 KB at
    #: D = 768) is what left R^T too little shared memory (ONE_RECV says what it measured); slstm's need one input
    #: stage too (``bw_scatter_one_stage``).
    bw_scatter_one_recv: bool = False
    #: ... and with one input stage instead of prefetch + 1 and staged rows without their pad (fused_bw.cu
    #: ScatterTile::ONE_STAGE, FLASHRNN_PREFETCH=0): the one-receive-buffer stages again, after them, for what
    #: those leave: float32 slstm D = 672 and 768 (ONE_STAGE says what it measured). Its prefetch domain is (0,).
    bw_scatter_one_stage: bool = False
    ksplits: tuple[int, ...] = (1, 2)
    #: fused_fw.cu Tile::WHOLE_K: the k_split = 2 warps of a row set may each run the whole K (the mma twice, no
    #: partial sums) and split the batch columns only. (0,): the K-split kernel only.
    whole_k: tuple[int, ...] = (0, 1)
    max_nbt: int = 4  # widest batch tile, in n-tiles of 8: fused_fw.cu gives each of the tile's rows a lane (<= 32)
    #: Prefetch depths offered: powers of two (issue 5 measured 1 step ahead at 0.60 us a step, 2 at 0.33, 3 at
    #: 0.29, flat from there for lstm), so that the kernels the solver can pick stay few enough for CI to
    #: compile every one (``FusedBackend.kernel_variants``) and a sweep to measure every one; and 3, a cluster's
    #: (PREFETCH_ON_CLUSTERS: deeper costs it a little, and 3 hides the load where 2 does not).
    prefetches: tuple[int, ...] = (1, 2, 3, 4, 8)
    #: R's k-tiles may live partly in shared memory (Tile::RS in fused_fw.cu: the last k-tiles of every warp,
    #: one 16-byte load a lane per fragment each step) where R does not fit the registers: ``solve_fused``,
    #: ``top_k`` and ``all_feasible`` first look for launches with all of R in registers and only where there is
    #: none for ones with part of it in shared memory (``_stages``). This is what puts a 1x768 lstm head on one
    #: 16-block cluster (its R is 4.7 MB in bf16, 295 KB an SM). The register estimate of such kernels is a fit
    #: of its own (``reg_rest_with_smem``), made where the registers are full; it is not meant to compare the two
    #: kinds of kernel, hence the fallback rather than one problem.
    r_in_shared_memory: bool = True
    #: Heads above one block on GPUs without clusters: a cooperative grid per head with a grid barrier a step.
    #: Not in fused_fw.cu (issue 5 lets ``auto`` take the ``cuda`` backend there instead).
    cooperative_heads: bool = False
    #: The backward weighs clusters against one block a head at heads of D >= this (BW_CLUSTERS_AT_SMALL_HEADS
    #: says why); below it, and at every D where None (as before stop 39, which the older sweeps measured), one
    #: block a head wherever one holds R^T.
    bw_clusters_weighed_from_d: int | None = 64
    #: ... or from a later D for these cells: elman's one-gate step, the lightest, gains least from spreading its
    #: cells (BW_CO_RESIDENT's last paragraph: its one block fastest at D = 64, B = 16 and 32; clusters at 6x128).
    bw_cell_clusters_weighed_from_d: dict = field(default_factory=lambda: {"elman": 128})
    #: Where the kernel switches to reading Wx cell by cell (Tile::LATE_X).
    late_x_threads: int = 384
    #: fused_fw.cu Tile::DMA: clusters of 8+ blocks may add this many warps a block that copy and send h while the
    #: compute warps run (0: never). Two, not one: one warp's sends took ~3200 cycles a step at lstm 1x768 (the
    #: compute warps' shared-memory loads queue ahead of them), two ~3200 as well but with half the copies
    #: (bench/results/phases/2026-12-01-h200-dma.txt), and one measured slower (2.41 against 2.09 ms).
    dma_warps: int = 2
    #: ... for heads of at least this D: measured at D = 768 only, and at D = 512 the register fit misses the DMA
    #: kernels by up to 40 registers (slstm float16 estimated 231 spilled at 255).
    dma_min_D: int = 768
    #: fused_fw.cu Tile::WIDE: even-Gr cells' warps own 16 dims (two d-groups of 8), not 8, so that a split-K pair
    #: reads h's fragments once for twice the rows (WIDE_WARPS). Only with DMA warps and split K, as measured. Set
    #: by ``_stages`` on a last 16-bit forward stage, which the solver weighs against the first that takes the head
    #: (``_weighed_with``) ...
    wide_warps: bool = False
    #: ... whether ``_stages`` offers that stage at all, and up to which D (the variant list's largest: its
    #: register factor is fitted there, ``reg_rest_with_smem_wide``)
    wide_warp_stages: bool = True
    wide_max_D: int = 768
    #: fused_fw.cu Tile::G (FLASHRNN_HEAD_CLUSTERS): a head on this many clusters, with DMA warps, each block a
    #: G-th of the rows it would have on one, the other clusters' slices of h handed over through global memory
    #: every step (HeadHandoff), which adds ``handoff_cycles`` to the exchange. Set by ``_stages`` on a 16-bit
    #: forward stage of its own, weighed like the wide warps' (HEAD_SPLIT) ...
    head_clusters: int = 1
    #: ... whether ``_stages`` offers it: off, measured slower than the one-cluster head (HEAD_SPLIT) ...
    head_split_stages: bool = False
    #: ... and the hand-off's cycles a step, fitted on the split kernel's time (H200, lstm 1x768 saving forward:
    #: 2.376 us a step against the model's 1.784 with a guessed 1300, the one-cluster kernel measured 1.11x its
    #: estimate; bench/results/phases/2026-12-05-h200-head-split.txt). The exchange alone costs less (the tagged
    #: words add ~970 cycles to one cluster's exchange, bench/cluster_exchange.py): in the kernel the product of
    #: the remote half of h cannot start before they land.
    handoff_cycles: int = 2000
    #: ... and the registers it adds to the estimate (the DMA warps' words in flight, the hand-off's addresses):
    #: fitted on ptxas (NVRTC 12.9, sm_90, bf16, prefetch 4, bench/head_split.py --compile-only): lstm spills at 5
    #: of a warp's 24 k-tiles of R in shared memory (estimated 248.4 without it) and not at 6 (240.4), slstm at 6
    #: (245.8) and not at 7 (237.8): anything in (9.2, 14.6] separates them.
    reg_head_split: int = 12

    # -- registers per thread: a linear fit over the step's live values (REGISTER_FIT says how it was fitted)
    reg_base: Fraction = Fraction(33)  # addresses, loop state, indices, bias, barrier bookkeeping
    reg_per_r: Fraction = Fraction(4, 3)  # per register of R's A-fragments (live for the whole run)
    reg_per_h: Fraction = Fraction(0)  # h's B-fragments: loaded as the mma consume them (the fit gives 0)
    reg_per_acc: Fraction = Fraction(1)  # per accumulator float (4 per m16n8 tile)
    reg_per_cell_value: Fraction = Fraction(13, 8)  # per streamed input (unless read late) and state, per cell
    reg_per_copy: Fraction = Fraction(31, 8)  # per 16-byte piece a thread copies a step (its address, offset)
    reg_f32_per_cell: Fraction = Fraction(0)  # float32 storage: the hi/lo split per cell (the fit gives 0)
    reg_ksplit: Fraction = Fraction(47, 4)  # split-K: partial-sum addressing and the second column's state
    reg_cluster: Fraction = Fraction(0)  # mbarrier and remote addresses (the fit gives 0)
    #: DMA warps (Tile::DMA): the compute warps' mbarrier-group waits inside the mma. lstm 1x768 with 28 of R's 48
    #: k-tiles in shared memory (estimated 255 without) spilled 36 bytes, with 29 (247) did not.
    reg_dma: Fraction = Fraction(4)
    #: Where some of R's k-tiles live in shared memory (16-bit storage, one batch n-tile): R's registers one
    #: for one, plus this times the estimate of everything else (REGISTER_FIT, last paragraph).
    reg_rest_with_smem: Fraction = Fraction(28, 25)
    #: ... and for float32 kernels with fp16 operands (``f32_half_operands``) and DMA warps, whose compute warps
    #: ptxas compiled in fewer registers than the rule gives their 4-byte copies (F32_HALF_REGISTERS).
    reg_rest_with_smem_f32_half_dma: Fraction = Fraction(77, 100)
    #: ... and for 16-bit storage with DMA warps where a warp's 16 dims are two d-groups by the cell's odd Gr (gru,
    #: elman) on the 16-block rule's clusters: refitted on the prologue that loads R's pairs as one word and
    #: measured (PAIRED_R_LOADS).
    reg_rest_with_smem_16bit_dma: Fraction = Fraction(71, 100)
    #: ... and for wide warps (``wide_warps``: 16-bit storage, DMA warps; fitted on the paired R loads and then on
    #: measured speed, WIDE_WARPS: it rejects slstm's 12 k-tiles, spill-free at 254 registers but 3-9% slower).
    reg_rest_with_smem_wide: Fraction = Fraction(27, 50)
    #: Added to the estimate. The fit cleared every spill by 8 against a cap that ignored the warp allocation
    #: granularity (``Hardware.warp_alloc_unit``); against the true cap two spilling kernels of 14 and 9 warps
    #: (elman D=224, lstm D=144 on a 2-block cluster) were estimated 1-2 registers below it: 4 rejected them.
    #: Variable lengths (issue 10: a running-row mask, the next end step and a select per state) then made five
    #: more spill by 4-16 bytes at 128/255 registers (elman D=208, gru D=160 on 2 blocks, lstm/slstm D=224 on
    #: 4, estimated 234 against 255): a margin proportional to the estimate (ptxas strays further from the fit
    #: the more it holds) rejects them.
    reg_margin: Fraction = Fraction(4)
    reg_margin_fraction: Fraction = Fraction(3, 20)

    # -- latency (cycles at the preset's clock). Issue 5's H100 measurements where not said otherwise; "fitted":
    # refitted on the H200 sweep of the 5277a5c kernels (bench/refit_forward.py, LATENCY_CALIBRATION says how).
    # sync_threads, ldmatrix_latency, mma_latency, chains_wanted, ksplit_exchange and schedulers are shared with
    # the backward's model (backward.estimate) and were kept.
    sync_threads: int = 25  # __syncthreads of 8 warps (after the last warp's h store)
    ldmatrix_latency: int = 30  # one shared-memory round trip
    ldmatrix_issue: int = 4  # each further ldmatrix.x4 of a warp
    mma_latency: int = 33  # dependent m16n8k16
    mma_issue: int = 8  # one m16n8k16 per sub-partition every 8 cycles (mma.sync, A100/H100)
    chains_wanted: int = 4  # independent accumulators the kernel aims for (Tile::CHAINS)
    skeleton_latency: int = 91  # fitted: the step's fixed instructions' latency (copies issue, loop, addresses)
    skeleton_issue: int = 42  # fitted: ... and their issue slots per warp sharing a scheduler
    output_store: int = 11  # fitted: staging store + share of the copy-out, per output value per cell
    #: The h exchange of a cluster a step (refitted at stop 35, CLUSTER_CALIBRATION): st.async of the h slices +
    #: mbarrier complete_tx + wait (a remote round trip), each further block sent to, an effective rate of the
    #: slices received (their issue and arrival, not distributed shared memory's bandwidth), and what a cluster
    #: beyond the portable size (16 blocks: a whole GPC) adds.
    cluster_exchange: int = 265
    cluster_per_peer: int = 13
    cluster_bytes_per_cycle: int = 15
    cluster_nonportable: int = 282
    #: A cluster's step with Wx staged 4 or more steps ahead (PREFETCH_ON_CLUSTERS says what was measured).
    cluster_deep_prefetch: int = 25
    #: The backward's exchange of drs (``backward.py``): the fixed cost set on the sweep of clusters at heads one
    #: block holds (BW_CLUSTERS_AT_SMALL_HEADS; 186 before), the cost a peer and the rate refitted on the cluster
    #: sweeps at stop 40 (26 and 4 before, the forward's constants before stop 35: BW_EXCHANGE_REFIT).
    bw_cluster_exchange: int = 120
    bw_cluster_per_peer: int = 80
    bw_cluster_bytes_per_cycle: int = 12
    grid_sync: int = 2300  # cooperative grid barrier, 1.2 us on H100 (issue 5)
    #: DMA warps (Tile::DMA): the share of the exchange that overlaps the mma (the compute warps start on the slices
    #: that have arrived), of the smaller of the two, and what the mbarrier-group waits inside the mma add. Fitted
    #: to lstm/slstm 1x768 (H200: 2.34 -> 2.09, 2.43 -> 2.21 ms, -10%; the model's step 6069 -> ~5460 cycles).
    dma_overlap: float = 0.53
    dma_waits: int = 100
    ksplit_exchange: int = 40  # partial sums through shared memory + the extra barrier (besides sync_threads)
    r_smem_ldmatrix: int = 6  # per ldmatrix.x4 of R from shared memory (issue; latency overlaps h's)
    smem_bytes_per_cycle: int = 128  # shared-memory bandwidth per SM
    #: Fitted: global load latency of a Wx stage (0.73 us), hidden over ``prefetch`` steps (the sweep: elman 12x64
    #: 0.33 ms at prefetch 2 against 0.21 at 4; lstm 48x16 0.40 against 0.26).
    wx_latency: int = 1452
    dram_efficiency: float = 0.75  # achieved / peak DRAM bandwidth for the streamed Wx and outputs (no sweep row binds)
    schedulers: int = 4  # warp schedulers (sub-partitions) per SM
    #: Fitted per cell (latency, issue) with the constants above (they were 110/45, 130/50, 200/150 and 25/10 on
    #: the issue-5 kernels).
    cells: dict = field(default_factory=lambda: {
        "lstm": CellCost(160, 80), "slstm": CellCost(127, 121), "gru": CellCost(100, 92), "elman": CellCost(54, 7)})

    # -- the backward kernel (fused_bw.cu; constrint/backward.py builds its problem)
    bw_ksplits: tuple[int, ...] = (1, 2, 4)  # Tile::KS: the 4 cells of a lane's accumulator split evenly
    bw_prefetches: tuple[int, ...] = (1, 2, 3)  # Tile::P (cp.async stages ahead; 3 measured best on lstm 12x64)
    # Registers (BW_REGISTER_FIT in backward.py says how these were fitted; the margins are the forward's).
    bw_reg_base: Fraction = Fraction(38)  # addresses, loop state, stage indices, db partial sums
    bw_reg_per_r: Fraction = Fraction(49, 25)  # per register of R^T's A-fragments (~2: ptxas keeps copies)
    bw_reg_per_cell_value: Fraction = Fraction(19, 10)  # per live value of a cell a lane runs
    bw_reg_per_dr: Fraction = Fraction(1)  # per dR accumulator float (fused dR)
    bw_reg_margin: Fraction = Fraction(0)  # added to the estimate (the fit already clears every spill)
    bw_reg_margin_fraction: Fraction = Fraction(0)
    #: R^T partly in shared memory (fused_bw.cu Tile::RS): R^T's registers one for one plus (this - the next
    #: times the block's warps) times the estimate of the rest, for blocks of at most 12 warps. ptxas takes more
    #: besides R^T the more the cap leaves it (the shared-memory k-tiles' loop rolled, fused_bw.cu matmul; 16-block
    #: clusters): at 12 warps (cap 168) lstm D=768 took 152 registers with 12 k-tiles of 48 in registers and spilled
    #: with 20, gru D=768 took 167 with 16 of 36 and spilled with 18 (~2.25 x the rest's estimate); at 8 warps
    #: (cap 255) slstm D=512 spilled 128 bytes with 31 of 32 (>= 3.1 x); at 6 warps gru D=768 spilled 196 bytes
    #: with 33 of 72 (>= 3.2 x). The line through 2.28 at 12 warps and 3.1 at 8.
    bw_reg_rest_with_smem: Fraction = Fraction(237, 50)
    bw_reg_rest_with_smem_per_warp: Fraction = Fraction(41, 200)
    #: ... less this for float32 (hi/lo operand parts): the line above, fitted on 16-bit kernels of 6-12 warps,
    #: took 3.9 x the rest at the 4 warps of float32 lstm D = 256 (k split 4), so that no split of R^T fitted
    #: (its backward ran on `cuda`), where ptxas needs ~2.2 x. Data: bench/bw_smem_register_data.py --dtypes
    #: float32 (bench/results/constrint/bw_smem_registers_f32.json: every cell, D = 256-768, k split 1-4,
    #: prefetch 1-3, the fewest shared-memory k-tiles without a spill): 0.7 is the largest tenth at which no
    #: spilling variant is accepted (0.8 accepts gru D = 512's, 8 warps), and it keeps every family whose
    #: fewest clean split is known within 4 k-tiles of it but those of 1-2 warps (k split 1-2, never chosen
    #: where k split 4 fits). 16-bit kernels keep the line.
    bw_reg_rest_with_smem_split: Fraction = Fraction(7, 10)
    #: Clusters with float32 storage (hi/lo rows: twice the drs pieces a thread sends a step, their addresses
    #: and targets kept): of the 48 cluster kernels the solver chose on the H100 preset, the two float32 ones
    #: estimated at 242 and 249 spilled 12 and 40 bytes at 255 registers (16-bit ones at up to 253 did not).
    bw_reg_cluster_split: Fraction = Fraction(16)
    # Latency (cycles; BW_LATENCY_CALIBRATION in backward.py): instructions a warp issues a step
    bw_skeleton_issue: float = 60  # indices, selects, stage bookkeeping, cp.async issue (ncu: IMAD/LEA/ISETP)
    bw_input_issue: float = 2  # per staged input value a cell reads (shared-memory load + convert)
    bw_output_issue: float = 2  # per output value a cell stages
    bw_ksplit_issue: float = 8  # per cell: its partial sums stored and the others' loaded (warps splitting K)
    bw_dr_tile_issue: float = 12  # per dR m16n8k8 tile a warp accumulates (two ldmatrix, the mma, converts)
    bw_dependent_cpi: float = 5  # cycles between a lone warp's instructions (each waits on its predecessor)
    bw_fixed: float = 0  # barriers' and stage waits a step, beyond the issue or chain ...
    bw_fixed_per_warp: float = 50  # ... per warp of the block (the barriers wait for the last)
    #: Blocks that share an SM: each adds this fraction of a block's issue to the step (BW_CO_RESIDENT says why).
    bw_co_resident_issue: float = 0.5
    #: Registers added to the estimate where it decides how many blocks share an SM: the kernel is built with
    #: __launch_bounds__(threads, 1), so ptxas may take more than the fit (up to 107 above it, BW_REGISTER_FIT)
    #: and a second block then does not fit. Measured: slstm 12x48 B=128 (dR after the kernel) estimated at 77
    #: registers, two blocks an SM, one wave; ptxas took 85, one block an SM, two waves: 3.34 ms against the
    #: model's 1.70 (bench/results/constrint/2026-11-30-h200-sweep-backward-holdout.json).
    bw_occupancy_reg_margin: float = 24
    bw_load_latency: float = 1500  # a stage's cp.async round trip, hidden over ``prefetch`` steps
    #: dR summed after the kernel (backends/recurrent_grad.py: drs and h_{t-1} read, over K = B*T): achieved
    #: fraction of DRAM bandwidth on the bytes of Gr + ``bw_gemm_rows_extra`` rows of B*N*D a step. The rows were
    #: Gr + 3 while h_{t-1} was gathered into a copy first (written, then read). Refit on the dR kernel (H200 bf16
    #: B=16 T=1024, ``tune --direction backward``: dR in the kernel against after it, one block a head, k split 4,
    #: lstm/slstm/gru 48x16, 48x32, 24x16, 24x32 and elman 24x16; bench/results/phases/2026-12-03-h200-dr-gemm.txt):
    #: with Gr + 1 rows the model picks the faster of the two at 11 of the 13 shapes (ties within 1% counted either
    #: way), with Gr + 3 at 8; the efficiency 0.28 fits best of 0.28-0.8 (10, 8, 8, 8 at 0.4, 0.5, 0.6, 0.8).
    #: The choices it changed, measured (bench/results/constrint/2026-12-03-h200-tune-dr-after.json): large batches
    #: gain (gru 12x64 B=128 1.68 -> 1.46 ms, lstm 12x64 B=96 2.18 -> 1.50, gru 48x64 B=256 10.08 -> 9.16), lstm and
    #: slstm 24x48 lose 7-9%, elman 48x96 5%; test_dr_after_the_kernel_priced_as_measured holds them.
    bw_gemm_efficiency: float = 0.28
    bw_gemm_rows_extra: float = 1
    bw_cells: dict = field(default_factory=lambda: {
        "lstm": CellCost(160, 60), "slstm": CellCost(260, 90), "gru": CellCost(180, 70), "elman": CellCost(40, 20)})
    #: The scatter-cluster backward (fused_bw.cu ScatterTile; constrint/backward.py build_scatter): the last
    #: stage of ``_stages``, for heads that no other backward launch takes. Its warps (a divisor of D/16 M tiles).
    bw_scatter: bool = False
    #: Registers besides R^T's tiles (4 each), per cell and warps: ptxas -v at D = 768 on 16 blocks, the most
    #: register tiles that compile without a spill (``SCATTER_REGISTER_DATA`` in backward.py) at 6, 8 and 12 warps;
    #: 4 and 16 warps, not measured, get the largest of those. elman never spilled (all its tiles fit): its ptxas
    #: count with no register tiles plus 5.
    bw_scatter_reg_rest: dict = field(default_factory=lambda: {
        "lstm": {4: 103, 6: 103, 8: 95, 12: 76, 16: 103}, "slstm": {4: 123, 6: 123, 8: 103, 12: 96, 16: 123},
        "gru": {4: 103, 6: 103, 8: 99, 12: 68, 16: 103}, "elman": {4: 108, 6: 108, 8: 101, 12: 99, 16: 108}})
    #: ... and of its float32 variant (R^T's tiles as bf16 hi + lo parts, 8 registers each): the largest "rest" of
    #: ``SCATTER_REGISTER_DATA_FLOAT32`` (D = 256 on 4 blocks, 384 on 8, 512 on 16; prefetch 1 and 3) for each warps
    #: count, plus 4: ptxas's allocation is not monotonic in the register tiles (gru D = 512, 4 warps, prefetch 3
    #: compiled 21 tiles clean and spilled 4 bytes at 20, which the bare rule accepted); elman, whose tiles always
    #: fit, as 16-bit.
    bw_scatter_reg_rest_float32: dict = field(default_factory=lambda: {
        "lstm": {4: 107, 6: 107, 8: 99, 12: 84, 16: 68}, "slstm": {4: 115, 6: 131, 8: 123, 12: 100, 16: 84},
        "gru": {4: 99, 6: 99, 8: 99, 12: 84, 16: 68}, "elman": {4: 108, 6: 108, 8: 101, 12: 99, 16: 108}})
    #: ... and of its float32 variant with fp16 operands (``f32_half_operands``: R^T's tiles 4 registers each, float32
    #: stages and partials, drs scaled a batch row): ``SCATTER_REGISTER_DATA_F32_HALF`` at D = 768 on 16 blocks, the
    #: larger of prefetch 1 and 3, plus 4 (as float32's); 4 warps, not measured (no D = 768 head has them), as 6;
    #: elman as float32's.
    bw_scatter_reg_rest_f32_half: dict = field(default_factory=lambda: {
        "lstm": {4: 143, 6: 143, 8: 127, 12: 96, 16: 96}, "slstm": {4: 159, 6: 159, 8: 147, 12: 120, 16: 104},
        "gru": {4: 127, 6: 127, 8: 123, 12: 96, 16: 92}, "elman": {4: 108, 6: 108, 8: 101, 12: 99, 16: 108}})


    def bw_clusters_weighed_from(self, function: str) -> int | None:
        """The D from which the backward weighs clusters against one block a head for ``function`` (None: never)."""
        common = self.bw_clusters_weighed_from_d
        return None if common is None else max(common, self.bw_cell_clusters_weighed_from_d.get(function, common))


DEFAULT_MODEL = KernelModel()

#: How the register coefficients were chosen (documentation; the numbers live in ``KernelModel``):
REGISTER_FIT = """
Data: ptxas -v (NVRTC 12.9) for 1076 variants of cuda_src/fused_fw.cu: 772 on sm_90 (4 cells x {bf16,
float32} x D in 16..768 x cluster 1..16 x ksplit 1, 2 x nbt 1..4 where the geometry allows) and the 304 of
them without clusters on sm_80; 397 spilled.
Fit: a linear program over the features of ``_resources`` (coefficients >= 0): every spilling variant must be
estimated at least 8 registers above its cap (min(255, the block's share of the register file)), while
minimising how far non-spilling ones are estimated above theirs, plus 0.02 x |estimate - ptxas| where ptxas
stayed below the cap. Result (rounded coefficients): 0 of 397 spilling variants accepted; 65 of 679
non-spilling ones rejected (45 of 489 on sm_90, 20 of 190 on sm_80: options lost, never a spill); mean
|estimate - ptxas| 12 registers; ptxas uses from 57 below to 68 above the estimate (it takes what the cap
allows). Fitting on a random half and testing on the other: 0-3 of ~200 spilling variants accepted. A fit on
sm_90 alone accepted 2 sm_80 spills (gru), hence both architectures and the margin of 8.

Kernels with R partly in shared memory (Tile::RS > 0) are another regime: ptxas fills the register file
whatever they hold (lstm D=768 on a 16-block cluster with all of R in shared memory took 244 registers: it
hoists h's fragments and R's shared-memory loads ahead of the mma), and near the limit it spills a few bytes
erratically: 335 such kernels (the solver's choices under a first, tighter rule) spilled in 207 cases, down to
4 bytes at 213 of 255 registers, and no linear rule over the fit's features separated them. The rule kept is
conservative and narrow: 16-bit storage, one batch n-tile (the wider tiles' other values were underestimated),
the largest clusters (16 blocks: heads that fit no cluster otherwise), and R's registers one for one plus
``reg_rest_with_smem`` (1.12) x the estimate of the rest, which puts lstm D=768 at 28 of 48 k-tiles in shared
memory (24 compiled too, 20-23 spilled). Of the 154 kernels chosen under this rule without the cluster
condition, 26 spilled 4-44 bytes (one value stored in the prologue and reloaded before the loop, in the one read
with SASS), all of them on 1-8 block heads of D = 144-448 with 96-255 registers; none of the 16-block ones.
These kernels are a fallback (``KernelModel.r_in_shared_memory``) and ``compile --check`` holds every chosen one
to no spills. Stop 29 let float32 storage into the rule (it was 16-bit only, for want of data): the 21 kernels
it adds on the H100/H200 presets (forward lstm and slstm D = 256, 384, 512, gru 256 and 512, elman 512 and 768,
each with its inference twin; backward elman D = 768; all 16-block clusters, one n-tile) compile spill-free
for sm_90 at 104-255 registers, and the GPU tests pass on them. float32 lstm, slstm and gru D = 768 stay out:
R is 9.4 MB (lstm) in float32, more than the registers and shared memory of 16 SMs hold (stop 47 runs their
forward with fp16 operands, half the bytes: F32_HALF_REGISTERS).
"""

#: How the any-size clusters' register margin was set (documentation; the numbers live in ``KernelModel``):
ANY_CLUSTER_REGISTERS = """
Clusters of every size with R in registers (stop 46, ba4caae: 575 new sm_90 variants over the variant grid) compiled
spill-free under the forward's and the backward's own rules, and the scatter kernels' under theirs. R (R^T) partly
in shared memory on clusters of any size (``KernelModel.r_shared_any_cluster``, the last stage) added 452 variants
under the 16-block rule as it is; 34 spilled (4-104 bytes): the 16-bit gru backward at 384-thread blocks (cap 168,
D = 432-720), float32 elman forwards (D = 432-720), 16-bit gru D = 480 forward on 6 blocks, float32 gru D = 336's
backward, float32 lstm D = 336 forward, 16-bit elman D = 720 forward. A margin of 8 registers on these kernels left
12 (float32 elman forwards, D = 480-720, and gru D = 480); 16 left 11 (the same heads on other configurations);
24 fixed some of the elman heads and spilled others (elman 1x720: 25 k-tiles in shared memory spilled 4 bytes, 27
spilled 48): ptxas takes all 255 registers these kernels may have and spills where it will, as REGISTER_FIT found
for small clusters. So: a margin of 8, and those forward heads keep R in registers only (they run on `cuda`):
386 variants, all spill-free (sm_90, NVRTC 12.9).
"""

#: How the fp16-operand float32 forwards' register rule was set (documentation; ``KernelModel.f32_half_operands``,
#: ``reg_rest_with_smem_f32_half_dma``):
F32_HALF_REGISTERS = """
ptxas -v (NVRTC 12.9, sm_90) of fused_fw.cu with FLASHRNN_F32_HALF=1 on 16-block clusters, one batch n-tile, against
the rule's estimate (R's registers one for one, 28/25 of the rest):
cell   D    k_split  DMA  R k-tiles in smem  prefetch  estimate  ptxas (spill bytes)
lstm   768  1        2    25-28              1-3       272-297   255 (0)
lstm   768  1        2    29-30              1-3       257-265   246-248 (0)
lstm   768  1        0    27-30              1-3       251-275   255 (0)
slstm  768  1        2    26-28              1-3       286-302   255 (0)
slstm  768  1        2    29-30              1-3       270-278   247-248 (0)
slstm  768  1        0    27-28              1-3       281-289   255 (16-52)
gru    768  2        0    10-14              1-3       234-282   251-255 (0)
gru    768  2        0    9                  3         ~294      255 (28)
With DMA warps the rule overestimates by 20-40 registers: the copies, whose 16-byte pieces float32 storage
doubles, are the DMA warps' work, not the compute warps'. Their rest at 77/100 instead of 28/25 admits lstm D = 768
with 26 k-tiles of R in shared memory and slstm with 27 (the most that fit the shared memory next to float32's
stages), both clean; without DMA warps the rule stays (at 77/100 the any-size cluster heads of D = 432-720 that it
admitted spilled 4-52 bytes in 21 of 134 builds). The 110 kernels the stages add (compile --list before and after)
compile spill-free for sm_80 and sm_90 (NVRTC 12.9 here; 13.0 on the H200).
"""

#: Why DMA warps take split K since stop 48 (documentation; problems._add_constraints, fused_fw.cu Tile::INTERLEAVE):
DMA_SPLIT_K = """
Until stop 48 DMA warps ran with k_split 1 only (each warp's k-tiles in h's column order, from its own slot), so gru
D = 768, whose rows (16 dims x 3 gates a warp) split K in two, ran without them. A split-K pair now takes alternate
k-tiles (warp ks h's columns 2 j + ks), so both go through the slots in the order they arrive, and its partial sums
meet at the block's barrier, which the DMA warps reach at the top of their step (fused_fw.cu partials_barrier says
why not a barrier of the compute warps alone). Estimated before measuring: what DMA warps took off lstm 1x768 (-11%:
the compute warps' wait, sends and copies). Measured (H200, B=16, T=1024, forward / inference ms, the same geometry
without DMA warps -> the solver's choice; bench/results/phases/2026-12-04-h200-dma-split-k.txt):
  bf16 gru 1x768     1.877 / 1.840 -> 1.622 / 1.541 (-14% / -16%)
  bf16 elman 1x768   1.189 / 1.188 -> 1.003 / 0.987 (-16% / -17%)
  float32 gru 1x768 (fp16 operands)  2.069 / 2.001 -> 2.015 / 1.687
  float32 elman 1x768 (hi + lo)      k_split 1 with DMA warps 1.910 / 1.915, k_split 2 with them 2.012 / 2.000:
                                     so not for hi + lo operands (the constraint).
More than estimated at elman, whose step (one gate) the exchange dominates most.
The register rule's 77/100 of the rest for fp16-operand DMA kernels (F32_HALF_REGISTERS) was measured at k_split 1:
with split K the rest stays at 28/25 (ptxas, sm_90: float32 gru with 10 of its 24 k-tiles of R in shared memory
spilled 24 bytes, 11-13 did not; the rule takes 13). lstm and slstm (one d-group of 8 a warp) would split K only
with 16 dims a warp, which halves h's shared-memory reads (~70 of ~250 KB a step at 1x768): measured with that
geometry by hand (lstm 1x768 forward 2.096 -> 1.927 ms, slstm 2.213 -> 2.075; bench/results/phases/2026-12-04-
h200-wide-warps.txt, the kernel change as a patch), but even with the partial sums' buffer halved (a warp leaves
only its partner's column: 6 of its 12 KB) every split of R that fits spilled 8-20 bytes (ptxas at 255 registers)
or needed 48 bytes (lstm) to 3.6 KB (slstm) more shared memory than a block has. Built since (WIDE_WARPS).
"""

#: A head on two clusters (documentation; KernelModel.head_clusters, fused_fw.cu Tile::G and HeadHandoff):
HEAD_SPLIT = """
At 1x768 a 16-block cluster is the largest a head can have, and each block still holds 192 rows of R (295 KB), of
which the registers take ~147 KB: a step reads the rest from shared memory with h's fragments, ~184 KB an SM,
above the tensor cores' own floor (matvec_bound: 2201 cycles with R split so, 1227 with all of it in registers).
Two clusters a head halve R a block (147 KB, nearly all in registers: lstm spill-free from 6 of a warp's 24 k-tiles
in shared memory, slstm from 7; 8 dims a warp, split K under DMA warps, 24 dims a block) and hand the other
cluster's half of h over through global memory each step: tagged 8-byte words that the DMA warps publish after the
step's barrier and poll for, copy into their h buffers and count on one more mbarrier a buffer, after which the
compute warps run the mma of those columns (they come last). The solver prices it as its other geometries (the
product with half the rows, the in-cluster exchange of 24-dim slices) plus ``handoff_cycles`` on the exchange,
and requires every cluster of the grid resident at once (the partners poll each other). Built at stop 54 and
measured by hand first (bench/head_split.py, bench/cluster_exchange.py for the hand-off alone). Measured at stop 55
(H200, bench/results/phases/2026-12-05-h200-head-split.txt): slower, 19-26% on the saving forward of lstm and
slstm and ~40% on lstm's inference forward, correct (vanilla, 0 sanitizer errors). The hand-off between clusters
through L2 costs ~970 cycles a step on top of the in-cluster exchange with tagged words (one counter or a flag a
block: ~1800), and the remote half of the product waits for it, so the ~1200 cycles of R's shared-memory reads the
split saves come back and more. The stage stays off (``head_split_stages``); ``handoff_cycles`` is fitted on the
kernel's time so that the model prices it as measured.
"""

#: Why lstm and slstm D = 768 run 16 dims a warp (documentation; KernelModel.wide_warps, fused_fw.cu Tile::WIDE):
WIDE_WARPS = """
A warp of lstm or slstm owns one d-group of 8 dims (its 4 gates fill two m16 tiles). At D = 768 on 16-block
clusters each SM reads ~252 KB a step from shared memory (R's k-tiles that the registers do not hold, 178 KB, and
h's fragments, 6 warps x 48 k-tiles x 256 B = 74 KB): the step follows that traffic. With two d-groups a warp
(16 dims, four m16 tiles, as gru's and elman's warps already are) and K split between a pair of warps under the
DMA warps (alternate k-tiles, DMA_SPLIT_K), each warp reads 24 of h's k-tiles for four tiles of R instead of 48
for two: h's reads halve (37 KB), R's are as before for as many k-tiles in shared memory. The pair's partial sums
take 2 slots a tile, not 4 (fused_fw.cu Tile::PART_SLOTS: each warp writes its partner's column only), which the
wide kernels need to fit and no other kernel uses (the freed bytes moved other choices the wrong way: the halving
was measured alone, bench/results/phases/2026-12-04-h200-halved-partials.txt).
Measured by hand at stop 48 (bench/results/phases/2026-12-04-h200-wide-warps.txt, H200 bf16 B=16 T=1024, states
bitwise equal to the 8-dims kernel: warp ks's alternate k-tiles are exactly the chains k % 2 the k_split 1 kernel
sums): lstm forward 2.096 -> 1.927 ms (13 of a warp's 24 k-tiles in shared memory) and 1.974 (14), inference
1.996 -> 1.862; slstm forward 2.213 -> 2.075 (14), inference 2.118 -> 1.976; against the 8-dims kernel with 29
(lstm) and 30 (slstm) of 48 k-tiles in shared memory. Those splits spilled then; since the paired R loads
(PAIRED_R_LOADS) ptxas (NVRTC 12.9, sm_90) compiles them spill-free down to 12 k-tiles in shared memory
(bench/results/constrint/2026-12-05-wide-warps-ptxas.jsonl: lstm 255 registers at 12, 243-245 at 13, spills 20-24
bytes at 11; slstm 254 at 12, 246-250 at 13, spills 36-40 at 11; bf16 and fp16 alike, at every prefetch depth,
which only the DMA warps' shared memory follows). A factor ``reg_rest_with_smem_wide`` of 9/20 admitted 12 and
rejected 11 for both cells (the interval that does: 0.41-0.51); it is 27/50 since stop 53 (below).
The model prices the geometry with its usual terms (mma, R's shared-memory bytes, h's ldmatrix issue, the
partial sums' second barrier) and does not count h's shared-memory bytes, so it underprices the gain: it
estimated the wide launches measured at stop 48 1-4% faster than the 8-dims one (lstm forward 14 k-tiles -1.3%,
13 -3.6%; slstm 14 -2.3%) where they measured 6-8% faster. It picks wide at 12 k-tiles, prefetch 8, for every
batch and head count at D = 768: lstm forward 3564 -> 3354 cycles a step (against 29 of 48 k-tiles, prefetch 4),
slstm 3794 -> 3543 (30, prefetch 1). Expected from the measurements (-8% at 13 k-tiles, -2.4% a k-tile a warp,
DMA_SPLIT_K): ~-10%. Measured (stop 52, H200 bf16 B=16 T=1024, bench/phase_clocks.py, the 8-dims kernel pinned to
the previous choice in the same tree; bench/results/phases/2026-12-05-h200-wide-warps.txt):
  lstm  forward 2.077 -> 1.918 ms (-7.7%), inference 1.983 -> 1.822 (-8.1%)
  slstm forward 2.201 -> 2.125 ms (-3.5%), inference 2.111 -> 2.051 (-2.8%)
lstm as estimated within 2%; slstm a third of it (its stop-48 launch, 14 k-tiles at prefetch 2, measured -6%:
the 12-k-tile kernel at 254 registers, or prefetch 8, gives some of it back). Separated at stop 53 (H200 bf16 B=16
T=1024, `python -m flashrnn_core.tune --cell slstm,lstm --N 1 --D 768 --direction forward,inference --top-k 12`,
bench/results/phases/2026-12-05-h200-tune-wide-1x768.txt): prefetch 2-8 within 0.2% at each split (1 is 22-40%
slower), and slstm's 12 k-tiles against 13: forward 2.129 -> 2.065 ms (-3.0%), inference 2.054 -> 1.878 (-8.6%);
lstm's 12 against 13 within 0.8% either way (forward 1.921 / 1.905, inference 1.824 / 1.827). So 12 k-tiles
compile spill-free but run slower where ptxas squeezes slstm's larger cell into them; the register factor is
refitted on that: 27/50 (the interval 0.52-0.57) rejects slstm at 12 and keeps lstm there, so slstm takes 13 at
prefetch 4 (8 does not fit its shared memory; 14 measured 3-5% slower). Only 16-bit storage
(float32's hi + lo operands run k_split 1 under DMA warps), only D = 768 (``wide_max_D``: the largest D the variant
list compiles, where the register factor is checked), only on GPUs with clusters.
"""

#: Why the scatter backward may keep one receive buffer (documentation; KernelModel.bw_scatter_one_recv, fused_bw.cu
#: ScatterTile::ONE_RECV):
ONE_RECV = """
float32 lstm D = 768 ran its backward on `cuda` (forward+backward 27.6 ms at B=16, T=1024, against cuDNN float32's
~40): with fp16 operands its R^T fits a 16-block scatter cluster only if the partials' receive buffers (float32,
24 KB each) are one, not two (bf16 partials would round dh by ~2^-9 a partial, past SPEC's float32 tolerance). Two
buffers let a block send step t-1's partials while the others still read step t's; with one, every block arrives
at a relaxed cluster barrier (no fence) once its cell warps have read the partials, and waits on it before it sends
the next step's, after its cells: the wait falls where the slowest block's cells already hold everyone (each block
needs every block's partials before its own next product anyway). Estimated before measuring: forward+backward
~6.5 ms (the saving forward's 2.3 and a backward like gru's fp16-operand scatter kernel, ~4.1 ms at 1x768, a few
percent more for the barrier). Measured (H200, B=16, T=1024, bench/results/2026-12-04-h200-heads-float32-lstm768-
one-recv.json and ...-lstm672-one-recv.json; the backward alone ~4.5 ms, as estimated within 5%):
  float32 lstm 1x768 forward+backward 27.6 -> 6.76 ms (`cuda` alone 41.2, cuDNN float32 42.3, its float16 6.89)
  float32 lstm 1x672 forward+backward (14-block clusters, which this stage also takes) 6.79 ms (`cuda` 40.2)
Relative error against float64 (B=9, T=6): 1.0-1.9e-4. The stage comes last, after every other float32 backward
stage, so nothing else moves: the variant list gains exactly these two kernels (compile --list before and after).
slstm D = 768 still fits nothing (its stages hold more state rows: 17 KB short even so): ONE_STAGE.
"""

#: Why the scatter backward may keep one input stage (documentation; KernelModel.bw_scatter_one_stage, fused_bw.cu
#: ScatterTile::ONE_STAGE):
ONE_STAGE = """
float32 slstm D = 672 and 768 ran their backward on `cuda` after the fused forward: even with one receive buffer
(ONE_RECV) their scatter kernel needed 249 KB at D = 768 (8 warps, 45 of a warp's 72 k-tiles of R^T in shared memory,
the fewest its registers allow): sLSTM's stages hold nine rows of 8 sequences (4 saved, c and n, 3 upstream
gradients) to lstm's seven, and the partials are float32. With one input stage (15 KB) and the staged rows
without their 16-byte pad (1.6 KB) it needs 232208 of the 232448 bytes a block may have (ptxas: 252 registers, no
spill; D = 672 on 14 blocks, 6 warps: 229136). Step t-1's inputs are issued after step t's second barrier (its cells
have read the stage) and waited for before step t-1's first one, so they load under step t-1's product: at these
sizes ~4 us a step against a DRAM latency of ~1 us. The model prices it so (a step no shorter than the load, the
cells and the barriers). Estimated before measuring: forward+backward ~7.0 ms (the saving forward's ~2.6 and a
backward like lstm's one-receive-buffer kernel, ~4.4). Measured (H200, B=16, T=1024, bench/results/2026-12-04-
h200-heads-float32-slstm768-one-stage.json, ...-slstm672-one-stage.json):
  float32 slstm 1x768 forward+backward 28.2 -> 7.16 ms (`cuda` alone 41.3; 28.2: the fused forward with `cuda`'s
  backward, bench/results/2026-12-04-h200-heads-float32-768.json)
  float32 slstm 1x672 forward+backward 7.08 ms (`cuda` 40.2)
Relative error against float64 (B=9, T=6): 0.9-1.8e-4 (D = 768), 0.9-1.5e-4 (672). The stage comes after the
one-receive-buffer stages, so nothing else moves: the variant list gains exactly these two kernels.
"""

#: What loading R's pairs as one word did to the 16-bit forwards' registers, and what it leaves to refit
#: (documentation; fused_fw.cu r_fragment):
PAIRED_R_LOADS = """
The forward's prologue gathers R into A-fragments: each register holds R[k] and R[k + 1] of one row. It loaded them
as two 16-bit loads (and packed the pair); ptxas hoisted those loads, and their registers, far enough that the
prologue, not the step, set the register count of most 16-bit kernels: 141 of them compiled at the 255 cap, some
of those spilling in the prologue alone (one value stored before R's loads and reloaded after, REGISTER_FIT's
last paragraph). Since stop 51 the pair is one 32-bit load (k is even and R 16-byte aligned: the operands as they
are in memory); float32 storage keeps its loads (a float2 load raised most float32 kernels' registers, one to an
8-byte spill). ptxas (NVRTC 12.9, sm_90) of all 1473 forward variants, before and after
(bench/results/constrint/2026-12-04-fw-registers-paired-loads.tsv): of the 1042 16-bit ones 702 use fewer
registers (median 26.5 fewer, up to 92: elman bf16 1x768 248 -> 156; lstm bf16 1x768 255 -> 239), 332 as many,
8 one or two more; 2 are at the cap; the 431 float32 ones are unchanged; none spills. The step's SASS: the same
opcode sequence in the time loop of lstm 12x64, lstm 3x256, slstm 48x16 and gru D = 128 (inference); lstm 1x768
(the 255 one) the same memory, mma, MUFU and barrier instructions, with integer ops in other forms (IADD3 for
VIADD and so on). Expected: no change to a long sequence's step, a shorter prologue (half its load instructions:
the stepper, a launch a step, runs little else). Not measured yet (no GPU in stop 51).
What it leaves: the register rule of kernels with R partly in shared memory (``reg_rest_with_smem``, R's
registers one for one plus 1.12 x the rest) was fitted on the old prologue, so the 16-bit kernels now hold fewer
of R's k-tiles in registers than ptxas allows. bench/fw_rs_floor.py lowers each chosen 16-bit variant's k-tiles
in shared memory one at a time until ptxas spills (bench/results/constrint/2026-12-04-fw-rs-floor-paired-loads.
jsonl, 132 bf16 variants): on 16-block clusters the fewest clean, of a warp's k-tiles (forward / inference), are
lstm 1x768 25 / 23 of the chosen 29, slstm 1x768 23 / 23 of 30, gru 1x768 7 / 7 of 12, slstm D = 512 10 / 9 of 17,
gru D = 512 1 / 0 of 12; on smaller clusters some heads hold all of R in registers (lstm D = 336 on 7 blocks). The
factor that admits those and rejects every first spill is 0.70 with DMA warps (the 1x768 heads) and 0.84 without
(lstm D = 640 binds) on 16-block clusters; elman on smaller clusters needs more than 1.12 (elman D = 720 on 9
blocks: 1.27), so one factor for every cluster size would gain nothing. Estimated, from the wide-warp data
(DMA_SPLIT_K: one k-tile fewer a warp in shared memory, 12 KB a step at 1x768, measured -2.4%): lstm 1x768's
29 -> 25 (24 KB a step) about -5%, slstm's 30 -> 25 about as much and a deeper prefetch in the shared memory freed.
The refit with those two factors (16-block clusters only) moved eight choices, all spill-free
(bench/results/phases/2026-12-04-refit-16bit-r-smem.txt). Measured (stop 56, H100, bf16, B=16, T=1024, the heads
suite against the tree without it in one call, bench/results/phases/2026-12-05-h100-refit-16bit-r-smem.txt): gru
1x768 (DMA warps, 12 -> 9 k-tiles) forward 1.533 -> 1.472 ms, saving 1.594 -> 1.526, forward+backward 3.965 ->
3.923; slstm 1x768 at 25 k-tiles and 8 dims a warp (which the refit made the solver prefer to the wide warps' 13)
1.847 -> 1.957, slower; lstm 1x640 (no DMA warps, 20 -> 18) saving forward 1.845 -> 2.190, slower, and slstm 1x640
(22 -> 19) within its noise (inference 2.018 -> 1.935, saving 1.956 -> 1.970). So only the DMA factor is kept, and
only for warps of two d-groups by an odd Gr (``reg_rest_with_smem_16bit_dma``: gru, elman; MODEL_VERSION 27): gru
1x768 bf16 and fp16 move, nothing else does. The 0.84 without DMA warps is not applied.
"""

#: How the forward's latency constants were chosen (documentation; the numbers live in ``KernelModel``):
LATENCY_CALIBRATION = """
The structure (a block's step as a dependent chain lengthened where the warps sharing a scheduler run out of issue
slots, no shorter than the Wx load over the prefetch depth; a cluster's h exchange; waves; DRAM) and the hardware
latencies and issue rates are issue 5's. Refitted on the H200 sweep of the kernels of 5277a5c (per-thread addresses
in registers: 15-35% faster steps; bench/results/2026-11-30-h200-sweep.json, every feasible forward configuration
of the 8 reference shapes, 449 measured at T=1024, turned into cycles a step at the preset's 1.98 GHz) by
``bench/refit_forward.py --fit``: Nelder-Mead from the previous constants over skeleton_latency/issue,
output_store, cluster_exchange/per_peer/bytes_per_cycle, wx_latency and each cell's (latency, issue), minimising
the mean squared log error plus a hinge that asks, per shape, for a configuration measured within 3% of the
fastest to be estimated 1% below every other one; over the 337 rows with prefetch >= 2 (one step in flight is
estimated at wx_latency, the max() form describes it poorly, and the solver never wants it). The constants the
backward shares (sync_threads, ksplit_exchange, ldmatrix_latency, mma_latency) were kept. Relative error
|model / measured - 1| over all 449 rows: mean 0.26 -> 0.15, max 1.06 -> 1.20 (the largest are multi-wave rows:
lstm B=256 12x64 on 2-block clusters of 24 sequences, estimated at two waves, ran as one); over prefetch >= 2:
mean 0.28 -> 0.14. Solver's choice against the fastest measured: lstm B=16 12x64 1.054 -> 1.003 (one block ->
a 4-block cluster with k_split 2), lstm B=16 3x256 1.031 -> 1.002 (16-block -> 8-block clusters), lstm B=256
12x64 1.040 (unchanged: the fastest, 8-sequence tiles in three waves at prefetch 4, measured 17% slower at
prefetch 8, which the model cannot tell apart), the other five shapes within 0.1%. What the structure misses
(residuals): a block of one warp is slower than the issue terms say, 4-warp blocks slower than 2-warp ones, and
lstm 3x256 is estimated ~38% high throughout (its 8- and 16-block clusters alike, so its choice holds).
Whole-K warps (``KernelModel.whole_k``, 67d7710) are priced by the same terms (all of K's mma a warp, no split-K
exchange or second barrier, half the cells a warp) with these constants. On the sweeps of their kernels
(bench/results/constrint/2026-12-01-h200-sweep-wholek*.json, 16 shapes) the choice is within 3% of the fastest
on 14; the misses are gru 12x64 at B=16 (1.141) and B=256 (1.083), where one block of 16 whole-K warps is the
fastest: the sum of per-term maxima counts 4 warps a scheduler's issue slots term by term, where the warps overlap
one another's phases. A refit on those sweeps (mean error 0.25 -> 0.16) kept both misses and was not adopted.
"""

#: How the forward's cluster exchange was refitted, and why the inference kernel has a solve of its own:
CLUSTER_CALIBRATION = """
Stop 35 swept both forwards of the kernels of 40c9465 (bench/results/constrint/2026-12-02-h200-sweep-forward-
inference.json: every feasible configuration of 12 B=16 shapes, each cell at 12x64, 48x16 and 3x256, timed as the
forward that saves and as the inference kernel, 1096 rows). Two kinds of miss. (1) The inference kernel ran the
forward's choice, priced with the saved values' stores it does not make: lstm 12x64's one-block, k_split 1 tile
writes 6 values a cell where a 4-block cluster writes 1.5, and without the 4 saved ones it is the fastest (0.322
ms against the choice's 0.346; saving, 0.426 against 0.353). Direction "inference" prices the states alone
(``Geometry.stream_out``) with the forward's shared memory and registers (``staged_out``: the kernel keeps its
staging buffer), and picks it. (2) The exchange was priced for the kernels it was fitted on (4 bytes a cycle, 186 +
26 a peer): at 3x256 it estimated ~1240 cycles of exchange a step on 8 blocks where the whole step measured
1200-1400, and a 16-block cluster ~270 cycles above an 8-block one where elman's measured +330 (968 -> 1298 a
step, ks1) and lstm's, slstm's, gru's inference +60-130 with half the cells a block. The 16-block cluster, beyond
the portable 8, spans a GPC (issue 5 measured cluster.sync at 0.76 us there against 0.44-0.47 for 2-8 blocks):
``cluster_nonportable`` prices that step. ``bench/refit_forward.py --fit`` restricted to the four exchange constants
(``cluster_exchange``, ``cluster_per_peer``, ``cluster_bytes_per_cycle``, ``cluster_nonportable``) over this sweep
and the whole-K sweeps (2026-12-01, B=16/64/256) moved them from 186/26/4/- to 265/13/15/285. A sweep of seven
shapes held out of the fit (2026-12-02-h200-sweep-holdout-clusters.json: D = 48-384, B = 16 and 64) rejected that:
lstm 12x128 B=64 took 8-block clusters, three blocks an SM, at 1.77x the fastest (1.830 against 1.036 ms), where
the blocks sharing an SM share its shared memory's intake of slices. The slices' term now counts the blocks on an
SM (``cluster_exchange_cycles``: ``on_sm`` x received / rate); refitted, 265/13/15/282. Relative error over this
sweep's rows 0.29 -> 0.15 (mean), over the whole-K sweeps' 0.23 -> 0.19; solver against the fastest: slstm 3x256
inference 1.088 -> 1.000 (16 -> 8 blocks), elman 3x256 saving 1.090 -> 1.024 and inference 1.065 -> 1.021 (2 -> 4
blocks), slstm 3x256 saving 1.035 -> 1.041; on the held-out sweep lstm 12x128 B=64 1.017 (as before the refit),
lstm 1x128 1.144 -> 1.068, elman 1x384 1.143 -> 1.108, lstm 12x384 1.199 -> 1.001, elman 12x192 1.036 -> 1.022,
slstm 1x256 1.040 -> 1.046 (saving forward; the inference kernel within 1.084 but elman 1x384's 1.105); every
shape of the older sweeps within its bound as before (the backward's exchange keeps the old constants,
``bw_cluster_*``: its choices do not move). Measured after (H200 bf16 B=16 T=1024, the reference suite): lstm 12x64
inference 0.345 -> 0.321 ms, slstm 3x256 inference 0.706 -> 0.648, elman 3x256 0.490 -> 0.469 (saving 0.503 ->
0.471), the rest within run-to-run spread. Fitting every forward constant on these sweeps (mean error 0.12 on
this one) instead set output_store to 1 and broke gru 12x64 B=256 (1.24) and lstm 12x64 saving (1.21): not
adopted. Left then: on clusters prefetch 2 measures 2-7% faster than 4 or 8 (gru 3x256, elman 1x384, lstm 1x128),
which the model (deeper prefetch never slower) could not tell: PREFETCH_ON_CLUSTERS.
"""

#: Why a cluster's Wx is staged 3 steps ahead (``KernelModel.prefetches`` has 3, ``cluster_deep_prefetch``):
PREFETCH_ON_CLUSTERS = """
Over the sweeps of stop 35 (bench/results/constrint/2026-12-02-h200-sweep-*.json), a cluster geometry at prefetch 4
measured as slow as at 8 and, where two steps of it outlast the Wx load (measured steps above ~900 cycles), 20
cycles a step slower than at 2 (median of 238 pairs); a one-block geometry showed no such cost (median -8 over 34).
Phase clocks (bench/results/phases/2026-12-02-h200-prefetch-and-slstm-phases.txt: gru 3x256 and lstm 1x128, 8-block
clusters, prefetch 8 against 2) put it in the step's wait for h (which holds a cluster's copies, Tile::EARLY_COPIES)
and in its cells, 13-18 and 15 cycles each; the copies' own reads of Wx did not move. Why the deeper ring costs
there is not understood (the copies issued a step and the bytes in flight are the same at any depth that hides the
load; and not the code: NVRTC's PTX of lstm 12x64's 4-block kernel at prefetch 3 and 4 differs in 6 instructions of
the stage ring's index arithmetic). Prefetch 3 was then measured on six geometries (the saving forward pinned,
bench/results/phases/2026-12-02-h200-prefetch-clusters.json): it costs what 2 does and hides the load where 2 does
not: lstm 12x64 (4-block clusters,
whole-K) 0.380 / 0.339 / 0.353 / 0.353 ms at prefetch 2 / 3 / 4 / 8, slstm 12x64 0.398 / 0.377 / 0.391 / 0.391,
gru 3x256 0.592 / 0.594 / - / 0.605, elman 3x256 0.461 / 0.465 / - / 0.472, lstm 1x128 0.438 / 0.441 / - / 0.459,
lstm 3x256 0.693 / 0.690 / - / 0.690. So 3 is among the depths, and a cluster's compute warps pay
``cluster_deep_prefetch`` (25 cycles: the 20-35 measured) a step at 4 and 8: the solver stages a cluster's Wx 3
steps ahead wherever 3 hides its load (wx_latency / 3, 484 cycles, below the step). Cooperative grids and DMA-warp
kernels (Tile::DMA: their own warps issue the copies) were not measured and keep their depths (the backward's
depths, ``bw_prefetches``, stop at 3 already: measured best there). Estimated before the
reference run from the probes: lstm and slstm 12x64 saving -4%, gru and elman 3x256 -2%. Measured (H200 bf16 B=16
T=1024, the reference suite, bench/results/2026-12-02-h200-reference-4db4578-p3.json, against 235cecf's): saving
forward lstm 12x64 0.353 -> 0.338 ms, slstm 12x64 0.391 -> 0.374, gru 3x256 0.603 -> 0.587, elman 3x256 0.471 ->
0.460; inference slstm 12x64 0.364 -> 0.342 (its 4-block clusters), gru 3x256 0.586 -> 0.564, elman 3x256 0.469 ->
0.460; lstm 3x256 and the 1x768 rows within the machine's spread (that run priced the DMA-warp kernels alike, and
lstm 1x768 ran at prefetch 3: 1.981 ms against prefetch 4's 1.990 at 235cecf, which it runs again). The older sweeps
never measured prefetch 3: they replay with the depths they measured, priced as before (tests/test_constrint.py).
"""

#: Why the backward weighs clusters against one block a head from D = 64 (``bw_clusters_weighed_from_d``):
BW_CLUSTERS_AT_SMALL_HEADS = """
Until stop 39 the backward took a cluster only for heads whose R^T no block holds: its latency constants were set on
one-block kernels (backward.BW_LATENCY_CALIBRATION) and no cluster at smaller heads had been measured. The model,
asked, priced 2-block clusters below one block at 12x64 (lstm 0.861 against 0.953 ms, slstm 0.913 against 1.052):
a 12x64 head's one block runs 16 warps, 4 a scheduler, issue-bound, and a cluster spreads its cells over 2-4 SMs
for one drs exchange a step. Estimated before measuring: the backward 5-10% faster at 12x64. Measured (H200 bf16
B=16 T=1024, every backward configuration with clusters, bench/results/constrint/2026-12-03-h200-sweep-backward-
clusters.json): lstm 12x64 0.931 -> 0.809 ms at 4-block clusters with k_split 4 (0.842 at 2 blocks), slstm 1.023
-> 0.802, gru 0.863 -> 0.701, elman 0.413 one block against 0.424; at B=64 one block (dR in the kernel) stays the
fastest, as at D=32 (lstm 24x32 0.632 against 0.660). More than estimated, and most for sLSTM, whose step issued
the most. With the model weighing both (one problem, the drs exchange's fixed cost ``bw_cluster_exchange`` 186 -> 120,
which took elman 12x64 from 4-block clusters with k_split 2, 0.472 ms, to k_split 4, 0.424) every shape of that
sweep picks within 5.4% of its fastest but slstm 6x128 (a cluster before too). Held out of the choice (...-holdout.
json): slstm and gru 8x96 1.649 and 1.419 -> 1.229 and 1.067 ms (one block before), elman 6x128 0.563 -> 0.516,
lstm 12x64 at B=32 1.075 -> 0.989, each within 4.3% of its fastest; but elman and gru 24x32 took 2-block clusters
at 1.19 and 1.18x their one block with dR in the kernel: the model prices one block at D = 32 ~35% high (gru 0.711
against 0.529 ms) where it prices it within ~10% at D = 64. Hence clusters are weighed from D = 64 on, the
smallest head the sweeps measured them winning at; below, one block first as before. Reference suite after (H200,
bench/results/2026-12-03-h200-reference-36db278.json): forward+backward lstm 12x64 1.271 -> 1.182 ms, slstm
1.404 -> 1.223, gru 1.226 -> 1.079, elman 0.587 -> 0.597.
The batch suite at 36db278 (...-batch-36db278.json, lstm 12x64 forward+backward) then found the sweeps' edge: B=32
1.550 -> 1.456 ms (2-block clusters), B=64 1.525 -> 1.538 (one block, unchanged), but B=128 2.915 -> 3.235, where
the model took 2-block clusters with k_split 2 (384 blocks, three an SM, one wave; estimated 3508 cycles a step
against one block's 4140 in two waves) and they ran ~4700 (the backward ~2.43 ms against one block's ~2.11, which
the model priced within 2%). The sweeps never ran a cluster whose blocks share an SM, and the backward's exchange
constants were fit with one block an SM (``cluster_exchange_cycles`` ignores ``on_sm`` for it). Stop 39 took such
a cluster only where its blocks had an SM each; stop 40 prices the sharing instead (BW_CO_RESIDENT below), which
keeps those clusters off shared SMs by itself.
"""

#: Why each block sharing an SM adds half a block's issue to the backward's step (``bw_co_resident_issue``):
BW_CO_RESIDENT = """
The backward's step was one block's issue with the warps of every block on the SM counted per scheduler
(``warps_per_scheduler``), no more than ``bw_dependent_cpi`` cycles an instruction for a warp alone; at 4 warps a
scheduler that is latency-bound, so a second block on the SM cost nothing. The sweep of every backward configuration
at B = 96-128 (bench/results/constrint/2026-12-03-h200-sweep-backward-clusters-large-batch.json, 132 rows) measured
otherwise: every configuration whose blocks share an SM ran 15-50% above its estimate, clusters and one block alike
(lstm 12x64 B=128: 2-block clusters three an SM estimated 1.811 ms, measured 2.428; gru B=128: one block of
k_split 2, two an SM, 1.781 against 2.191, where one block with dR in the kernel, one an SM, ran 1.684). Stop 39
then barred clusters for heads one block holds from sharing an SM, which left gru B=128 at 1.30x its fastest and
lstm B=96 at 1.06x. The misprice, as a fraction of the block's issue per extra block on the SM (that sweep and its
held-out one), is 0.31 in the median of lstm, slstm and gru's configurations with k_split 2 and 4 (66 rows; p10
0.07, p90 0.57), 0.0 of elman's (36), and below 0 for k_split 1 (the model prices those latency-bound blocks high
already): a term on the issue, not the chain. 0.4 to 0.7 give the same choice on every one of the 16 backward
sweeps the tests replay (0.3 takes lstm B=96 to 2-block clusters three an SM, 1.0 elman B=256 to 1.50x).
At 0.5, with stop 39's rule removed: gru 12x64 B=128 picks one block with dR in the kernel (backward 2.191 ->
1.684 ms, its fastest), lstm B=96 one block k_split 4 with dR in the kernel (2.276 -> 2.197, 1.03x), and no other
shape of the sweeps changes; lstm and slstm B=128 keep their choices within 0.6% of the fastest without the rule.
Of the CI presets' 12x64 shapes (B = 16-256, the four cells) gru B=96 on the H100 took the same one block, and
elman B=32 2-block clusters of k_split 2 (one an SM, none measured there before; the one-block fallback of stop 39's
rule had taken one block). Measured (H200 bf16 T=1024, every backward configuration, bench/results/constrint/
2026-12-03-h200-sweep-backward-co-resident-holdout.json): that cluster 0.544 ms against 0.444 for one block with dR
in the kernel (1.23x); elman 8x256 B=64's choice, 2-block clusters of k_split 1, the fastest (1.502 ms). With the
B=16 sweep (elman 12x64: one block 0.413 ms, its 4-block cluster choice 0.424) elman's clusters never won at D = 64
and won at 6x128 (0.516 against 0.563): the model prices elman's one block ~60% high at D = 64 (its ``bw_fixed_per
_warp`` cost of 16 warps, fitted on lstm's heavier step) and its clusters within ~10%. So elman weighs clusters
from D = 128 (``bw_cell_clusters_weighed_from_d``): elman 12x64 then picks one block at B = 16 (its fastest) and
B = 32 (1.03x). gru 12x64 B=128 forward+backward measured after (bench/results/2026-12-03-h200-batch-151428a-gru.
json): 2.849 -> 2.368 ms.
"""


#: Why the backward's drs exchange costs 80 cycles a peer and 12 bytes a cycle (``bw_cluster_per_peer``,
#: ``bw_cluster_bytes_per_cycle``):
BW_EXCHANGE_REFIT = """
The backward's exchange term kept the forward's constants from before stop 35 (26 cycles a peer, 4 bytes a cycle
received), with which its other constants were calibrated on one-block kernels. On the cluster sweeps of stop 39
(bench/results/constrint/2026-12-03-h200-sweep-backward-clusters*.json) it priced 4-block clusters high against 2:
at 12x64 B=16 lstm, slstm and gru took 2-block clusters at 1.04, 1.05 and 1.03x the fastest (4 blocks, k_split 4),
slstm 6x128 at 1.19x and lstm 12x128 at 1.15x (KNOWN_MISSES until stop 40): a 4-block cluster's drs at 12x64 is
3 x 4 gates x 16 dims x 8 rows x 2 bytes = 3 KB a block a step, 768 cycles at 4 bytes a cycle, where the whole
backward step measured ~1550 cycles. A grid over (per peer, bytes a cycle) on the choices of every backward sweep
the tests replay: 8-12 bytes a cycle with 45-80 cycles a peer give the same choices, each within 5.9% of its
fastest (the worst an older sweep's gru 12x64, unchanged), lstm, slstm and gru 12x64 at their fastest (4-block
clusters, k_split 4), slstm 6x128 1.001x, lstm 12x128 1.004x at (80, 12) (1.054x at 10 bytes a cycle), gru 8x96
1.005 -> 1.028x; 6 bytes a cycle or 45 a peer at 10 took elman 6x128 to 1.13x. The per-step estimates move towards
what the reference suite measured: lstm 1x768's backward (16-block scatter clusters, the same choice) 8469 -> 5385
cycles against ~5470 measured (2.83 ms forward+backward less the saving forward), gru 1x768 8095 -> 5011 (~5120),
lstm 3x256 4925 -> 2860 (~3260). Every 1x768 and 3x256 choice stays what it was but elman 3x256 (4-block clusters,
k_split 1 -> 2).
"""


@dataclass(frozen=True)
class Geometry:
    """The fixed shape of one problem: the matmul a block runs per step, and the per-cell stream sizes.

    Forward: G[Gr*D, BT] = R[Gr*D, D] x h[D, BT]; rows per dim ``mg = Gr``, K per dim ``kg = 1``.
    Inference: the forward's, writing the states only (fused_fw.cu with FLASHRNN_SAVE=0).
    Backward: dh[D, BT] = R^T[D, Gr*D] x dg[Gr*D, BT]; ``mg = 1``, ``kg = Gr``.
    """

    function: str
    direction: str
    dtype: str  # "bfloat16", "float16" or "float32"
    D: int
    gw: int
    gr: int
    states: int
    n_saved: int
    itemsize: int  # storage bytes
    split: int  # operands per value (float32: bf16 hi + lo, or one fp16 where half_operands)
    mma_split: int  # mma per product (float32: hi*hi + hi*lo + lo*hi)
    mg: int
    kg: int
    stream_in: int  # values per cell read from global memory each step
    stream_out: int  # values per cell written each step
    live_per_cell: int  # values a thread keeps per cell across the step (states, carried gradients)
    x_per_cell: int  # streamed inputs per cell held in registers unless late_x
    bw_prev_read: int = 0  # backward: previous states its cells read (bitmask, Cell.bw_prev_read)
    bw_ds_read: int = 0  # backward: upstream state gradients its cells read (bitmask, Cell.bw_ds_read)
    #: values per cell the output staging holds (shared memory, the copy-out's registers): the inference kernel
    #: writes fewer (``stream_out``) but keeps the forward's staging, so that one geometry compiles both ways
    staged_out: int = 0
    #: float32 storage reaching the tensor cores as one fp16 operand (``KernelModel.f32_half_operands``)
    half_operands: bool = False
    #: forward, even Gr: a warp owns two d-groups of 8 (``KernelModel.wide_warps``)
    wide: bool = False

    def staged_state_rows(self, h_prev) -> Any:
        """Backward: state rows of 8 sequences a stage holds (fused_bw.cu Staging: the previous states the cells
        read, h_{t-1} too where ``h_prev`` (dR tiles in the kernel: an int or a 0/1 Expr), the upstream gradients
        they read)."""
        prev = bin(self.bw_prev_read).count("1")
        ups = bin(self.bw_ds_read).count("1")
        return prev + ups + (0 if self.bw_prev_read & 1 else 1) * h_prev

    @property
    def u(self) -> int:
        """d-groups of 8 per warp: a warp's rows (u*8 dims x mg gates) must fill whole m16 tiles (two for wide
        warps)."""
        return 1 if (8 * self.mg) % MMA_M == 0 and not self.wide else 2

    @property
    def dims_per_warp(self) -> int:
        return 8 * self.u

    @property
    def mt(self) -> int:
        """m16 tiles per warp."""
        return self.dims_per_warp * self.mg // MMA_M

    @property
    def kt(self) -> int:
        """k-tiles of the whole K (``kg * D / 16``; 0 when D is not a multiple of 16)."""
        return self.kg * self.D // MMA_K


#: The fused kernels a solve is for: fused_fw.cu saving what the backward reads, fused_fw.cu writing the states
#: only (FLASHRNN_SAVE=0: no backward will run; the forward's variables, fewer outputs to price), fused_bw.cu.
DIRECTIONS = ("forward", "inference", "backward")


def geometry(function: str, dtype, D: int, direction: str = "forward", half_operands: bool = False,
             wide: bool = False) -> Geometry:
    """The problem's fixed shape, from the cell's counts (``cells.CELLS``, the one table of them);
    ``half_operands``: float32 storage as one fp16 operand (``KernelModel.f32_half_operands``); ``wide``: 16 dims
    a warp (``KernelModel.wide_warps``; the forward, even-Gr cells)."""
    from ..cells import CELLS

    if function not in CELLS:
        raise ValueError(f"function: expected one of {', '.join(CELLS)}, got {function!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {', '.join(DIRECTIONS)}, got {direction!r}")
    cell = CELLS[function]
    itemsize = _itemsize(dtype)
    if half_operands and itemsize != 4:
        raise ValueError(f"half_operands: float32 storage only, got {_dtype_name(dtype)}")
    if wide and (direction == "backward" or cell.gates_r % 2):
        raise ValueError(f"wide: the forward of an even-Gr cell only, got {function} {direction}")
    split = 2 if itemsize == 4 and not half_operands else 1
    if direction != "backward":
        # in: Wx (gw); out: states (S) and, training, saved pre-activations; x is held until the pointwise step.
        written = cell.states + (cell.n_saved if direction == "forward" else 0)
        return Geometry(function, direction, _dtype_name(dtype), D, cell.gates_w, cell.gates_r, cell.states,
                        cell.n_saved, itemsize, split, 3 if split == 2 else 1, cell.gates_r, 1, cell.gates_w,
                        written, cell.states, cell.gates_w, staged_out=cell.states + cell.n_saved,
                        half_operands=half_operands, wide=wide)
    # in: saved (n_saved), previous states (S) and upstream state gradients (S); out: dWx (gw).
    return Geometry(function, direction, _dtype_name(dtype), D, cell.gates_w, cell.gates_r, cell.states,
                    cell.n_saved, itemsize, split, 3 if split == 2 else 1, 1, cell.gates_r, cell.n_saved + 2 * cell.states,
                    cell.gates_w, cell.states + cell.gates_r, cell.n_saved + cell.states, cell.bw_prev_read,
                    cell.bw_ds_read, staged_out=cell.gates_w, half_operands=half_operands)


_ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4}


def _dtype_name(dtype) -> str:
    """"bfloat16", "float16" or "float32" from a NumPy dtype, a type or a name (bf16, fp16, fp32 too)."""
    try:
        import numpy as np

        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}.get(name, name)
    if name not in _ITEMSIZE:
        raise ValueError(f"dtype: expected bfloat16, float16 or float32, got {dtype!r}")
    return name


def _itemsize(dtype) -> int:
    return _ITEMSIZE[_dtype_name(dtype)]


# ---------------------------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class FusedParams:
    """One launch of a fused persistent kernel, as the solver chose it.

    Shape: ``function``, ``dtype``, ``direction``, ``B``, ``N``, ``D``; ``hardware`` (name) and ``arch``.

    Mapping of work to blocks:
    - ``blocks_per_head``: blocks sharing one head (a thread-block cluster when > 1 and ``sync == "cluster"``;
      a cooperative grid when ``sync == "grid"``); each owns ``dims_per_block = D / blocks_per_head`` output
      dims, i.e. ``rows_per_block = mg * dims_per_block`` rows of the (forward: R, backward: R^T) matmul.
    - ``batch_tile``: sequences per block (``8 * batch_ntiles``, the mma's n = 8 tiles); ``batch_tiles`` blocks
      along the batch.
    - ``warps_per_block = warps_along_dims * k_split`` (``threads_per_block`` threads): ``warps_along_dims``
      warps each own ``dims_per_warp`` dims and all their gates; ``k_split`` warps split K for the same rows
      (partial sums meet in shared memory); a warp holds ``ktiles_per_warp`` k-tiles of 16.
    - ``r_ktiles_in_smem``: of those, how many live in shared memory instead of registers (0: R entirely in
      registers); ``r_bytes_registers`` / ``r_bytes_smem``: R's bytes per block in each (float32 storage keeps
      bf16 hi + lo, 4 bytes a value either way).
    - ``prefetch_steps``: steps of the streamed input (Wx forward) in flight ahead of the one computed.
    - ``sync``: "block" (one ``__syncthreads`` a step), "cluster" (distributed shared memory exchange and
      mbarriers), "grid" (cooperative grid barrier).

    Resources (model): ``smem_bytes`` (dynamic shared memory per block: equals ``Tile::SMEM_BYTES`` of
    fused_fw.cu for the forward when ``r_ktiles_in_smem == 0``), ``registers_estimate`` (per thread, the
    fitted demand) and ``register_cap`` (what the launch bounds leave a thread: ptxas spills above it),
    ``blocks_per_sm`` (resident at once), ``grid`` ((N * blocks_per_head, batch_tiles)), ``waves``.

    Estimate: ``step_cycles`` for one time step of the whole problem (all waves), ``step_us`` at the
    hardware's clock, and ``breakdown`` (the latency terms, cycles).
    """

    function: str
    dtype: str
    direction: str
    B: int
    N: int
    D: int
    hardware: str
    arch: str
    blocks_per_head: int
    dims_per_block: int
    rows_per_block: int
    batch_ntiles: int
    batch_tile: int
    batch_tiles: int
    warps_along_dims: int
    dims_per_warp: int
    k_split: int
    ktiles_per_warp: int
    warps_per_block: int
    threads_per_block: int
    r_ktiles_in_smem: int
    r_bytes_registers: int
    r_bytes_smem: int
    prefetch_steps: int
    sync: str
    smem_bytes: int
    registers_estimate: int
    register_cap: int
    blocks_per_sm: int
    grid: tuple[int, int]
    waves: int
    step_cycles: float
    step_us: float
    breakdown: dict = field(default_factory=dict, compare=False)
    fused_dr: bool = False  # backward: the kernel sums dR itself (else GEMMs after it)
    #: backward: the scatter-cluster kernel (fused_bw.cu backward_scatter): ``warps_along_dims`` warps each
    #: holding ``dims_per_warp`` dims' rows of R^T against the block's gate columns, ``ktiles_per_warp`` tiles of
    #: which ``r_ktiles_in_smem`` live in shared memory
    scatter: bool = False
    #: forward: the ``k_split`` = 2 warps each run the whole K and split the batch columns only (fused_fw.cu
    #: Tile::WHOLE_K; ``ktiles_per_warp`` is then all of K's)
    whole_k: bool = False
    #: forward, clusters: this many more warps a block (``threads_per_block`` counts them) copy and send h while the
    #: others compute (fused_fw.cu Tile::DMA)
    dma_warps: int = 0
    #: float32 storage: R and h (R^T and drs, scaled) as one fp16 operand each, TF32's precision
    #: (``KernelModel.f32_half_operands``)
    half_operands: bool = False
    #: backward, scatter: one receive buffer for the partials (``KernelModel.bw_scatter_one_recv``)
    one_recv: bool = False
    #: forward, even-Gr cells: a warp owns 16 dims, not 8 (fused_fw.cu Tile::WIDE, ``KernelModel.wide_warps``)
    wide_warps: bool = False
    #: forward: a head on this many clusters of ``blocks_per_head`` blocks (fused_fw.cu Tile::G; the launch adds
    #: a zeroed hand-off buffer, ``backends.fused``; ``KernelModel.head_clusters``)
    head_clusters: int = 1

    def template_args(self) -> dict[str, int]:
        """The -D parameters of cuda_src/fused_fw.cu (or fused_bw.cu for a backward choice) as it stands
        (FLASHRNN_NBT, ...); the backend adds the cell and storage type (``backends.fused.launch_of``, the one
        conversion to a launch)."""
        if self.direction == "backward" and self.scatter:
            return {"FLASHRNN_D": self.D, "FLASHRNN_SCATTER": 1, "FLASHRNN_WARPS": self.warps_per_block,
                    "FLASHRNN_PREFETCH": self.prefetch_steps, "FLASHRNN_STORE_DRS": int(self.stores_drs),
                    "FLASHRNN_CLUSTER": self.blocks_per_head, "FLASHRNN_R_SMEM": self.r_ktiles_in_smem,
                    **({"FLASHRNN_F32_HALF": 1} if self.half_operands else {}),
                    **({"FLASHRNN_ONE_RECV": 1} if self.one_recv else {}),
                    "FLASHRNN_THREADS": self.threads_per_block, "FLASHRNN_SMEM_BYTES": self.smem_bytes}
        if self.direction == "backward":
            return {"FLASHRNN_D": self.D, "FLASHRNN_KSPLIT": self.k_split, "FLASHRNN_PREFETCH": self.prefetch_steps,
                    "FLASHRNN_STORE_DRS": int(self.stores_drs), "FLASHRNN_FUSED_DR": int(self.fused_dr),
                    "FLASHRNN_CLUSTER": self.blocks_per_head, "FLASHRNN_R_SMEM": self.r_ktiles_in_smem,
                    "FLASHRNN_THREADS": self.threads_per_block, "FLASHRNN_SMEM_BYTES": self.smem_bytes}
        # (FLASHRNN_WHOLE_K, FLASHRNN_DMA_WARPS, FLASHRNN_F32_HALF and FLASHRNN_WIDE_WARPS only where set: the other
        # kernels keep the defines, and so the cache keys, they had; FLASHRNN_SAVE=0, last, makes the inference kernel)
        return {"FLASHRNN_D": self.D, "FLASHRNN_NBT": self.batch_ntiles, "FLASHRNN_PREFETCH": self.prefetch_steps,
                "FLASHRNN_CLUSTER": self.blocks_per_head, "FLASHRNN_KSPLIT": self.k_split,
                **({"FLASHRNN_WHOLE_K": 1} if self.whole_k else {}),
                **({"FLASHRNN_DMA_WARPS": self.dma_warps} if self.dma_warps else {}),
                **({"FLASHRNN_F32_HALF": 1} if self.half_operands else {}),
                **({"FLASHRNN_WIDE_WARPS": 1} if self.wide_warps else {}),
                **({"FLASHRNN_HEAD_CLUSTERS": self.head_clusters} if self.head_clusters > 1 else {}),
                "FLASHRNN_R_SMEM": self.r_ktiles_in_smem, "FLASHRNN_THREADS": self.threads_per_block,
                "FLASHRNN_SMEM_BYTES": self.smem_bytes,
                **({"FLASHRNN_SLSTM_SHARED_RCP": 2} if self.slstm_own_h_reciprocal else {}),
                **({"FLASHRNN_SAVE": 0} if self.direction == "inference" else {})}

    @property
    def slstm_own_h_reciprocal(self) -> bool:
        """sLSTM's forward divides h by den with a reciprocal of its own, and c, n (and the saved sigma(-f)) through
        one of scale U (cells/slstm.cuh, FLASHRNN_SLSTM_SHARED_RCP=2), where the default shares one reciprocal of
        den scale U: in 16-bit inference forwards and DMA-warp kernels. The forms differ by a MUFU op and two FMUL on
        h's chain, and what they change is ptxas's schedule of the step more than its length, so the rule follows
        measurements (stop 57, bench/results/phases/2026-12-05-slstm-reciprocals.txt; B=16 T=1024, bf16 unless
        said, ms, shared -> own, both with the steady form): inference 48x16 0.199 -> 0.163 (H200; fp16 on an H100
        0.197 -> 0.163), 12x64 0.333 -> 0.331, 2x512 1.409 -> 1.380 (H100), 3x256 and 1x768 equal, but 24x32
        0.215 -> 0.226 (H100); the saving forward of 1x768 (DMA warps) 2.047 -> 1.944 (H200), but of 48x16 0.216 ->
        0.220 and of 2x512 1.388 -> 1.446 (H100), so the other saving forwards keep the shared one. Float32's 1/x is
        a division: it keeps one."""
        return (self.function == "slstm" and self.dtype != "float32" and self.direction != "backward"
                and (self.direction == "inference" or self.dma_warps > 0))

    @property
    def stores_drs(self) -> bool:
        """Backward: the kernel writes drs for the dR GEMMs after it, where they cannot read dWx instead (gru's
        drs (g, r, z) differs from its dx (r, z, n); the other cells' drs is their dx)."""
        return self.direction == "backward" and self.function == "gru" and not self.fused_dr

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FusedParams":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["grid"] = tuple(kw["grid"])
        return cls(**kw)

    def summary(self) -> str:
        """One line a person can read."""
        kind = "scatter cluster" if self.direction == "backward" and self.scatter else "cluster"
        where = f"{kind} of {self.blocks_per_head}" if self.sync == "cluster" else (
            f"grid of {self.blocks_per_head}" if self.sync == "grid" else "one block")
        if self.head_clusters > 1:
            where = f"{self.head_clusters} {kind}s of {self.blocks_per_head}"
        return (f"{self.function} {self.dtype} {self.direction} B={self.B} N={self.N} D={self.D} on {self.hardware}: "
                f"{where} per head, {self.batch_tile} sequences x {self.threads_per_block} threads "
                f"(k_split {self.k_split}{', whole K' if self.whole_k else ''}"
                f"{f', {self.dma_warps} DMA warps' if self.dma_warps else ''}"
                f"{f', {self.dims_per_warp} dims a warp' if self.wide_warps else ''}"
                f"{', fp16 operands' if self.half_operands else ''}), prefetch {self.prefetch_steps}, "
                f"R in smem {self.r_ktiles_in_smem}/{self.ktiles_per_warp} k-tiles, {self.smem_bytes} B smem, "
                f"~{self.registers_estimate} regs "
                f"(cap {self.register_cap}), grid {self.grid}, {self.waves} wave(s), ~{self.step_cycles:.0f} "
                f"cycles ({self.step_us:.3f} us) a step")


# ---------------------------------------------------------------------------------------------- the problem


@dataclass
class FusedProblem:
    """The built problem: the solver's ``Problem``, its variables by name, and what the objective needs."""

    problem: Problem
    v: dict[str, Var]
    geo: Geometry
    hw: Hardware
    model: KernelModel
    B: int
    N: int
    regs: Expr  # registers per thread (estimate)
    smem: Expr  # dynamic shared memory per block, bytes
    float_terms: dict = field(default_factory=dict)  # id(expr) -> terms with float coefficients (see _at)


def build_fused(hw: Hardware, function: str, dtype, B: int, N: int, D: int, direction: str = "forward",
                model: KernelModel = DEFAULT_MODEL) -> FusedProblem:
    """The constraint problem of one shape (the objective included); ``solve_fused`` solves it."""
    if direction == "backward":  # fused_bw.cu: its own variables (constrint/backward.py)
        from .backward import build_backward

        geometry(function, dtype, D, direction)  # (validates the names)
        return build_backward(hw, function, dtype, B, N, D, model)
    geo = geometry(function, dtype, D, direction, half_operands=model.f32_half_operands, wide=model.wide_warps)
    p = Problem()
    kt = max(1, geo.kt)
    r_shared_allowed = _r_in_shared_memory_allowed(model, hw, geo)
    v = {
        "cluster": p.var("cluster", model.clusters),
        "warps_d": p.var("warps_d", range(1, hw.max_threads_per_block // hw.warp_size + 1), priority=-1),
        "ksplit": p.var("ksplit", model.ksplits),
        "wholek": p.var("wholek", model.whole_k, priority=-1),
        "dma": p.var("dma", (0, 1) if model.dma_warps and hw.clusters and D >= model.dma_min_D else (0,),
                     priority=-1),
        "ktw": p.var("ktw", range(1, kt + 1), priority=-1),
        "own": p.var("own", (1, 2), priority=-1),
        "nbt": p.var("nbt", range(1, max(1, min(model.max_nbt, math.ceil(B / MMA_N))) + 1)),
        "prefetch": p.var("prefetch", model.prefetches, prefer="high"),
        "r_smem_kt": p.var("r_smem_kt", range(0, kt + 1) if r_shared_allowed else (0,)),
        # Auxiliaries: determined by the choices above (propagation fixes them), never branched on first.
        "late_x": p.var("late_x", (0, 1), priority=-1),
        "clustered": p.var("clustered", (0, 1), priority=-1),
        # (R in shared memory: 16-block clusters only, REGISTER_FIT's last paragraph)
        "r_shared": p.var("r_shared", (0, 1) if r_shared_allowed else (0,), priority=-1),
        # (wide enough never to be the binding limit itself: "registers per thread" says that)
        "alloc8": p.var("alloc8", range(1, 1025), priority=-1),
        "warp_groups": p.var("warp_groups", range(1, hw.max_threads_per_block // hw.warp_size + 1), priority=-1),
        "batch_tiles": p.var("batch_tiles", range(1, math.ceil(B / MMA_N) + 1), priority=-1),
    }
    regs, smem = _resources(geo, model, v)
    _add_constraints(p, v, geo, hw, model, B, N, regs, smem)
    fp = FusedProblem(p, v, geo, hw, model, B, N, regs, smem)
    p.minimize(lambda values: _objective(fp, values), lower_bound=lambda box: _lower_bound(fp, box))
    return fp


def _resources(geo: Geometry, m: KernelModel, v: dict[str, Var]) -> tuple[Expr, Expr]:
    """(registers per thread, shared-memory bytes per block) as polynomials of the variables."""
    warps_d, ksplit, ktw, wholek, dma = v["warps_d"], v["ksplit"], v["ktw"], v["wholek"], v["dma"]
    own, nbt, prefetch, r_smem, late_x, clustered, r_shared = (
        v[k] for k in ("own", "nbt", "prefetch", "r_smem_kt", "late_x", "clustered", "r_shared"))
    mt, u, split, item = geo.mt, geo.u, geo.split, geo.itemsize
    # Registers: R's A-fragments (4 registers per m16k16 tile per operand part), h's B-fragments (2 per n8k16),
    # accumulators (4 floats per m16n8 tile), and per cell the streamed inputs (unless read late) and states.
    r_regs = 4 * split * mt * (ktw - r_smem)
    h_regs = 2 * split * nbt * ktw
    acc_regs = 4 * mt * nbt
    cells = u * nbt * own
    cell_values = cells * geo.live_per_cell + geo.x_per_cell * (cells - cells * late_x + late_x)
    # 16-byte pieces a thread copies a step: the streamed inputs into their stage and the staged outputs out.
    copy_pieces = nbt * own * Fraction(geo.dims_per_warp * item * (geo.stream_in + geo.staged_out), 128)
    rest = (m.reg_base + m.reg_per_h * h_regs + m.reg_per_acc * acc_regs
            + m.reg_per_cell_value * cell_values + m.reg_per_copy * copy_pieces
            + m.reg_f32_per_cell * (split - 1) * cells + m.reg_ksplit * (ksplit - 1 - wholek)
            + m.reg_cluster * clustered + m.reg_dma * dma)
    rest_estimate = m.reg_margin + (1 + m.reg_margin_fraction) * rest
    # R's registers at the fit's cost; or, with R partly in shared memory (r_shared = 1), one for one and the
    # rest at reg_rest_with_smem times its estimate (REGISTER_FIT, last paragraph).
    rest_factor = m.reg_rest_with_smem_wide if geo.wide else m.reg_rest_with_smem
    if geo.itemsize == 2 and geo.u == 2 and not geo.wide and not m.r_shared_any_cluster:
        rest_factor = rest_factor + (m.reg_rest_with_smem_16bit_dma - rest_factor) * dma
    if geo.half_operands:  # (with DMA warps, unless split K's partial sums: F32_HALF_REGISTERS)
        rest_factor = rest_factor + (m.reg_rest_with_smem_f32_half_dma - rest_factor) * dma * (2 - ksplit + wholek)
    regs = (rest_estimate + (1 + m.reg_margin_fraction) * m.reg_per_r * r_regs * (1 - r_shared)
            + r_shared * (r_regs + (rest_factor - 1) * rest_estimate + any_cluster_margin(m))
            + (m.reg_head_split if m.head_clusters > 1 else 0))
    # Shared memory, as Tile in fused_fw.cu: h (or dg) double-buffered over all K columns (+8 pad), the input
    # stages (prefetch + 1) over this block's columns (+16 B pad), split-K partial sums, staged outputs (two
    # buffers), mbarriers, and R's k-tiles kept in shared memory (512 B per m16k16 operand tile).
    op = 2  # tensor-core operands are 16-bit
    bt = MMA_N * nbt
    db = geo.dims_per_warp * warps_d  # dims per block
    pad = 16 // item
    h_bytes = 2 * split * op * (geo.kg * geo.D + 8) * bt
    x_bytes = (prefetch + 1) * bt * (geo.stream_in * db + pad) * item
    # KS*WARPS_D*MT*NBT*slots*32 floats when KS == 2 splits K (4 slots, 2 for wide warps: Tile::PART_SLOTS), none
    # when KS == 1 or the warps run the whole K (ksplit is 1 or 2, and wholek 1 only with ksplit 2: exact).
    part_bytes = (ksplit - 1 - wholek) * 2 * warps_d * nbt * (mt * (2 if geo.wide else 4) * 32 * 4)
    out_bytes = 2 * geo.staged_out * bt * (db + pad) * item
    # mbarriers: two (one an h buffer) in a cluster; with DMA warps (clusters of 8+) three groups a buffer.
    bar_bytes = 16 * clustered + 32 * dma + (16 * dma if m.head_clusters > 1 else 0)  # (+ Tile::REMOTE_GROUP's)
    r_bytes = warps_d * ksplit * r_smem * split * mt * 512
    return regs, h_bytes + x_bytes + part_bytes + out_bytes + bar_bytes + r_bytes


def any_cluster_margin(m: KernelModel) -> int:
    """Registers added to the estimate of a kernel with R (R^T) in shared memory on a cluster of any size
    (``KernelModel.r_shared_any_cluster``): none under the rule's own clusters."""
    return m.r_shared_any_cluster_margin if m.r_shared_any_cluster else 0


def add_block_budgets(p: Problem, v: dict[str, Var], hw: Hardware, regs: Expr, smem: Expr, warps: Expr) -> None:
    """One block's hardware budgets (the forward's and the backward's problems alike), added first so that an
    explanation names them before the tiling: registers a thread, the register file for the block's
    allocation, shared memory, threads. Needs the auxiliaries ``alloc8`` and ``warp_groups``."""
    p.add(regs <= hw.max_regs_per_thread, name=f"registers per thread <= {hw.max_regs_per_thread}")
    # Registers are allocated per warp in units of 256 (8 a thread): ``alloc8 = ceil(regs / 8)`` is exact as
    # 8*alloc8 >= regs with alloc8 minimal, and the block's allocation must fit the register file.
    p.add(8 * v["alloc8"] >= regs, name="register allocation: 8 x alloc8 >= registers")
    p.add(8 * v["alloc8"] < regs + 8, name="register allocation: alloc8 is the least such")
    # ... for the block's warps counted in groups of warp_alloc_unit (``warp_groups`` of them, exact as above).
    unit = hw.warp_alloc_unit
    p.add(unit * v["warp_groups"] >= warps, name=f"warp allocation: {unit} x warp_groups >= warps")
    p.add(unit * v["warp_groups"] < warps + unit, name="warp allocation: warp_groups is the least such")
    p.add(8 * v["alloc8"] * hw.warp_size * unit * v["warp_groups"] <= hw.regs_per_block,
          name=f"register file: allocated registers x allocated warps x {hw.warp_size} <= {hw.regs_per_block}")
    p.add(smem <= hw.smem_per_block_optin, name=f"shared memory per block <= {hw.smem_per_block_optin} B (opt-in)")
    p.add(hw.warp_size * warps <= hw.max_threads_per_block, name=f"threads per block <= {hw.max_threads_per_block}")


def add_cluster_constraints(p: Problem, v: dict[str, Var], hw: Hardware, m: KernelModel, smem: Expr, kt: int) -> None:
    """Blocks a head, and R (or R^T) partly in shared memory, the forward's and the backward's problems alike:
    the cluster size the GPU allows; the indicators ``clustered`` and ``r_shared`` (exact); where R lives partly
    in shared memory, the largest clusters and one block an SM. Needs ``cluster``, ``clustered``, ``r_smem_kt``
    and ``r_shared``; ``kt``: the head's k-tiles (at least 1)."""
    cluster = v["cluster"]
    max_cluster = hw.max_cluster if hw.clusters else (hw.sm_count if m.cooperative_heads else 1)
    why = ("thread-block clusters" if hw.clusters else
           "cooperative grid per head" if m.cooperative_heads else f"no thread-block clusters on {hw.arch}")
    p.add(cluster <= max_cluster, name=f"blocks per head <= {max_cluster} ({why})")
    # r_shared = (r_smem_kt > 0), exactly.
    p.add(v["r_smem_kt"] <= kt * v["r_shared"], name="r_shared: 1 where R k-tiles live in shared memory")
    p.add(v["r_shared"] <= v["r_smem_kt"], name="r_shared: 0 where none does")
    if not m.r_shared_any_cluster:
        p.add(cluster >= max_cluster * v["r_shared"],
              name=f"R in shared memory: {max_cluster}-block clusters (REGISTER_FIT)")
    # ... and one block an SM: with two (lstm D=512, 12 k-tiles in shared memory, B=256) compute-sanitizer's
    # synccheck reported "Missing wait" on the first mbarrier arrival; the same kernel one block an SM, none
    # (bench/results/sanitizer/README.md). Results matched vanilla either way; the cause is not found.
    # (A head on several clusters holds a block to an SM by its registers instead: _add_constraints.)
    if m.head_clusters == 1:
        p.add(2 * (smem + hw.smem_reserved_per_block) >= (hw.smem_per_sm + 1) * v["r_shared"],
              name="R in shared memory: one block an SM (shared memory over half the SM's)")
    p.add(cluster <= 1 + 15 * v["clustered"], name="clustered when cluster > 1")
    p.add(v["clustered"] <= cluster - 1, name="not clustered when cluster == 1")


def _add_constraints(p: Problem, v: dict[str, Var], geo: Geometry, hw: Hardware, m: KernelModel, B: int, N: int,
                     regs: Expr, smem: Expr) -> None:
    """Every condition of a valid, spill-free launch, named for the explanations. Added in order of what an
    explanation should prefer to name (hardware budgets first: deletion filtering keeps the earliest)."""
    cluster, warps_d, ksplit, ktw, own, dma = v["cluster"], v["warps_d"], v["ksplit"], v["ktw"], v["own"], v["dma"]
    warps = block_warps(m, v)
    threads = hw.warp_size * warps
    add_block_budgets(p, v, hw, regs, smem, warps)
    add_cluster_constraints(p, v, hw, m, smem, max(1, geo.kt))
    # batch_tiles = ceil(B / (8 nbt)), exactly: the least count of tiles that covers the batch.
    p.add(MMA_N * v["nbt"] * v["batch_tiles"] >= B, name="batch tiles cover the batch")
    p.add(MMA_N * v["nbt"] * (v["batch_tiles"] - 1) < B, name="batch tiles: the least that cover it")
    if not hw.clusters and m.cooperative_heads:
        # A grid barrier needs every block of the grid resident at once (one block an SM assumed: these blocks
        # hold R in registers and rarely share an SM).
        p.add(N * cluster * v["batch_tiles"] <= hw.sm_count,
              name="cooperative grid: every block resident (blocks per head x heads x batch tiles <= SMs)")
    # -- the mma tiling
    p.add(divides(MMA_K, geo.D), name=f"D divisible by {MMA_K} (mma k-tile)")
    G = m.head_clusters
    p.add(G * cluster * warps_d * geo.dims_per_warp == geo.D,
          name=f"D split evenly: blocks per head x warps x {geo.dims_per_warp} dims per warp == D")
    # (wholek: each of the two warps holds all of K, so k_split x k-tiles per warp is twice K's; impossible with
    # k_split 1, as ktw <= K's k-tiles.)
    p.add(ktw * ksplit == max(1, geo.kt) * (1 + v["wholek"]),
          name=f"K split evenly: k-tiles per warp x k_split == {geo.kg}*D/16 (twice that for whole-K warps)")
    p.add(own * ksplit == 2, name="batch columns: each of the k_split warps finishes 2/k_split columns")
    # DMA warps (Tile::DMA): clusters of 8+ blocks (three mbarrier groups), and a block's h slice whole k-tiles (its
    # columns are rotated by slices; a split-K pair takes alternate k-tiles, Tile::INTERLEAVE).
    p.add(cluster >= 8 * dma, name="DMA warps: clusters of 8+ blocks")
    # ... but not for float32's hi + lo operands: measured (H200, B=16, T=1024, elman 1x768) 1.91 ms with k_split 1
    # and DMA warps, 2.01 with k_split 2 (DMA_SPLIT_K says what the split gained elsewhere).
    if geo.split > 1:
        p.add((ksplit - 1 - v["wholek"]) * dma == 0, name="DMA warps: k_split 1 or whole-K warps (float32 hi + lo)")
    # (a head on several clusters: halves of k-tiles, fused_fw.cu Tile::dim_of_column)
    slot_unit = MMA_K if G == 1 else MMA_K // 2
    p.add(predicate(lambda wd, on: not on or (wd * geo.dims_per_warp) % slot_unit == 0, warps_d, dma,
                    label=f"DMA warps: a block's dims a multiple of {slot_unit}"))
    if G > 1:  # (HEAD_SPLIT)
        p.add(dma == 1, name="a head on several clusters: DMA warps hand the slices over")
        p.add(2 * regs * threads >= hw.regs_per_sm + 1,
              name="a head on several clusters: one block an SM (registers over half the SM's)")
        # The clusters of a head poll each other's words: all of the grid's clusters resident at once, within half
        # the slots cluster_slots estimates (a 16-block cluster needs 16 SMs of one GPC, and how many GPCs have
        # them varies from chip to chip; cuOccupancyMaxActiveClusters, not asked yet, would say).
        p.add(predicate(lambda cl, tiles: N * tiles * G <= cluster_slots(hw, cl, 1) // 2, cluster, v["batch_tiles"],
                        label="a head on several clusters: every cluster of the grid resident at once"))
    p.add(v["r_smem_kt"] <= ktw, name="R k-tiles in shared memory <= k-tiles per warp")
    if geo.wide:  # (as measured: WIDE_WARPS)
        p.add(ksplit - v["wholek"] + dma == 3, name="wide warps: split K (not whole-K warps) under DMA warps")
    p.add(v["nbt"] <= m.max_nbt - (m.max_nbt - 1) * v["r_shared"],
          name="R in shared memory: one batch n-tile (REGISTER_FIT)")
    # (A block's h slice moves in 16-byte pieces: dims per block x 2 bytes is a multiple of 16 because
    # dims_per_warp is 8 or 16, so no constraint is needed for it.)
    # -- indicators (exact: the kernel's own switches)
    p.add(m.late_x_threads * v["late_x"] <= threads, name="late_x only at 384+ threads")
    p.add(threads <= m.late_x_threads - 1 + hw.max_threads_per_block * v["late_x"], name="late_x at 384+ threads")
    # -- the kernel's 32-bit pointer steps (fused.py): Gw*N*D (and n_saved*N*D) elements per time step.
    p.add(Expr.lift(N * geo.D * max(geo.gw, geo.n_saved)) <= 2**31 - 1,
          name="N*D*gates < 2^31 (32-bit per-step pointer offsets)")


# ---------------------------------------------------------------------------------------------- the estimate


def _at(expr: Expr, fp: FusedProblem, values: dict[str, int]) -> float:
    """An expression's value at an assignment by name (float coefficients: the objective runs at every leaf)."""
    terms = fp.float_terms.get(id(expr))
    if terms is None:
        terms = fp.float_terms[id(expr)] = [(float(c), tuple(fp.problem.names[i] for i in m))
                                            for m, c in expr.terms.items()]
    total = 0.0
    for c, names in terms:
        for n in names:
            c *= values[n]
        total += c
    return total


def register_cap(hw: Hardware, threads: int) -> int:
    """Registers a thread may use under ``__launch_bounds__(threads, 1)``: the block's share of the register
    file in whole allocation units (256 a warp) over its warps counted in groups of 4, at most 255."""
    warps = hw.allocated_warps(threads)
    per_warp = hw.regs_per_block // warps // hw.reg_alloc_unit * hw.reg_alloc_unit
    return min(hw.max_regs_per_thread, per_warp // hw.warp_size)


def blocks_per_sm(hw: Hardware, threads: int, regs: float, smem: int) -> int:
    """Blocks resident on one SM at once (registers in allocation units, shared memory with its reserve)."""
    warps = hw.allocated_warps(threads)
    unit = hw.reg_alloc_unit
    regs_warp = math.ceil(math.ceil(regs) * hw.warp_size / unit) * unit
    by_regs = hw.regs_per_sm // max(1, regs_warp * warps)
    by_smem = hw.smem_per_sm // (smem + hw.smem_reserved_per_block)
    by_threads = hw.max_threads_per_sm // threads
    return max(0, min(by_regs, by_smem, by_threads, hw.max_blocks_per_sm))


def cluster_slots(hw: Hardware, cluster: int, per_sm: int) -> int:
    """Groups of ``cluster`` blocks resident at once. A thread-block cluster lives in one GPC, so each GPC holds
    ``floor(SMs per GPC x blocks per SM / cluster)`` of them; single blocks and cooperative grids go anywhere."""
    if cluster == 1 or not hw.clusters:  # (a cooperative grid's blocks go anywhere)
        return hw.sm_count * per_sm // cluster
    per_gpc = hw.sm_count // max(1, hw.gpcs)
    return hw.gpcs * (per_gpc * per_sm // cluster)


def estimate(fp: FusedProblem, values: dict[str, int], resident: int | None = None) -> dict[str, float]:
    """The latency model: cycles per time step of the whole problem (``total``), with its terms.

    One block's step is a dependent chain (h load -> mma chain -> pointwise -> h store -> barrier), lengthened
    where the warps sharing a scheduler (this block's and co-resident blocks') run out of issue slots, and no
    shorter than the Wx load latency spread over the prefetch depth. Blocks beyond one wave run after it (a
    persistent kernel's waves are sequential), and none of it is faster than DRAM streams the step's inputs and
    outputs. ``resident`` overrides the blocks an SM holds (the lower bound's optimism).
    """
    if fp.geo.direction == "backward":
        from . import backward

        return backward.estimate(fp, values)
    hw = fp.hw
    threads = block_warps(fp.model, values) * hw.warp_size
    regs, smem = _at(fp.regs, fp, values), int(_at(fp.smem, fp, values))
    per_sm = max(1, blocks_per_sm(hw, threads, regs, smem) if resident is None else resident)
    occupancy = _occupancy(fp, values, per_sm)
    terms = _step_terms(fp, values, occupancy["warps_per_scheduler"], occupancy["on_sm"])
    chain = sum(terms.values())
    step = max(chain, fp.model.wx_latency / values["prefetch"])
    dram = _dram_cycles(fp, values, occupancy["blocks"] / occupancy["waves"])
    total = occupancy["waves"] * max(step, dram)
    return {"total": total, "step": step, "chain": chain, "dram": dram, **occupancy, **terms,
            "prefetch_bound": fp.model.wx_latency / values["prefetch"], "regs": regs, "smem": smem,
            "blocks_per_sm": per_sm}


def block_warps(m: KernelModel, values: dict) -> Any:
    """A block's warps: the compute warps and any DMA warps (Tile::DMA); of an assignment (an int) or of the
    problem's variables (an expression)."""
    return values["warps_d"] * values["ksplit"] + m.dma_warps * values.get("dma", 0)


def _occupancy(fp: FusedProblem, values: dict[str, int], per_sm: int) -> dict[str, float]:
    """Blocks in the grid, waves, blocks sharing an SM, and warps per scheduler (the compute warps': DMA warps
    issue a few copies and sends a step)."""
    hw, cluster = fp.hw, values["cluster"]
    blocks = fp.N * fp.model.head_clusters * cluster * math.ceil(fp.B / (MMA_N * values["nbt"]))
    waves = max(1, math.ceil(blocks / max(1, cluster_slots(hw, cluster, per_sm) * cluster)))
    on_sm = min(per_sm, math.ceil(blocks / hw.sm_count))
    warps = values["warps_d"] * values["ksplit"]
    return {"blocks": blocks, "waves": waves, "on_sm": on_sm,
            "warps_per_scheduler": max(1.0, warps * on_sm / fp.model.schedulers)}


def _step_terms(fp: FusedProblem, values: dict[str, int], wps: float, on_sm: int) -> dict[str, float]:
    """The terms of one block's step (cycles); their sum is the step's dependent chain."""
    geo, m = fp.geo, fp.model
    ktw, nbt, r_smem = values["ktw"], values["nbt"], values["r_smem_kt"]
    mt, warps = geo.mt, values["warps_d"] * values["ksplit"]
    # mma: the dependent chain over the k-tiles (split into independent partial sums, Tile::CHAINS), or the
    # sub-partition's mma throughput when the warps sharing it issue more than the chain's length covers.
    chains = min(max(m.chains_wanted // (mt * nbt), 1), ktw)
    n_mma = geo.mma_split * mt * nbt * ktw
    mma = max(math.ceil(ktw / chains) * geo.mma_split * m.mma_latency, n_mma * wps * m.mma_issue)
    # R's k-tiles in shared memory: their ldmatrix issue, and the SM's shared-memory bandwidth for all warps.
    r_bw = warps * on_sm * r_smem * mt * geo.split * 512 / m.smem_bytes_per_cycle
    cells = geo.u * nbt * values["own"]
    cost = m.cells[geo.function]
    exchange = _exchange_cycles(fp, values, on_sm)
    if values.get("dma", 0):  # the exchange partly under the mma of the slices already there, and the waits
        exchange += m.dma_waits - m.dma_overlap * min(exchange, max(mma, r_bw))
    return {
        "barrier": m.sync_threads + (m.sync_threads + m.ksplit_exchange if partials(values) else 0),
        "ldmatrix": m.ldmatrix_latency + m.ldmatrix_issue * geo.split * nbt * math.ceil(ktw / 2) * wps,
        "mma": max(mma, r_bw),
        "r_smem": m.r_smem_ldmatrix * r_smem * mt * geo.split * wps,
        "pointwise": max(cost.latency + (cells - 1) * cost.issue, cells * cost.issue * wps),
        "outputs": m.output_store * geo.stream_out * cells * wps,
        "skeleton": m.skeleton_latency + m.skeleton_issue * wps,
        "exchange": exchange,
        "deep_prefetch": m.cluster_deep_prefetch if _deep_prefetch_priced(fp, values) else 0,
    }


def _deep_prefetch_priced(fp: FusedProblem, values: dict[str, int]) -> bool:
    """Whether the step pays ``cluster_deep_prefetch``: the compute warps of a cluster (not a cooperative grid's
    blocks, nor a kernel whose DMA warps issue the copies: neither was measured) staging Wx 4 or more steps
    ahead."""
    return fp.hw.clusters and values["cluster"] > 1 and not values.get("dma", 0) and values["prefetch"] > 3


def partials(values: dict[str, int]) -> bool:
    """Whether the warps of a row set exchange partial sums (split K) each step."""
    return values["ksplit"] > 1 and not values.get("wholek", 0)


def _exchange_cycles(fp: FusedProblem, values: dict[str, int], on_sm: int = 1) -> float:
    """Moving h (or dg) between the blocks of a head each step: distributed shared memory in a cluster, a grid
    barrier (and global memory) in a cooperative grid; nothing for a head on one block."""
    geo, m, cluster = fp.geo, fp.model, values["cluster"]
    if cluster == 1:
        return 0.0
    G = m.head_clusters if geo.direction != "backward" else 1
    received = (cluster - 1) * geo.split * MMA_N * values["nbt"] * geo.kg * (geo.D // (G * cluster)) * 2
    if fp.hw.clusters:  # (a head on several clusters: the hand-off through global memory too, HEAD_SPLIT)
        return (cluster_exchange_cycles(m, fp.hw, cluster, received, on_sm, backward=geo.direction == "backward")
                + (m.handoff_cycles if G > 1 else 0))
    return m.grid_sync + received / m.cluster_bytes_per_cycle


def cluster_exchange_cycles(m: KernelModel, hw: Hardware, cluster: int, received: float, on_sm: int = 1,
                            backward: bool = False) -> float:
    """One step's exchange on a cluster of ``cluster`` blocks, each receiving ``received`` bytes, ``on_sm`` of
    them sharing an SM (whose writes into its shared memory they share): the forward's constants, or the
    backward's (``bw_cluster_*``, calibrated without the last two terms)."""
    if backward:
        return m.bw_cluster_exchange + (cluster - 2) * m.bw_cluster_per_peer + received / m.bw_cluster_bytes_per_cycle
    return (m.cluster_exchange + (cluster - 2) * m.cluster_per_peer + on_sm * received / m.cluster_bytes_per_cycle
            + (cluster > hw.max_cluster_portable) * m.cluster_nonportable)


def _dram_cycles(fp: FusedProblem, values: dict[str, int], blocks_per_wave: float) -> float:
    """One wave's streamed inputs and outputs of a step over the DRAM bandwidth actually achieved."""
    geo = fp.geo
    dims = geo.D // (values["cluster"] * fp.model.head_clusters)
    per_block = MMA_N * values["nbt"] * dims * (geo.stream_in + geo.stream_out) * geo.itemsize
    return blocks_per_wave * per_block / (fp.hw.bytes_per_cycle() * fp.model.dram_efficiency)


def _objective(fp: FusedProblem, values: dict[str, int]) -> float:
    return estimate(fp, values)["total"]


def _lower_bound(fp: FusedProblem, box: dict[str, tuple[int, int]]) -> float:
    """Admissible: once the block shape (cluster, ksplit, nbt) is fixed, no leaf of ``box`` estimates below it;
    0 before that. Its step is the estimate's at the deepest prefetch and the fewest R k-tiles in shared memory
    left, with one block an SM (more blocks sharing an SM only add warps a scheduler and slices to take in), less
    a cluster's deep_prefetch term (a shallower prefetch may save it); its waves are the fewest, every block an SM
    can hold resident; and no leaf streams its inputs and outputs faster than DRAM takes all of them at once.
    (Waves and step from one residency, every block an SM can hold, was not admissible: a multi-wave float32
    lstm B=256 12x512 estimated 219480 cycles there against a leaf's 208320, and the search pruned that leaf.)"""
    if any(box[k][0] != box[k][1] for k in ("cluster", "ksplit", "wholek", "dma", "nbt", "warps_d", "ktw", "own")):
        return 0.0
    values = {k: lo for k, (lo, hi) in box.items()}
    values["prefetch"] = box["prefetch"][1]
    values["late_x"] = box["late_x"][0]
    values["clustered"] = box["clustered"][0]
    one = estimate(fp, values, resident=1)
    fewest_waves = _occupancy(fp, values, fp.hw.max_blocks_per_sm)["waves"]
    all_at_once = _dram_cycles(fp, values, one["blocks"])
    return max(fewest_waves * (one["step"] - one.get("deep_prefetch", 0.0)), all_at_once)


# ---------------------------------------------------------------------------------------------- solving


def _r_in_shared_memory_allowed(model: KernelModel, hw: Hardware, geo: Geometry) -> bool:
    """Whether R's (the backward: R^T's) k-tiles may go to shared memory: GPUs with clusters
    (REGISTER_FIT, last paragraph), and a D that the largest cluster splits evenly (its only cluster size: without
    this the stage is infeasible all the same, and explaining why searched it for up to a minute, D=160).
    float32 as 16-bit (since stop 29; both its bf16 slices, hi and lo, of a k-tile go to shared memory)."""
    split_unit = hw.max_cluster * (MMA_M if geo.direction == "backward" else geo.dims_per_warp)
    return model.r_in_shared_memory and hw.clusters and (geo.D % split_unit == 0 or model.r_shared_any_cluster)


def wide_warps_allowed(model: KernelModel, hw: Hardware, function: str, dtype, D: int, direction: str) -> bool:
    """Whether a stage with ``model.wide_warps`` can take the head at all (WIDE_WARPS): a 16-bit forward of an
    even-Gr cell, on a GPU with clusters, at a D that DMA warps take and R in shared memory splits evenly."""
    if direction == "backward" or _itemsize(dtype) != 2:
        return False
    geo = geometry(function, dtype, D, direction)
    if geo.u != 1:
        return False
    wide = geometry(function, dtype, D, direction, wide=True)
    return (bool(model.dma_warps) and hw.clusters and model.dma_min_D <= D <= model.wide_max_D
            and _r_in_shared_memory_allowed(model, hw, wide))


def head_split_allowed(model: KernelModel, hw: Hardware, function: str, dtype, D: int, direction: str) -> bool:
    """Whether a stage with ``model.head_clusters`` > 1 can take the head at all (HEAD_SPLIT): a 16-bit forward
    on a GPU with clusters, at a D that DMA warps take and whose largest clusters, that many a head, split it into
    whole warps with R partly in shared memory."""
    if direction == "backward" or _itemsize(dtype) != 2 or not (model.dma_warps and hw.clusters):
        return False
    geo = geometry(function, dtype, D, direction)
    return (D >= model.dma_min_D and D % (model.head_clusters * hw.max_cluster * geo.dims_per_warp) == 0
            and _r_in_shared_memory_allowed(model, hw, geo))


def _stages(model: KernelModel, hw: Hardware, function: str, dtype, D: int, direction: str) -> list[KernelModel]:
    """The models to try in turn: all of R in registers, then, where it is allowed at all, R partly in shared
    memory (``KernelModel.r_in_shared_memory``). The backward weighs clusters against one block a head from
    ``KernelModel.bw_clusters_weighed_from_d`` on; below, one block a head first, clusters only for heads whose
    R^T no block holds; and last, on GPUs with clusters, the scatter-cluster kernel
    (``KernelModel.bw_scatter``), which is weighed against the first feasible cluster stage (``_weighed_with``);
    then each cluster stage again with clusters of every size (``KernelModel.any_cluster_size``); for a 16-bit
    forward of lstm or slstm at the D DMA warps take, 16 dims a warp (``KernelModel.wide_warps``, weighed), and
    where ``KernelModel.head_split_stages``, a head on two clusters (``KernelModel.head_clusters``, weighed); and
    last, for a float32 forward, every stage again with fp16 operands (``KernelModel.f32_half_operands``)."""
    stages = []
    geo = geometry(function, dtype, D, direction)
    weighed_from = model.bw_clusters_weighed_from(function)
    if direction == "backward" and hw.clusters and (weighed_from is None or D < weighed_from):
        stages.append(replace(model, clusters=(1,), r_in_shared_memory=False))
    if _r_in_shared_memory_allowed(model, hw, geo):
        stages.append(replace(model, r_in_shared_memory=False))
    stages.append(model)
    if direction == "backward" and hw.clusters and D % (MMA_M * 2) == 0:
        stages.append(replace(model, bw_scatter=True))
    if model.any_cluster_size and hw.clusters:
        spilled = direction != "backward" and any(
            (f, d) == (function, geo.dtype) and e in (None, D) for f, d, e in model.r_shared_any_cluster_forward_spills)
        stages += _any_size_stages(stages, tuple(range(1, hw.max_cluster + 1)), r_shared=not spilled)
    wide = replace(model, wide_warps=True)
    if model.wide_warp_stages and wide_warps_allowed(wide, hw, function, dtype, D, direction):
        stages.append(wide)
    split = replace(model, head_clusters=2, wide_warps=False)
    if model.head_split_stages and head_split_allowed(split, hw, function, dtype, D, direction):
        stages.append(split)
    if geo.itemsize == 4 and model.f32_half_operand_stages:  # (the backward: its scatter kernel only)
        stages += [replace(s, f32_half_operands=True) for s in stages if direction != "backward" or s.bw_scatter]
        if direction == "backward":
            stages += [replace(s, bw_scatter_one_recv=True) for s in stages if s.bw_scatter and s.f32_half_operands]
            stages += [replace(s, bw_scatter_one_stage=True) for s in stages if s.bw_scatter_one_recv]
    return stages


def _any_size_stages(stages: list[KernelModel], every_size: tuple[int, ...], r_shared: bool) -> list[KernelModel]:
    """The cluster stages again with clusters of every size (``KernelModel.any_cluster_size``): R in registers
    first, then the scatter-cluster stage (R^T in shared memory is its own rule there), then, where ``r_shared``,
    R partly in shared memory on clusters of any size (``KernelModel.r_shared_any_cluster``)."""
    in_registers, shared, scatter = [], [], []
    for s in stages:
        if max(s.clusters) == 1:
            continue
        if s.bw_scatter:
            scatter.append(replace(s, clusters=every_size))
            continue
        in_registers.append(replace(s, clusters=every_size, r_in_shared_memory=False))
        if s.r_in_shared_memory and r_shared:
            shared.append(replace(s, clusters=every_size, r_shared_any_cluster=True))
    found: list[KernelModel] = []
    for s in in_registers + scatter + shared:
        if s not in found:
            found.append(s)
    return found


def _weighed_with(stages: list[KernelModel], first: int, best: FusedParams) -> list[KernelModel]:
    """The later stages whose solutions compete with those of ``stages[first]``, the first feasible one, whose best
    is ``best``: where that is a backward cluster kernel with R^T partly in shared memory, the scatter-cluster
    stage, which was built for those heads. Both run one head on a 16-block cluster with R^T partly in shared
    memory, so their estimates may compare as the one-block constants do not with either; measured (H200 bf16 1x768
    backward, B=16, bench/results/2026-12-01-h200-reference-389f749.json): gru's cluster kernel (estimated 11267
    cycles a step) took 3.61 ms, lstm's scatter kernel (8535) 2.82, a ratio of 1.28 against the estimates' 1.32.
    Without this gru D = 768 ran the cluster kernel and its scatter kernel, estimated at 8161, was never weighed
    (lstm and slstm reach the scatter stage as the only feasible one). With it
    (bench/results/phases/2026-12-02-h200-scatter-choice.txt): gru 1x768 forward+backward 5.49 -> 4.54 ms, the lstm
    and slstm 1x512 backward kernels 2.97 -> 1.81 and 3.00 -> 1.84 ms. Weighed against every cluster stage, the
    model would move 30 backward variants to scatter kernels (lstm/slstm/gru/elman D = 128-768, lstm 3x256 among
    them) on estimates not calibrated there: measure before widening. float32's scatter kernel (stop 45) is weighed
    the same way: it takes the heads no other stage takes (lstm/slstm D = 192, 384, 512, gru D = 192, 384), and
    lstm/slstm D = 256 from the cluster kernel with R^T in shared memory, measured (H200, B=16, T=1024, backward with
    its dR GEMMs, bench/results/phases/2026-12-03-h200-float32-scatter.txt): lstm 3x256 3.97 -> 2.95 ms, slstm
    3.81 -> 2.89, lstm 1x256 3.57 -> 2.54; so did gru D = 512 (1x512 4.58 -> 2.86) and elman D = 768 at 12 heads
    or B = 256 (-30%).
    Since stop 46 the scatter stage is also weighed where the best is a cluster kernel that runs in more than one
    wave (12 heads, or B = 256): the scatter kernel holds R^T in half the blocks or fewer, so its clusters run in
    fewer waves. Measured first (H200, B=16, T=1024, backward kernel and dR, cluster -> scatter, bench/results/
    phases/2026-12-04-h200-scatter-waves.txt): bf16 lstm 12x256 3.50 -> 2.04 ms, gru 12x512 8.81 -> 4.09, elman
    12x768 5.57 -> 2.98; float32 elman 12x384 4.23 -> 2.81, gru 12x256 5.93 -> 5.20. Where both run in one wave the
    estimates rank them poorly (bf16 lstm 3x256: cluster 1.62 ms estimated 2787 cycles, scatter 2.09 estimated
    2652), so there the rule stays as it was. The comparison is of the estimates as they are: the scatter estimate
    counts one wave (backward.scatter_estimate), and multiplying its step by its waves, tried, put float32 elman
    12x768 back on the cluster kernel that measured 30% slower."""
    if any(s.wide_warps or s.head_clusters > 1 for s in stages):  # (a forward: WIDE_WARPS, HEAD_SPLIT)
        return [s for s in stages[first + 1:] if s.wide_warps or s.head_clusters > 1]
    if stages[first].bw_scatter:
        return []
    in_shared_memory = first > 0 and best.r_ktiles_in_smem > 0
    waves = best.blocks_per_head > 1 and best.waves > 1
    if not (in_shared_memory or waves):
        return []
    # (never the fp16-operand stages against split ones: those are for what no split launch takes)
    half = stages[first].f32_half_operands
    return [s for s in stages[first + 1:] if s.bw_scatter and s.f32_half_operands == half]


def solve_fused(hardware: Hardware, function: str, dtype, B: int, N: int, D: int, direction: str = "forward",
                model: KernelModel = DEFAULT_MODEL, explain: bool = True) -> FusedParams | Infeasible:
    """The fastest valid parameters for one shape by the model, or ``Infeasible`` naming the conflicting
    constraints (``.conflict``) and a sentence (``.reason``; ``explain=False`` skips finding them, for callers
    that only need to know, such as the kernel-variant enumeration)."""
    if B < 1 or N < 1 or D < 1:
        raise ValueError(f"B, N, D must be positive, got B={B} N={N} D={D}")
    stages = _stages(model, hardware, function, dtype, D, direction)
    for i, stage in enumerate(stages):
        fp = build_fused(hardware, function, dtype, B, N, D, direction, stage)
        result = fp.problem.solve(explain=explain and len(stages) == 1)
        if not isinstance(result, Infeasible):
            best = params_from(fp, result.values)
            for other in _weighed_with(stages, i, best):
                ofp = build_fused(hardware, function, dtype, B, N, D, direction, other)
                found = ofp.problem.solve(explain=False)
                if not isinstance(found, Infeasible):
                    candidate = params_from(ofp, found.values)
                    best = candidate if candidate.step_cycles < best.step_cycles else best
            return best
    if not explain:
        return result
    if len(stages) == 1:
        return _in_words(result)
    # Explained on the first stage, the plainest kernel: the later ones only add variables (clusters, R in shared
    # memory), and explaining them re-solves a large search dozens of times (lstm 1x768's backward: 213 s).
    plainest = stages[0]
    if max(plainest.clusters) > 1 and direction == "backward":  # (clusters weighed from the first stage on)
        plainest = replace(plainest, clusters=(1,), r_in_shared_memory=False)
    first = build_fused(hardware, function, dtype, B, N, D, direction, plainest).problem.solve(explain=True)
    odd_sizes = any(c & (c - 1) for s in stages for c in s.clusters)
    added = [what for what, on in (("a cluster a head", any(max(s.clusters) > max(plainest.clusters)
                                                              for s in stages) and hardware.clusters),
                                   ("a cluster of any size", odd_sizes and hardware.clusters),
                                   ("R in shared memory", any(s.r_in_shared_memory for s in stages[1:])
                                    or any(s.r_shared_any_cluster for s in stages)),
                                   ("a scatter cluster", any(s.bw_scatter for s in stages[1:])),
                                   ("fp16 operands", any(s.f32_half_operands for s in stages)))
             if on]
    return _in_words(first, f" (and none with {' or '.join(added)} either)" if added else "")


def _in_words(found: Infeasible, tail: str = "") -> Infeasible:
    """The conflict as the constraints' names alone ("registers per thread <= 255; K split evenly: ..."): the
    solver's own reason spells each one out as a polynomial over the model's variables, which tells a user of
    the kernel nothing (``fp.problem.solve()`` still gives it, for work on the model)."""
    if not found.conflict:  # an empty domain, or not explained: the solver's sentence is already short
        return Infeasible(found.conflict, found.reason + tail, found.stats)
    return Infeasible(found.conflict, f"its limits conflict: {'; '.join(found.conflict)}{tail}", found.stats)


def top_k(hardware: Hardware, function: str, dtype, B: int, N: int, D: int, k: int, direction: str = "forward",
          model: KernelModel = DEFAULT_MODEL) -> list[FusedParams] | Infeasible:
    """The ``k`` best feasible parameter sets by the model, best first (for a measured sweep)."""
    def best_k(stage: KernelModel) -> list[FusedParams] | Infeasible:
        fp = build_fused(hardware, function, dtype, B, N, D, direction, stage)
        # Without pruning by the bound every distinct launch is a candidate, not only each block shape's best.
        fp.problem.minimize(lambda values, fp=fp: _objective(fp, values))
        found = fp.problem.best(k)
        return found if isinstance(found, Infeasible) else [params_from(fp, s.values) for s in found]

    stages = _stages(model, hardware, function, dtype, D, direction)
    for i, stage in enumerate(stages):
        found = best_k(stage)
        if not isinstance(found, Infeasible):
            for other in _weighed_with(stages, i, found[0]):
                more = best_k(other)
                found += [] if isinstance(more, Infeasible) else more
            return sorted(found, key=lambda p: p.step_cycles)[:k]
    return found


def all_feasible(hardware: Hardware, function: str, dtype, B: int, N: int, D: int, direction: str = "forward",
                 model: KernelModel = DEFAULT_MODEL) -> list[FusedParams]:
    """Every configuration the problem admits (each a distinct launch: the auxiliary variables follow from the
    choices), best estimate first; empty when the shape is infeasible. For exhaustive measured sweeps. Those
    of the first of ``_stages`` that has any: R in shared memory only where it does not fit the registers."""
    def every(stage: KernelModel) -> list[FusedParams]:
        fp = build_fused(hardware, function, dtype, B, N, D, direction, stage)
        return [params_from(fp, values) for values in fp.problem.solutions()]

    stages = _stages(model, hardware, function, dtype, D, direction)
    for i, stage in enumerate(stages):
        found = every(stage)
        if found:
            for other in _weighed_with(stages, i, min(found, key=lambda p: p.step_cycles)):
                found += every(other)
            return sorted(found, key=lambda p: p.step_cycles)
    return []


def assess(hardware: Hardware, function: str, dtype, B: int, N: int, D: int, *, blocks_per_head: int = 1,
           k_split: int, batch_ntiles: int = 1, prefetch_steps: int, r_ktiles_in_smem: int = 0,
           fused_dr: bool = False, whole_k: bool = False, dma_warps: int = 0, direction: str = "forward",
           model: KernelModel = DEFAULT_MODEL, explain: bool = True,
           head_clusters: int = 1) -> FusedParams | Infeasible:
    """The model's verdict on one given configuration (a hand-picked or a measured one): its ``FusedParams``
    with the estimate, or ``Infeasible`` naming the limits it breaks (the "given ..." constraints among them;
    ``explain=False``: naming none, which is much faster where only feasibility matters).
    A backward configuration is (``blocks_per_head``, ``k_split``, ``prefetch_steps``, ``fused_dr``,
    ``r_ktiles_in_smem``): 8 sequences a block. ``head_clusters`` > 1: a forward head on that many clusters
    (``KernelModel.head_clusters``, HEAD_SPLIT), whether or not the model's stages offer it."""
    if head_clusters != model.head_clusters:
        model = replace(model, head_clusters=head_clusters, wide_warps=False)
    fp = build_fused(hardware, function, dtype, B, N, D, direction, model)
    if direction == "backward":
        if batch_ntiles != 1:
            raise ValueError(f"assess: fused_bw.cu runs 8 sequences a block (batch_ntiles=1), got {batch_ntiles}")
        given = {"cluster": blocks_per_head, "ksplit": k_split, "prefetch": prefetch_steps, "fused_dr": int(fused_dr),
                 "r_smem_kt": r_ktiles_in_smem}
    else:
        given = {"cluster": blocks_per_head, "ksplit": k_split, "nbt": batch_ntiles, "prefetch": prefetch_steps,
                 "r_smem_kt": r_ktiles_in_smem, "wholek": int(whole_k), "dma": int(dma_warps > 0)}
        if dma_warps not in (0, model.dma_warps):
            raise ValueError(f"assess: the kernel model offers {model.dma_warps} DMA warps, got {dma_warps}")
    for name, value in given.items():
        fp.problem.add(fp.v[name] == value, name=f"given {name} = {value}")
    result = fp.problem.solve(explain=explain)
    if isinstance(result, Infeasible):
        return _in_words(result) if explain else result
    return params_from(fp, result.values)


def params_from(fp: FusedProblem, values: dict[str, int]) -> FusedParams:
    """A solution's ``FusedParams`` (derived sizes and the estimate filled in)."""
    geo, hw = fp.geo, fp.hw
    if geo.direction == "backward":
        from . import backward

        return backward.params_from(fp, values)
    e = estimate(fp, values)
    warps = values["warps_d"] * values["ksplit"]  # (the compute warps; threads count the DMA warps too)
    threads = block_warps(fp.model, values) * hw.warp_size
    nbt, cluster, G = values["nbt"], values["cluster"], fp.model.head_clusters
    dims_per_block = geo.D // (G * cluster)
    r_tile_bytes = 512 * geo.split  # one m16k16 operand tile (both parts for float32)
    r_smem_bytes = warps * values["r_smem_kt"] * geo.mt * r_tile_bytes
    r_total = geo.gr * geo.D * geo.D * 2 * geo.split // (G * cluster)
    sync = "block" if cluster == 1 else ("cluster" if hw.clusters else "grid")
    breakdown = {k: round(float(val), 1) for k, val in e.items()}
    return FusedParams(
        function=geo.function, dtype=geo.dtype, direction=geo.direction, B=fp.B, N=fp.N, D=geo.D,
        hardware=hw.name, arch=hw.arch, blocks_per_head=cluster, dims_per_block=dims_per_block,
        rows_per_block=geo.mg * dims_per_block, batch_ntiles=nbt, batch_tile=MMA_N * nbt,
        batch_tiles=math.ceil(fp.B / (MMA_N * nbt)), warps_along_dims=values["warps_d"],
        dims_per_warp=geo.dims_per_warp, k_split=values["ksplit"], ktiles_per_warp=values["ktw"],
        warps_per_block=threads // hw.warp_size, threads_per_block=threads, r_ktiles_in_smem=values["r_smem_kt"],
        r_bytes_registers=r_total - r_smem_bytes, r_bytes_smem=r_smem_bytes, prefetch_steps=values["prefetch"],
        sync=sync, smem_bytes=int(e["smem"]), registers_estimate=math.ceil(e["regs"]),
        register_cap=register_cap(hw, threads), blocks_per_sm=int(e["blocks_per_sm"]),
        grid=(fp.N * G * cluster, math.ceil(fp.B / (MMA_N * nbt))), waves=int(e["waves"]), step_cycles=e["total"],
        step_us=hw.cycles_to_us(e["total"]), breakdown=breakdown, whole_k=bool(values["wholek"]),
        dma_warps=fp.model.dma_warps * values.get("dma", 0), half_operands=geo.half_operands, wide_warps=geo.wide,
        head_clusters=G)

