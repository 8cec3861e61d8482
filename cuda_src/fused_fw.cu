// cuda_fused forward: one persistent kernel for the whole sequence; every block owns one head and a tile of
// 8*NBT sequences, so blocks never talk to each other and a time step costs one __syncthreads, no grid sync.
// Heads too large for one block take a thread-block cluster of CL blocks (sm_90; see Tile and HSlice).
//
// Per block and step t (the design measured in issue 5):
//   * R lives in registers as mma.sync A-fragments for the whole run (loaded once).
//   * h_{t-1} lives in shared memory, double-buffered (step t reads buffer t%2, writes (t+1)%2), so one
//     barrier per step orders both the reads of step t-1 and the writes of step t.
//   * Wx[:, t+P] is copied into shared memory with cp.async P steps ahead (P+1 stages, so the stage being
//     refilled is the one the previous step finished reading before this step's barrier).
//   * the rows of R are ordered so that one thread's accumulators hold every gate of the same (d, b): the
//     cell's pointwise step runs on registers, with no exchange between threads, and the other states (c, n, m)
//     never leave registers.
//   * the step's outputs (states, saved pre-activations) go to a shared-memory staging buffer and leave the
//     next step as whole 16-byte pieces of rows (measured: 12 scattered 2-byte global stores a thread cost
//     ~540 cycles a step at 12x64; staged, the outputs cost ~0). Handing the staged rows to the copy engine
//     instead (cp.async.bulk, one thread a row) measured 2x slower: reusing a staging buffer the next step
//     needs cp.async.bulk.wait_group.read, which waited ~0.9 us a step.
//
// Matrix view: G[Gr*D, BT] = R[Gr*D, D] x H[D, BT]: M = gate rows, K = D, N = the batch tile (8 per n-tile).
// A warp owns U groups of 8 consecutive d and all Gr gates of them: HT = U*Gr "half tiles" of 8 rows that pair
// into MT = HT/2 m16 tiles (half tile q holds gate q % Gr of d-group q / Gr). U = 1 for an even Gr (lstm,
// slstm), 2 for odd (gru: 3 tiles = 6 halves; elman: 1 tile = 2 halves).
//
// float32 storage: R and h are split as hi + lo, both bf16 (16 significant bits together), and each product
// is hi*hi + hi*lo + lo*hi on the bf16 tensor cores: relative error about 1e-5, inside SPEC's 1e-4 for
// float32 (a single TF32 mma, 10 mantissa bits, lands near 1e-3 and would not be). Heads whose R does not fit
// twice over (float32 lstm, slstm, gru D = 768) take one fp16 operand instead, TF32's precision (FLASHRNN_F32_HALF,
// common/mma.cuh OperandOf).
//
// ---- Per-step latency, 12x64 LSTM bf16, B=16 (estimated BEFORE measuring; H100 at ~1.75 GHz) -----------
//   barrier (8 warps, after the last warp's h store)            ~ 25 cycles
//   ldmatrix.x4 x2 of h (one round trip to shared memory)       ~ 30
//   mma chain: 4 dependent m16n8k16 (2 independent tiles interleaved), ~33 cycles each   ~ 135
//   pointwise LSTM on 2 cells per thread: 3 dependent transcendental stages (sigma/tanh of
//     the gates -> c -> tanh(c)), each ex2+rcp ~ 40, plus FMAs                          ~ 110
//   h convert + st.shared, then arrive                           ~ 20
//   -------------------------------------------------------------------------------------
//   ~ 320 cycles = 0.18 us per step -> T=1024: ~0.19 ms (+ launch and prologue ~10 us).
//   The global stores (states, saved) and the cp.async of Wx are off the critical path (fire and forget).
//
// ---- Measured (H100 SXM at 1.98 GHz; per step = (t(T=1024) - t(T=1)) / 1023) ------------------------------
//   12x64 LSTM bf16, B=16, the project's cells (hardware tanh): 0.53 ms, 0.51 us = ~1010 cycles a step, 3x
//   the estimate. Ablations (.scratch harness, same build): without the cell math 868 cycles, without the
//   outputs 848, without both 600; elman 12x64: 472 (406 without both). So the estimate's mma + pointwise
//   chain (~300) is there, and the misses are: (1) the step's "skeleton" (barrier, ldmatrix, Wx copy issue,
//   output staging and copy-out, loop bookkeeping) executes ~120 instructions a warp, and 8 warps share 4
//   schedulers, so issue, not latency, sets ~300 of the 600 cycles (ncu: 4.4 cycles between a warp's
//   instructions, "wait"/fixed-latency stalls first, the barrier second at 12%); (2) the outputs still cost
//   ~160 (12 staging stores a thread, and the copy-out); (3) a step can be no shorter than the Wx load
//   latency (~0.6 us) over prefetch-1 steps (1 ahead: elman 0.60 us a step; 3: 0.29), hence up to 8 ahead.
//   (On a cluster, 4 or more ahead costs 20-35 cycles a step that 2 and 3 do not, not understood: the solver
//   stages a cluster's Wx 3 ahead, constrint.problems.PREFETCH_ON_CLUSTERS.)
//   With placeholder cells (libdevice tanhf and IEEE divisions) the same kernel took 2050 cycles: the cell
//   math is issue-bound too, each instruction costing two issue slots of its scheduler.
// ---- Addresses (stop 15; H200, bf16 B=16 T=1024, bench/results/2026-11-30-h200-reference*.json) ------------
//   The SASS of a 12x64 step held 292 instructions a warp, ~70 of them index arithmetic the compiler rebuilt
//   each step from element indices and generic pointers: lane-derived offsets of every staging store, the Wx and
//   output copies' div/mod and 64-bit pointer selects, the cluster sender's loop. Now every access is a
//   per-thread 32-bit shared address (or 64-bit global one) computed before the loop plus a compile-time
//   offset (common/pieces.cuh, common/types.cuh): 194 instructions a step (cuobjdump -sass, loop body; cluster
//   variants 460-570 -> 200-290). Expected: ~20% (issue ~530 of ~1010 cycles a step, 2 warps a scheduler).
//   Measured: lstm 12x64 0.541 -> 0.460 ms (-15%), 48x16 0.381 -> 0.252 (-34%), 3x256 1.03 -> 0.82, slstm
//   12x64 0.667 -> 0.490, gru 0.555 -> 0.471, elman 0.266 -> 0.212 (cf4b611). ncu then put 16% of the stall
//   samples on one S2R + compare: the compiler rebuilt a copy's "is this piece mine" bit from threadIdx inside
//   the loop. keep() pins such values (d255229): lstm 12x64 0.449 ms (0.44 us, ~870 cycles a step), slstm 0.486,
//   and the backward 4% faster. Starting the accumulators at x + b (no adds after the mma) was tried and
//   measured no gain (gru 3% slower: the x loads then lead the mma chain), so it is not here. What is left of
//   the step is latency more than issue (ncu: 0.41 instructions issued a cycle per scheduler, "no eligible"
//   59%): the barrier, the mma chain and the MUFU chain of the cell.
// ---- R partly in shared memory (stop 16: Tile::RS; heads no cluster holds in registers, 1x768) ------------
//   lstm 1x768 bf16, B=16: R is 4.7 MB, 295 KB for each block of a 16-block cluster (one per 8-sequence tile, 2
//   clusters, 32 SMs). 6 warps a block; a warp's 48 k-tiles x 2 m-tiles: 20 k-tiles in registers (160 of 255),
//   28 in shared memory (172 KB, one 16-byte load a lane per fragment; the solver's register rule,
//   constrint/problems.py REGISTER_FIT). Estimated BEFORE measuring, a step: shared-memory reads 172 KB of R +
//   74 KB of h (every warp reads all of h) at 128 B/cycle ~1900 cycles, over which 96 mma a warp (2 warps on two
//   of the 4 schedulers: ~1500 issue cycles) overlap; the h exchange (11.5 KB from 15 blocks) ~900; cell and
//   barrier ~200: ~3000 cycles, 1.5 us, ~1.6 ms at T=1024. Measured (H200, T=1024): 2.44-2.46 ms, 2.4 us =
//   ~4750 cycles a step (the model: 2.31). ncu (T=256): 18% of the stall samples right after the h exchange's
//   mbarrier wait, 6% in its spin loop; the HMMA lines hold most of the rest, 1-2% each. Relaxing that wait's
//   acquire to CTA scope removed the L1 invalidation the samples sat on and measured the same (2.44 ms): the
//   samples were waiting for the other blocks' h, not for the invalidation. The other 1x768 cells: gru 2.10 ms
//   (k_split 2, 12 of 24 k-tiles in shared memory), slstm 2.96, elman 1.32 (R fits the registers: 1.2 MB).
//   Other variants measured RS 26-30, prefetch 1-4 and k_split 2 (14 of 24 k-tiles): 2.44-2.56 ms.
// ---- Where a cluster's step goes (stop 21; bench/phase_clocks.py: clock64 per phase, lane 0 of every warp) ------
//   H200 bf16 B=16 T=1024, cycles a step (SM clock ~1.63 GHz under this load), mean over warps, at 0ff66e5:
//     lstm 1x768:  wait for h 766, h + mma 1940, Wx reads + copies 237, cells 223, barrier 29, send h 620, loop 90
//     lstm 12x64:  wait for h 202, h + mma 87, copies 140, cells 187, barrier 13, send h 82, loop 59
//   Without the exchange (FLASHRNN_ABLATE_EXCHANGE, wrong results): lstm 1x768 2.455 -> 1.559 ms, 3x256 0.813 ->
//   0.452, 12x64 0.440 -> 0.264, slstm 1x768 2.927 -> 1.994, gru 1x768 2.090 -> 1.210: the h exchange is 37-45%
//   of every cluster forward. At 1x768 the send alone (4 shared loads + 4 st.async a thread, 11.5 KB leaving
//   the SM) takes ~620 cycles to issue: ~18 B a cycle, the SM's outgoing distributed-shared-memory rate as this
//   kernel sees it. Bulk copies instead (cp.async.bulk, one a row and receiver: 120 instead of 720 pieces)
//   made it worse, ~1330 cycles to issue (HSlice). What the exchange leaves to overlap is the wait: the step's
//   copies moved there (Tile::EARLY_COPIES) took 3-16% off the cluster shapes. Left: the exchange itself, a
//   gather of all of h by every block; the 1x768 matmul (1940 cycles for 96 mma a warp, 56 of them on R's
//   shared-memory fragments) is the other half. The cycles against the time (lstm 1x768: 3719 cycles a step at
//   T=1024, 3691 at T=64; 2.330 and 0.173 ms) put the SM clock at ~1.65 GHz under this kernel and ~29 us outside
//   the loop (R's 4.7 MB into registers and shared memory), not a hidden cost a step.
// ---- What bounds the 1x768 product (stop 26; bench/matvec_bound.py, results/phases/...-matvec-bound.txt) ------
//   One SM running only a 1x768 lstm block's product (192 rows x 48 k-tiles x 8 sequences, then a barrier), H200:
//   2201 cycles a step with this kernel's split (29 k-tiles of R from shared memory, h's fragments loaded every
//   step; 178 + 74 KB a step, ~90% of the SM's shared-memory bandwidth), 1227 with all of R in registers (the
//   tensor cores alone). 1.5 ms at T=1024 is ~2560 cycles a step, so the product alone leaves no room for the
//   cells, the barrier and the exchange. wgmma (sm_90a, m64n8k16, h through a descriptor) measured ~2600 for the
//   same product, A from registers or shared memory: at n = 8 it is 2x slower than mma.sync, hence mma.sync here.
//   Nor can R's registers grow: in the DMA kernel's SASS (sm_90, bf16) R12-R163 hold R's 38 register fragments and
//   the rest of the 255 the accumulators (2 m-tiles x 2 chains) and the ldmatrix loads of R's shared k-tiles and
//   of h in flight; with 28 k-tiles in shared memory instead of 29 ptxas spills (48 bytes), with 27 112.
#include "common/entry.cuh"
#include "common/mma.cuh"
#include "common/phase_clocks.cuh"
#include "common/pieces.cuh"
#include "common/types.cuh"
#include "cells/cells.cuh"

namespace flashrnn {
namespace fused {

// Compile-time geometry of one variant. backends/fused.py mirrors THREADS and SMEM_BYTES (keep them equal).
// CL blocks (a cluster) share one head: block `rank` owns the DB = D/CL output dims [rank*DB, (rank+1)*DB) and
// all of K; KS warps split K for the same rows (their partial sums meet in shared memory; or, WHOLE_K, each runs
// all of K and they split the batch columns only). Of a warp's KTW k-tiles of R, the last RS live in shared memory
// instead of registers (heads whose R does not fit the registers of the blocks, up to 16, that can share it: 1x768).
template <class Cell, class T, int D_, int NBT_, int P_, int CL_, int KS_, int RS_> struct Tile {
    using Op = typename OperandOf<T>::Op;
    static constexpr int SPLIT = OperandOf<T>::SPLIT;
    static constexpr bool KEEP = SPLIT == 1;  // per-thread addresses pinned in registers (common/pieces.cuh, keep)
    static constexpr int D = D_, NBT = NBT_, BT = 8 * NBT_, P = P_, NS = P_ + 1, CL = CL_, KS = KS_;
    static constexpr int GW = Cell::GW, GR = Cell::GR, GB = Cell::GB, S = Cell::S, NSAVED = Cell::NSAVED;
    // FLASHRNN_WIDE_WARPS=1 (a geometry the solver chooses, FusedParams.wide_warps; even-Gr cells, split K under
    // DMA warps): a warp owns two d-groups of 8 (16 dims, U = 2) where one fills its m16 tiles. A split-K pair of
    // such warps reads each of h's k-tiles once for twice the rows: at lstm 1x768 h's fragments are ~74 KB of the
    // ~252 KB a step an SM reads from shared memory, and this halves them. Measured by hand (stop 48, H200 bf16
    // B=16 T=1024, bench/results/phases/2026-12-04-h200-wide-warps.txt, bitwise equal to 8 dims a warp): lstm
    // 1x768 forward 2.096 -> 1.927 ms, slstm 2.213 -> 2.075; built once the paired R loads (problems.PAIRED_R_LOADS)
    // let it fit spill-free (problems.WIDE_WARPS).
#if defined(FLASHRNN_WIDE_WARPS) && FLASHRNN_WIDE_WARPS
    static constexpr bool WIDE = GR % 2 == 0;
#else
    static constexpr bool WIDE = false;
#endif
    static constexpr int U = GR % 2 == 0 && !WIDE ? 1 : 2;
    static constexpr int HT = U * GR, MT = HT / 2, DW = 8 * U;
    // Where U = 2, which of the warp's 16 dims a lane's two cells have: 2g and 2g + 1 (R's rows reordered to match),
    // so that the lane's two cells of a batch row read Wx and write h and the outputs as one 32-bit access instead
    // of two 16-bit ones; FLASHRNN_PAIRED_DIMS=0 (measurement knob) gives g and 8 + g, as the mma's rows g and g + 8
    // fall. The step loop's SASS (nvdisasm, sm_90, bf16): gru 12x64 265 -> 237 instructions (shared loads 18 -> 12,
    // stores 24 -> 12, PRMT 14 -> 0), elman 12x64 140 -> 120, gru B=256 (3 n-tiles) 469 -> 419, gru 3x256 (8-block
    // cluster) 256 -> 240. Expected: gru 12x64 runs one warp a scheduler, so every instruction is on the warp's path:
    // ~5-10% a step (0.471 ms -> ~0.43-0.45). Measured (H200 bf16 T=1024, bench/phase_clocks.py, bitwise equal):
    // gru 12x64 0.471 -> 0.399 ms, B=64 0.471 -> 0.404, B=256 1.592 -> 1.040, 3x256 0.700 -> 0.615, 48x16 0.379 ->
    // 0.330, elman 12x64 0.209 -> 0.186. More than the instruction count says: the clocks put it in the cells
    // (gru 12x64 356 -> 208 cycles a step) and Wx's reads (286 -> 250), the phases that wait on shared memory,
    // where two dependent 16-bit accesses (and their PRMT merges) each paid the load's latency.
#ifdef FLASHRNN_PAIRED_DIMS
    static constexpr bool PAIRED_R = U == 2 && FLASHRNN_PAIRED_DIMS;
#else
    static constexpr bool PAIRED_R = U == 2;
#endif
    // The dim (within the warp's DW) of the mma's output row g of gate set u (R's rows are laid out to match).
    __device__ __forceinline__ static constexpr int r_dim_of(int u, int g) {
        return PAIRED_R ? 2 * g + u : 8 * u + g;
    }
    // The dim (within the warp's DW) of a lane's cell u (u < CU); g is the lane's mma row.
    __device__ __forceinline__ static constexpr int dim_of(int u, int g) {
        return TRADE ? (g & ~1) + u : r_dim_of(u, g);
    }
    // FLASHRNN_HEAD_CLUSTERS=G (DMA warps; FusedParams.head_clusters, a stage off until measured, HEAD_SPLIT): a head
    // spans G clusters of CL blocks, so each block holds a G-th of the rows of R it would hold on one cluster. At
    // 1x768 one 16-block cluster leaves R 295 KB a block, of which ~147 KB are read from shared memory every step
    // (the bound of the forward, bench/results/phases/2026-12-01-h200-matvec-bound.txt); on two, R is 147 KB a block
    // and nearly all of it fits the registers. The price: the other clusters' slices of h come through global
    // memory every step (HeadHandoff), not distributed shared memory, which ends at the cluster.
#ifdef FLASHRNN_HEAD_CLUSTERS
    static constexpr int G = FLASHRNN_HEAD_CLUSTERS;
#else
    static constexpr int G = 1;
#endif
    static constexpr int DB = D / (CL * G);                 // output dims of one block
    // FLASHRNN_DMA_WARPS=n (clusters; a geometry the solver chooses, FusedParams.dma_warps): n more warps a block,
    // which run no math. They send the block's h slice to the cluster, refill Wx's stages and write the staged
    // outputs, while the WARPS compute warps start the next step's mma on the h columns that have arrived: every
    // block keeps h's columns rotated (its own slice first, then the slice of rank - 1, rank - 2, ..., the order
    // in which the senders deliver them) and the receivers count them on XG mbarriers (groups of slices) instead
    // of one, which the mma wait for one by one. Expected before measuring (lstm 1x768, phase clocks at 0ff66e5,
    // cycles a step: wait for h 766, h + mma 1940, copies 237, cells 223, send 620, rest ~120): the send and the
    // copies leave the compute warps, and the wait shrinks to the first group's arrival less the own slice's mma
    // (~200): ~3900 -> ~2600 cycles a step (2.30 -> ~1.6 ms), less what the incoming h and the sender's reads
    // take of the shared-memory bandwidth the mma over R's shared-memory k-tiles already use up.
    // Measured (H200 bf16 B=16 T=1024, bench/results/phases/2026-12-01-h200-dma.txt, the same R split): lstm 1x768
    // 2.346 -> 2.094 ms (-11%), slstm 2.436 -> 2.216 (-9%). A third of the estimate: the DMA warps took ~3100
    // cycles a step to send the 11.5 KB that the whole block had sent in ~590, their st.async queued behind the
    // compute warps' shared-memory loads of R and h (the same path through the SM), so the slices arrive during
    // most of the mma (h + mma 2009 -> 2983 cycles, the wait 829 -> 18): what the step saves is the idle wait, not
    // the traffic. One DMA warp: 2.41 ms (its copies then ~830 cycles too); exchange groups (two DMA warps) 3:
    // 2.09 ms, 5: 2.10, 15: 2.40 (the waits inside the mma), 1 (no overlap, one DMA warp): 2.71.
#ifdef FLASHRNN_DMA_WARPS
    static constexpr int DMA_WARPS = CL_ > 1 ? FLASHRNN_DMA_WARPS : 0;
#else
    static constexpr int DMA_WARPS = 0;
#endif
    static constexpr bool DMA = DMA_WARPS > 0;
    static constexpr int WARPS_D = DB / DW, WARPS = WARPS_D * KS, THREADS = 32 * (WARPS + DMA_WARPS);
    static constexpr int COPIERS = DMA ? 32 * DMA_WARPS : THREADS;  // threads that issue the copies and the sends
    // FLASHRNN_WHOLE_K=1 (a geometry the solver chooses, FusedParams.whole_k): the KS = 2 warps of a row set each
    // run the whole K (the same mma twice) and still finish one of the lane's two batch columns each, so there are
    // no partial sums to exchange, and each warp has half the cells, copies and stores of a KS = 1 warp. For heads
    // whose K is too short to split (D = 16: one k-tile) or whose partial-sum exchange costs more than the k-tiles
    // it saves a warp. Expected before measuring (lstm 48x16, 2 -> 4 warps a block, one a scheduler; phase clocks
    // at e5fcc70: mma 74, x + copies 175, cells 169, loop 78 of 532 cycles a step): the cells and the copies' issue
    // halve, the mma stay, ~-30% a step (0.261 -> ~0.19 ms); slstm 48x16, whose cells are longer, a little more.
    // Measured (H200 bf16 B=16 T=1024; bench/results/constrint/2026-12-01-h200-sweep-wholek*.json, the forward that
    // saves): lstm 48x16 0.264 -> 0.219 ms (-17%), slstm 0.298 -> 0.249, gru 0.330 -> 0.228 (-31%); and where the
    // split-K pair's partial sums and second barrier cost more than two more k-tiles a warp: lstm 12x64 (4-block
    // clusters) 0.384 -> 0.342, slstm 12x64 0.421 -> 0.388, gru B=256 1.026 -> 0.947. Half the estimate at lstm
    // 48x16: the phase clocks (bench/results/phases/2026-12-01-h200-forward-wholek.txt) put cells at 169 -> 122
    // cycles a step and x + copies at 175 -> 124, not half: one cell a lane still runs the whole dependent chain
    // of its cell (a latency, not the issue slots the estimate halved); the second cell had mostly overlapped it.
#ifdef FLASHRNN_WHOLE_K
    static constexpr bool WHOLE_K = KS_ > 1 && FLASHRNN_WHOLE_K;
#else
    static constexpr bool WHOLE_K = false;
#endif
    static constexpr int KT = D / 16, KTW = WHOLE_K ? KT : KT / KS;  // k-tiles of the head, of one warp
    static constexpr bool PARTIALS = KS > 1 && !WHOLE_K;    // split-K partial sums meet in shared memory
    // Split-K under DMA warps: the pair's k-tiles alternate (warp ks has h's columns 2 j + ks), so that both warps
    // go through h's slots in the order they arrive (their halves of K in a row, warp 1 would wait for the
    // later slices while warp 0 ran). Measured (constrint/problems.py DMA_SPLIT_K): gru 1x768 forward 1.877 ->
    // 1.622 ms with DMA warps so, elman 1.189 -> 1.003 (bf16, B=16, T=1024).
    static constexpr bool INTERLEAVE = PARTIALS && DMA;
    static constexpr int KSTEP = INTERLEAVE ? 2 : 1;       // h's columns (k-tiles) from one of a warp's to the next
    // The h column (k-tile) of warp ks's j-th k-tile (of the KS that share a row set), and (no INTERLEAVE) its first.
    __device__ __forceinline__ static constexpr int kt0_of(int ks) { return WHOLE_K ? 0 : ks * KTW; }
    __device__ __forceinline__ static constexpr int column_of_ktile(int ks, int j) {
        return INTERLEAVE ? 2 * j + ks : kt0_of(ks) + j;
    }
    static constexpr int RS = RS_, KTR = KTW - RS_;         // ... of those in shared memory, in registers
    static constexpr int OWN = 2 / KS;                      // batch columns c (of 2 per lane) a warp finishes
    // Where U = 1 (and each lane finishes both of its batch columns, KS = 1), the mma leaves a lane one dim g in two
    // batch rows; with TRADE, lanes g and g ^ 1 trade one column's gate sums (a shuffle a gate, trade_columns) so
    // that each holds dims g & ~1 and g | 1 of one row, 2*c4 + (g & 1): the paired 32-bit accesses of PAIRED_R,
    // R as it was. Measured (H200 bf16 T=1024, bench/phase_clocks.py, bitwise equal): lstm 12x64 B=256 (3 n-tiles)
    // 1.343 -> 1.224 ms, slstm 1.642 -> 1.553; B=64 (8 warps) lstm 0.460 -> 0.444; 1x768 (6 warps) lstm 2.329 ->
    // 2.320, slstm 2.459 -> 2.410; but 48x16 (2 warps, one a scheduler) lstm 0.263 -> 0.304, slstm 0.298 -> 0.340:
    // the shuffle's latency lands on a latency-bound step, where the saved issue slots buy nothing. So: where the
    // block's cells (warps x n-tiles) are more than its 4 schedulers' one warp each. FLASHRNN_TRADE_CELLS=0|1
    // (measurement knob) overrides the rule.
#ifdef FLASHRNN_TRADE_CELLS
    static constexpr bool TRADE = U == 1 && KS_ == 1 && FLASHRNN_TRADE_CELLS;
#else
    static constexpr bool TRADE = U == 1 && KS_ == 1 && WARPS * NBT_ > 4;
#endif
    static constexpr bool PAIRED = PAIRED_R || TRADE;    // a lane's cells u = 0, 1 on adjacent dims
    static constexpr int CU = TRADE ? 2 : U;              // a lane's cells in one batch row (of an n-tile)
    static constexpr int COWN = TRADE ? 1 : OWN;          // ... and the batch columns they are in
    static constexpr int CHAINS_WANTED = 4 / (MT * NBT) > 1 ? 4 / (MT * NBT) : 1;
    static constexpr int CHAINS = CHAINS_WANTED < KTW ? CHAINS_WANTED : KTW;  // independent partial sums
    // h's fragments are read HG k-tiles at a time as the matmul reaches them: all at once (one shared-memory round
    // trip at the head of the step's chain) unless R fills the registers and spills into shared memory, where two
    // at a time leave ptxas registers to keep R's shared-memory loads ahead (1x768 forward: lstm -0.8%, slstm
    // -1.2%, gru -1.5%; no change at 12x64).
    // With a DMA warp, two at a time too: the mma start on the slices that have arrived.
    static constexpr int HG = RS_ > 0 || DMA ? 2 : KTW;
    // Clusters issue the step's copies (Wx's refill, the last step's outputs) before waiting for the other
    // blocks' h, where the warps would idle; one block issues them after the mma, off the step's chain. Measured
    // (H200 bf16 B=16 T=1024, bench/phase_clocks.py): before the wait, lstm 12x64 0.440 -> 0.401 ms, 3x256 0.813 ->
    // 0.686, 1x768 2.455 -> 2.384, slstm 1x768 2.927 -> 2.514 (its prefetch-1 Wx load had ~400 cycles exposed at
    // the closing barrier), gru 1x768 2.090 -> 1.996; but one-block kernels slower (lstm 48x16 0.261 -> 0.284,
    // elman 12x64 0.207 -> 0.227: nothing to wait for, and the copies then delay the mma).
    static constexpr bool EARLY_COPIES = CL_ > 1;
    // One block: the staged outputs' shared-memory loads are written before the mma and their global stores after
    // the cells, where the step issued each store right after its load and the warp (one a scheduler at 48x16)
    // stalled on the load's ~30 cycles in the mma's shadow, ahead of the cells. Estimated 0-30 cycles of ~450 a
    // step at 48x16 (0-6%); measured more (H200 bf16 B=16 T=1024, A/B in one call, inference forward): lstm 48x16
    // 0.181 -> 0.163 ms, slstm 48x16 0.210 -> 0.196, gru 48x16 0.178 -> 0.150, elman 48x16 0.185 -> 0.127,
    // gru 12x64 0.299 -> 0.273, elman 12x64 0.179 -> 0.163; clusters unchanged (bench/results/phases/
    // 2026-12-02-h200-split-flush.txt). ptxas does not keep the load where it is written: the SASS (sm_90) sinks
    // it, with the refill's cp.async, below the cells (gru 12x64: among them), ~20 instructions ahead of its
    // store. So what the step gained is the load, the refill and the store off the mma -> cells path, and what
    // the barrier phase grew by (21-71 cycles) is them, now between the last cell and the barrier (lstm 48x16:
    // 44 instructions there). FLASHRNN_NO_SPLIT_FLUSH (measurement knob) for the A/B.
#ifdef FLASHRNN_NO_SPLIT_FLUSH
    static constexpr bool SPLIT_FLUSH = false;
#else
    static constexpr bool SPLIT_FLUSH = !EARLY_COPIES;
#endif
    // Each warp of a small cluster sends the h it computed to the other blocks as soon as its cells are done (the
    // pieces it wrote itself, after a __syncwarp), instead of the block sending its whole slice after the step's
    // barrier: the sends leave during the other warps' cells and the barrier. Estimated before measuring: 12x64
    // (send ~80 cycles a step, barrier ~13) ~5% a step; 1x768 (send ~620 at the SM's outgoing rate, cells ~220 to
    // overlap) 5-8%. Measured (H200 bf16 B=16 T=1024, bench/phase_clocks.py, warp against block sends): 4 blocks
    // (lstm 12x64 0.399 -> 0.385 ms, slstm 12x64 0.442 -> 0.421) faster; 8 and 16 slower or within 2% (lstm 3x256
    // 0.688 -> 0.716, gru 1x768 1.987 -> 2.101; lstm 1x768 2.339 -> 2.330, slstm 1x768 2.472 -> 2.423). There each
    // block sends 3.5-11.5 KB a step (not 0.75) at the SM's outgoing rate, and the phase clocks put the difference
    // after the step's barrier, where the warps wait for their queued sends (not explained further).
    // FLASHRNN_WARP_SENDS=0|1 (measurement knob) overrides the rule, to compare.
#ifdef FLASHRNN_WARP_SENDS
    static constexpr bool WARP_SENDS = !DMA && FLASHRNN_WARP_SENDS;
#else
    static constexpr bool WARP_SENDS = !DMA && CL_ <= 4;
#endif
    // Blocks of 384+ threads get <= 170 registers a thread, and R's fragments take most of them: there Wx is
    // read cell by cell at the pointwise step instead of all at once while the mma run.
    static constexpr bool LATE_X = THREADS >= 384;
    // Cells with a cheaper forward for the states their own steps produced (Cell::STEADY_FORM; sLSTM: no fresh
    // state, n >= 1) run step 0 with the general form and steps 1.. with that one: the step's code twice, and
    // nothing tested a step that only the first needs. FLASHRNN_NO_STEADY (measurement knob) runs the general form
    // every step, to compare.
#ifdef FLASHRNN_NO_STEADY
    static constexpr bool STEADY = false;
#else
    static constexpr bool STEADY = Cell::STEADY_FORM;
#endif
    // Row pitches padded by 16 bytes: the 8 rows an ldmatrix (or the 4 batch columns a warp's x reads) touch
    // then start in distinct bank groups.
    static constexpr int HROW = D + 8;
    static constexpr int XROW = GW * DB + 16 / int(sizeof(T));
    static constexpr int CH = 16 / int(sizeof(T));          // elements per 16-byte copy
    static constexpr int XCHUNKS = BT * GW * DB / CH;
    static constexpr int H_ELEMS = SPLIT * BT * HROW;       // one h buffer (all D columns)
    static constexpr int X_ELEMS = BT * XROW;               // one Wx stage (this block's columns)
    // Split-K partial sums, slots a lane and m16n8 tile in each warp's region: 4 (the tile's 4 accumulators, of which
    // the warp writes the 2 of its partner's column) or, for wide warps, only those 2. The halved layout is exact for
    // every split-K kernel, but the shared memory it frees moved the model's other choices the wrong way (measured,
    // stop 49: bench/results/phases/2026-12-04-h200-halved-partials.txt), so only the wide kernels, which need it
    // to fit, use it.
    static constexpr int PART_SLOTS = WIDE ? 2 : 4;
    static constexpr int PART_FLOATS = PARTIALS ? KS * WARPS_D * MT * NBT * PART_SLOTS * 32 : 0;
    // Outputs of one step (S states, then NSAVED pre-activations per batch row), staged in shared memory and
    // written to global memory the next step as whole 16-byte pieces of rows (two buffers, alternating).
    static constexpr int OROW = DB + 16 / int(sizeof(T));
    static constexpr int OROWS = (S + NSAVED) * BT;
    // An inference forward (FLASHRNN_SAVE=0: nothing will run backward) writes the states only: the saved rows of
    // the staging buffer stay allocated (the solver's shared memory is the same either way) but unused. Expected:
    // where bandwidth binds (lstm 12x64 B=256: Wx 1.61 GB + states 0.81 + saved 1.61 a call, 3.3 TB/s) up to the
    // 40% of the bytes it drops; at B=16 the saved values' staging stores (4 of 7 a cell for lstm) off a step that
    // issue binds in part. Measured (H200 bf16 T=1024, bench/phase_clocks.py, states bitwise equal): lstm B=256
    // 1.228 -> 0.875 ms (-29%), B=64 0.446 -> 0.360, 12x64 0.387 -> 0.361, 48x16 0.264 -> 0.209, 3x256 0.691 ->
    // 0.625, 1x768 2.338 -> 2.300; slstm 12x64 0.421 -> 0.390, 48x16 0.299 -> 0.251; gru B=256 1.032 -> 0.736.
#if defined(FLASHRNN_SAVE) && !FLASHRNN_SAVE
    static constexpr int NSAVED_OUT = 0;
#else
    static constexpr int NSAVED_OUT = NSAVED;
#endif
    static constexpr int OUT_ROWS = (S + NSAVED_OUT) * BT;  // staged rows written out a step
    // Where the split flush (above) writes the held outputs: right after the copies' issue, in the mma's shadow,
    // or after the cells. The SASS (sm_90 bf16) of the early write has the load and the refill ahead of the HMMA
    // and the STG ~10 instructions after it: between the last MUFU and the barrier 17 instructions instead of 44
    // (lstm 48x16 inference), 36 instead of 63 (slstm 48x16 saving). Estimated before measuring: -5..-8% at
    // 48x16; gru 12x64 +-2% (its cells start ~40 instructions later, behind the copies). Measured (H200 bf16
    // T=1024, bench/phase_clocks.py, late -> early, bench/results/phases/2026-12-02-h200-split-write-early.txt):
    //   whole-K warps (a lane's cells in one batch column), saving forward: lstm 48x16 0.197 -> 0.184 ms, slstm
    //   48x16 0.227 -> 0.216, lstm 24x32 0.298 -> 0.270, lstm 48x16 B=256 2.343 -> 2.251: early, always faster;
    //   k_split 1 (two columns), saving: lstm 12x64 B=64 0.434 -> 0.418, slstm 24x32 0.365 -> 0.358, slstm 12x64
    //   B=256 1.792 -> 1.742, but slstm 12x64 B=64 0.520 -> 0.573, lstm 12x64 B=256 1.223 -> 1.310, slstm 48x16
    //   B=256 2.708 -> 2.934: no rule that the numbers support, so late;
    //   inference (fewer outputs): lstm 48x16 0.164 -> 0.166, slstm 0.198 -> 0.195; two cells a batch row (U = 2)
    //   slower either way: gru 12x64 saving 0.361 -> 0.375, gru 48x16 0.214 -> 0.239, elman 48x16 0.131 -> 0.135.
    // The phase clocks move 21-70 cycles a step (B=16; 200-600 at B=256) out of the barrier phase into "x +
    // copies" (the stores' issue ahead of the cells); whether the step gains follows how much of the cells'
    // latency the issue then hides, which the clocks do not resolve. FLASHRNN_SPLIT_WRITE_EARLY=0|1 (measurement
    // knob) overrides the rule, to compare.
    // Measured and not kept: staging step t's outputs in step t+1's mma shadow instead (and sLSTM's c, n, m and saved
    // values computed there, its cell split at h), so that only h's chain precedes the barrier. Estimated from the
    // ablation without outputs (slstm 48x16 -54 cycles a step, lstm -21) at 5-10% for slstm; measured slower in every
    // cell (48x16 saving forward: slstm 0.213 -> 0.271 ms, lstm 0.184 -> 0.231, gru 0.210 -> 0.246, elman 0.131 ->
    // 0.150; bench/results/phases/2026-12-02-h200-defer-outputs.txt, with the kernel change as a patch): what
    // follows the mma in program order issues before the cells can, and the shadow did not hold it.
    // Measured and not kept either (stop 56): where the late write stands, writing the held outputs at the top of
    // the next step instead, after its barrier (the store a step after its load; estimated -5..-10% at 48x16 from
    // the ablation without the flush, 0.196 -> 0.166 ms slstm, 0.163 -> 0.137 lstm): H100 bf16 T=1024 inference
    // forward, ms, late -> next: lstm 48x16 0.163 -> 0.170, slstm 0.196 -> 0.210, gru 0.150 -> 0.156, elman 0.126
    // -> 0.127, lstm 12x64 on one block 0.328 -> 0.336, gru 12x64 0.267 -> 0.283, but lstm 48x16 B=256 1.833 ->
    // 1.714 (bench/results/phases/2026-12-05-h100-split-write-next.txt, the kernel change in its header).
#ifdef FLASHRNN_SPLIT_WRITE_EARLY
    static constexpr bool SPLIT_WRITE_EARLY = SPLIT_FLUSH && FLASHRNN_SPLIT_WRITE_EARLY;
#else
    static constexpr bool SPLIT_WRITE_EARLY = SPLIT_FLUSH && WHOLE_K && U == 1 && NSAVED_OUT > 0;
#endif
    static constexpr int O_ELEMS = OROWS * OROW;
    static constexpr int H_BYTES = 2 * H_ELEMS * int(sizeof(Op));
    static constexpr int X_BYTES = NS * X_ELEMS * int(sizeof(T));
    static constexpr int PART_BYTES = PART_FLOATS * 4;
    static constexpr int O_BYTES = 2 * O_ELEMS * int(sizeof(T));
    // One h buffer, one Wx stage, one output staging buffer, in bytes (the offsets a step adds to an address).
    static constexpr unsigned H_BUF = H_ELEMS * sizeof(Op), X_STAGE = X_ELEMS * sizeof(T);
    static constexpr unsigned O_BUF = O_ELEMS * sizeof(T);
    // The h exchange's mbarriers: XG for each of the two h buffers, XG = 1 (all CL - 1 slices) unless the compute
    // warps of a DMA block wait for groups of slices in turn (FLASHRNN_EXCHANGE_GROUPS of them, a measurement
    // knob; 3 by default, which ConstrINT's shared memory counts).
#ifdef FLASHRNN_EXCHANGE_GROUPS
    static constexpr int XG_WANTED = FLASHRNN_EXCHANGE_GROUPS;
#else
    static constexpr int XG_WANTED = 3;
#endif
    static constexpr int XG = !DMA ? 1 : XG_WANTED < CL - 1 ? XG_WANTED : CL - 1;
    // G > 1: one more mbarrier a buffer, REMOTE_GROUP, which the DMA warps complete (an arrival each) once they have
    // copied the other clusters' slices in (after the XG groups' mbarriers: bar_offset).
    static constexpr int REMOTE_GROUP = XG, GROUPS = XG + (G > 1 ? 1 : 0);
    static constexpr int BAR_BYTES = CL > 1 ? 16 * GROUPS : 0;
    __device__ __forceinline__ static constexpr unsigned bar_offset(int buf, int gr) {
        return unsigned(8 * (gr < XG ? buf * XG + gr : 2 * XG + buf));
    }
    // R's shared-memory k-tiles as A-fragments in lane order, [WARPS][SPLIT][MT][RS][32 lanes][4 registers]:
    // one conflict-free 16-byte load a lane per fragment.
    static constexpr int R_BYTES = WARPS * SPLIT * MT * RS * 512;
    static constexpr int SMEM_BYTES = H_BYTES + X_BYTES + PART_BYTES + O_BYTES + BAR_BYTES + R_BYTES;
    // Bytes of h one block receives from one other block, and from all, per step.
    static constexpr unsigned SLICE_BYTES = unsigned(SPLIT * BT * DB * int(sizeof(Op)));
    static constexpr unsigned RECV_BYTES = (CL - 1) * SLICE_BYTES;
    // DMA: a block's h buffers hold the slice of block src of its cluster at slot slot_of_rank(src) (columns slot *
    // DB ...): its own at slot 0, then rank - 1, rank - 2, ... (the map is its own inverse: slot_of_rank(slot) is
    // the block); G > 1: then, at slots CL * q + r, block r of the cluster q parts on (part: this cluster's index
    // in the head). Otherwise slot = block, and column c holds dim c. A k-tile of columns may span two slots (DB a
    // multiple of 8, not of 16: G = 2 at 1x768), so R's fragments map each half of a k-tile on its own.
    __device__ __forceinline__ static constexpr int slot_of_rank(int src, int rank) {
        return DMA ? (rank - src + CL) % CL : src;
    }
    // The head's block (part * CL + rank) whose slice slot s holds, and the inverse.
    __device__ __forceinline__ static constexpr int block_of_slot(int s, int rank, int part) {
        if (G == 1) return slot_of_rank(s, rank);
        return s < CL ? part * CL + slot_of_rank(s, rank) : (part + s / CL) % G * CL + s % CL;
    }
    __device__ __forceinline__ static constexpr int slot_of_block(int blk, int rank, int part) {
        if (G == 1) return slot_of_rank(blk, rank);
        return blk / CL == part ? slot_of_rank(blk % CL, rank) : (blk / CL - part + G) % G * CL + blk % CL;
    }
    // R's k-tile at the k-tile ckt of h's columns, where slots are whole k-tiles (SKT of them).
    static constexpr int SKT = DB >= 16 ? DB / 16 : 1;
    __device__ __forceinline__ static constexpr int ktile_at(int ckt, int rank, int part) {
        return DMA ? block_of_slot(ckt / SKT, rank, part) * SKT + ckt % SKT : ckt;
    }
    __device__ __forceinline__ static constexpr int column_of_dim(int d, int rank, int part) {
        return slot_of_block(d / DB, rank, part) * DB + d % DB;
    }
    __device__ __forceinline__ static constexpr int dim_of_column(int c, int rank, int part) {
        return block_of_slot(c / DB, rank, part) * DB + c % DB;
    }
    // The mbarrier group that counts slot j >= 1 (XG groups of about equal slots), and the bytes it counts.
    __device__ __forceinline__ static constexpr int group_of_slot(int j) { return exchange_group(j, XG, CL); }
    __device__ __forceinline__ static constexpr unsigned group_bytes(int g) {
        int n = 0;
        for (int j = 1; j < CL; ++j) n += group_of_slot(j) == g;
        return unsigned(n) * SLICE_BYTES;
    }
    // The group a warp must wait for before it reads its j-th k-tile (-1: its own slot, no wait): that of the last
    // slot the k-tile's columns reach (the other clusters' slots: REMOTE_GROUP, after every local one). Under
    // INTERLEAVE, the later column of the pair's two (warp 0 waits a k-tile early at most: a compile-time count).
    __device__ __forceinline__ static constexpr int group_before_ktile(int j) {
        const int slot = j < 0 ? 0 : (16 * column_of_ktile(KS - 1, j) + 15) / DB;
        return slot == 0 ? -1 : slot >= CL ? REMOTE_GROUP : group_of_slot(slot);
    }
    static_assert(D % 16 == 0 && D % (CL * G) == 0 && DB % DW == 0, "D must be a multiple of 16 (and of CL*G*DW)");
    static_assert(G == 1 || DMA, "a head on several clusters: DMA warps hand the slices over");
    static_assert((WHOLE_K || KT % KS == 0) && (KS == 1 || KS == 2), "split-K over 1 or 2 warps");
    static_assert(CL == 1 || (DB * int(sizeof(Op))) % 16 == 0, "a block's h columns move in 16-byte pieces");
    static_assert(THREADS <= 1024, "head too large for one block");
    static_assert(!DMA || DB % 8 == 0, "DMA warp: whole halves of k-tiles a slice");
    static_assert(P >= 1, "prefetch depth");
    static_assert(RS >= 0 && RS <= KTW, "R k-tiles in shared memory: some of the warp's");
};

// Wx[b0:b0+BT, t, :, n, d0:d0+DB] into one stage, for t = 0, 1, 2, ... in turn (rows past B zero-filled).
template <class K, class T>
struct XPieces : LoadPieces<(K::XCHUNKS + K::COPIERS - 1) / K::COPIERS, K::KEEP> {
    static constexpr int PER_ROW = K::GW * K::DB / K::CH, PER_GATE = K::DB / K::CH;
    static constexpr int PER = (K::XCHUNKS + K::COPIERS - 1) / K::COPIERS;

    // me: this thread's index among the K::COPIERS.
    __device__ __forceinline__ XPieces(const T* Wx, int b0, int B, int Tn, int n, int d0, size_t ND, unsigned stage0,
                                       int me) {
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const int i = me + j * K::COPIERS;
            const int bl = i / PER_ROW, rem = i % PER_ROW;
            const int gate = rem / PER_GATE, dc = (rem % PER_GATE) * K::CH;
            const int b = b0 + bl;
            const bool valid = b < B && i < K::XCHUNKS;
            this->set(j, stage0 + unsigned((bl * K::XROW + gate * K::DB + dc) * int(sizeof(T))),
                      valid ? Wx + ((size_t(b) * Tn * K::GW + gate) * ND + size_t(n) * K::D + d0 + dc) : Wx,
                      valid ? (long long)(K::GW * ND * sizeof(T)) : 0,  // (a zero-fill stays put)
                      valid, i < K::XCHUNKS);
        }
    }
};

// One step's staged outputs to states [S,B,T,N,D] and saved [B,T,NSAVED,N,D] (Tile::NSAVED_OUT: or the states
// alone) as 16-byte pieces of rows (coalesced; rows past B skipped), for t = 0, 1, 2, ... in turn.
template <class K, class T>
struct OutPieces : StorePieces<(K::OUT_ROWS * K::DB * int(sizeof(T)) / 16 + K::COPIERS - 1) / K::COPIERS, K::KEEP> {
    static constexpr int CPR = K::DB * int(sizeof(T)) / 16;  // pieces per row
    static constexpr int CHUNKS = K::OUT_ROWS * CPR;
    static constexpr int PER = (CHUNKS + K::COPIERS - 1) / K::COPIERS;

    __device__ __forceinline__ OutPieces(T* states, T* saved, int b0, int B, int Tn, int n, int d0, size_t ND,
                                         unsigned buf0, int me) {
        const size_t BTND = size_t(B) * Tn * ND;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const int i = me + j * K::COPIERS;
            const int row = i / CPR, col = (i % CPR) * (16 / int(sizeof(T)));
            const bool st = row < K::S * K::BT;
            const int rr = st ? row : row - K::S * K::BT;
            const int bl = st ? rr % K::BT : rr / K::NSAVED;
            const int b = b0 + bl;
            const size_t col0 = size_t(n) * K::D + d0 + col;
            const bool live = i < CHUNKS && b < B;
            T* dst = !live ? states
                     : st  ? states + (rr / K::BT) * BTND + size_t(b) * Tn * ND + col0
                           : saved + (size_t(b) * Tn * K::NSAVED + rr % K::NSAVED) * ND + col0;
            this->set(j, buf0 + unsigned((row * K::OROW + col) * int(sizeof(T))), dst,
                      live ? (long long)((st ? ND : K::NSAVED * ND) * sizeof(T)) : 0, live);
        }
    }
};

// One A-fragment of the warp's R rows (dims drow + 8*(q/GR) + g of half tile q, m = q / 2) against the k-tile
// ckt of h's columns in block (rank, part) (Tile::dim_of_column: each half of it on its own), split for float32.
template <class K, class T>
__device__ __forceinline__ void r_fragment(unsigned (&f)[K::SPLIT][4], const T* __restrict__ R, int n, int N,
                                           int drow, int m, int ckt, int rank, int part, int g, int c4) {
    using Op = typename K::Op;
    // R's k-tile there where columns are dims (no DMA warps) or slots whole k-tiles (DB a multiple of 16), else the
    // head's dim at the first column of each half of the k-tile (DB a multiple of 8).
    constexpr bool WHOLE = !K::DMA || K::DB % 16 == 0;
    const int kt = WHOLE ? K::ktile_at(ckt, rank, part) : 0;
    int k0[2] = {0, 0};
    if constexpr (!WHOLE) {
#pragma unroll
        for (int half = 0; half < 2; ++half) k0[half] = K::dim_of_column(16 * ckt + 8 * half, rank, part);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int q = 2 * m + (j & 1);
        const int gate = q % K::GR, d = drow + K::r_dim_of(q / K::GR, g);
        const int k = WHOLE ? 16 * kt + 2 * c4 + 8 * (j >> 1) : k0[j >> 1] + 2 * c4;
        const T* p = R + ((size_t(gate) * N + n) * K::D + d) * K::D + k;
        if constexpr (sizeof(T) == 2) {  // (16-bit storage: the operands themselves)
            // R[k] and R[k + 1] as one 32-bit load (k is even, R 16-byte aligned: FusedBackend's _as), R[k] in the
            // lower half: half the prologue's global loads and their registers. As two 16-bit loads, ptxas hoisted
            // them so far that the prologue set the kernel's register count (constrint/problems.py PAIRED_R_LOADS).
            f[0][j] = *reinterpret_cast<const unsigned*>(p);
        } else {
            Op lo[K::SPLIT], hi[K::SPLIT];
            split(load_f(p), lo);
            split(load_f(p + 1), hi);
#pragma unroll
            for (int s = 0; s < K::SPLIT; ++s) f[s][j] = mma::pack2(lo[s], hi[s]);
        }
    }
}

// Registers of R's fragments: the KTR register k-tiles (at least one array element, for the compiler).
template <class K> using RRegs = unsigned[K::SPLIT][K::MT][K::KTR > 0 ? K::KTR : 1][4];

// This lane's address of fragment (s, m, r) of the warp's shared-memory k-tiles (Tile::R_BYTES's layout).
template <class K> __device__ __forceinline__ constexpr unsigned r_smem_offset(int s, int m, int r) {
    return unsigned(((s * K::MT + m) * K::RS + r) * 512);
}

// Warp ks's R over its KTW k-tiles of h's columns (Tile::column_of_ktile) in block (rank, part): the first KTR
// into registers, the rest into shared memory at `r_lane` (this lane's address of the warp's first fragment
// there). The shared-memory ones go one at a time (not unrolled): unrolled, ptxas hoisted all their global loads
// together, and the registers that took spilled.
template <class K, class T>
__device__ __forceinline__ void load_r(RRegs<K>& a, unsigned r_lane, const T* __restrict__ R, int n, int N,
                                       int drow, int ks, int rank, int part, int g, int c4) {
#pragma unroll
    for (int m = 0; m < K::MT; ++m)
#pragma unroll
        for (int kt = 0; kt < K::KTR; ++kt) {
            unsigned f[K::SPLIT][4];
            r_fragment<K>(f, R, n, N, drow, m, K::column_of_ktile(ks, kt), rank, part, g, c4);
#pragma unroll
            for (int s = 0; s < K::SPLIT; ++s)
#pragma unroll
                for (int j = 0; j < 4; ++j) a[s][m][kt][j] = f[s][j];
        }
#pragma unroll 1
    for (int i = 0; i < K::MT * K::RS; ++i) {
        const int m = i / K::RS, r = i % K::RS;
        unsigned f[K::SPLIT][4];
        r_fragment<K>(f, R, n, N, drow, m, K::column_of_ktile(ks, K::KTR + r), rank, part, g, c4);
#pragma unroll
        for (int s = 0; s < K::SPLIT; ++s)
            st_shared_v4(r_lane + r_smem_offset<K>(s, m, r), make_uint4(f[s][0], f[s][1], f[s][2], f[s][3]));
    }
}

// B-fragments of h (all BT columns) for the warp's k-tiles [k0, k0 + COUNT) (those that exist) from one h buffer,
// two k-tiles per ldmatrix.x4. `addr` is this lane's row address in that buffer (ldmatrix_row), so the rest are
// compile-time offsets: k0 is a constant where the caller's loop is unrolled.
template <class K, int COUNT>
__device__ __forceinline__ void load_h(unsigned (&bf)[K::SPLIT][K::NBT][K::KTW][2], unsigned addr, int k0) {
    constexpr int E = int(sizeof(typename K::Op));
#pragma unroll
    for (int s = 0; s < K::SPLIT; ++s)
#pragma unroll
        for (int nb = 0; nb < K::NBT; ++nb) {
            const unsigned base = addr + unsigned((s * K::BT + 8 * nb) * K::HROW * E);
#pragma unroll
            for (int j = 0; j < COUNT; j += 2) {
                const int kt = k0 + j, k1 = kt + 1 < K::KTW ? kt + 1 : 0, k = kt < K::KTW ? kt : 0;  // (in bounds)
                if (kt + 1 < K::KTW && j + 1 < COUNT) {
                    unsigned r[4];
                    mma::ldmatrix_x4(r, base + 16 * K::KSTEP * kt * E);
                    bf[s][nb][k][0] = r[0], bf[s][nb][k][1] = r[1];
                    bf[s][nb][k1][0] = r[2], bf[s][nb][k1][1] = r[3];
                } else if (kt < K::KTW) {
                    // Lanes 0-15 give the addresses (matrices 0 and 1 of the last k-tile): the same as for .x4,
                    // and .x2 ignores lanes 16-31's (past the k-tile, still inside the block's shared memory).
                    // Moving those in bounds cost a lane-derived term, rebuilt from threadIdx every step on the
                    // chain that starts the step (S2R, shift, and, subtract before the ldmatrix) where the compiler
                    // did not keep threadIdx in a register (lstm, gru; slstm kept it). Measured (H200 bf16 B=16
                    // T=1024, inference forward; D = 16 is one k-tile, one .x2 a step): lstm 48x16 0.197 -> 0.181 ms,
                    // gru 48x16 0.195 -> 0.177, slstm 48x16 unchanged (bench/results/phases/...-cell-chains.txt).
                    unsigned r[2];
                    mma::ldmatrix_x2(r, base + 16 * K::KSTEP * kt * E);
                    bf[s][nb][k][0] = r[0], bf[s][nb][k][1] = r[1];
                }
            }
        }
}

// This lane's ldmatrix row address in h buffer `hb`: row lane % 8 of the tile; matrix j = lane / 8 is half j % 2
// of warp ks's k-tile j / 2 (Tile::column_of_ktile; load_h steps KSTEP k-tiles of h's columns from one to the next).
// (Tile::WHOLE_K: warp ks of a pair finishes batch column 2 c4 + ks of a lane's two, and the cells select that
// accumulator by ks, a select a gate. Swapping warp 1's h rows in pairs here, so that its column lands where warp
// 0's does and the select goes, was measured (H200 bf16 B=16 T=1024, inference / saving forward, ms): slstm 48x16
// 0.225 -> 0.213 / 0.249 -> 0.234, but lstm 48x16 0.184 -> 0.191 / 0.202 -> 0.222, lstm 12x64 0.343 -> 0.349 /
// 0.358 -> 0.366, slstm 12x64 0.360 -> 0.367 / 0.384 -> 0.376, gru and elman 48x16 within 1%; the phase clocks put
// 14 more cycles in h + mma, not explained. Again at stop 56 (H100, inference forward, bitwise equal): slstm 48x16
// 0.196 -> 0.208, lstm 48x16 0.162 -> 0.167, 12x64 within 1%. So the select stays.)
template <class K>
__device__ __forceinline__ unsigned ldmatrix_row(const typename K::Op* hb, int ks, int lane) {
    if constexpr (K::INTERLEAVE) {
        const int j = lane / 8;
        return mma::smem_u32(hb + (lane % 8) * K::HROW + 16 * K::column_of_ktile(ks, j / 2) + 8 * (j % 2));
    } else {  // (the warp's k-tiles in a row from its first)
        return mma::smem_u32(hb + (lane % 8) * K::HROW + 16 * K::kt0_of(ks) + 8 * (lane / 8));
    }
}

// acc = R_warp x H over the warp's k-tiles: k outermost so the independent accumulators interleave. Where a
// warp has fewer than 4 output tiles, k-tile kt goes to partial sum kt % CHAINS (added at the end), so that
// about 4 mma are in flight instead of a dependent chain of KTW.
// h's fragments are read from `hrow` (ldmatrix_row) in groups of HG k-tiles as the loop reaches them, R's
// shared-memory k-tiles one by one (r_lane: load_r's address). Tile::DMA: before h's k-tiles of slot j >= 1 are
// read, wait_group(g) waits for their mbarrier group g (each group once, in order).
template <class K, class WaitGroup>
__device__ __forceinline__ void matmul(float (&acc)[K::MT][K::NBT][4], const RRegs<K>& a, unsigned r_lane,
                                       unsigned hrow, WaitGroup&& wait_group) {
    using M = mma::Mma<typename K::Op>;
    constexpr int CH = K::CHAINS, HG = K::HG;
    unsigned bf[K::SPLIT][K::NBT][K::KTW][2];
    float part[CH][K::MT][K::NBT][4];
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int m = 0; m < K::MT; ++m)
#pragma unroll
            for (int nb = 0; nb < K::NBT; ++nb)
#pragma unroll
                for (int i = 0; i < 4; ++i) part[c][m][nb][i] = 0.f;
#pragma unroll
    for (int kt = 0; kt < K::KTW; ++kt) {
        if (kt % HG == 0) {
            if constexpr (K::DMA) {
                const int last = kt + HG - 1 < K::KTW ? kt + HG - 1 : K::KTW - 1;
#pragma unroll
                for (int gr = K::group_before_ktile(kt - 1) + 1; gr <= K::group_before_ktile(last); ++gr)
                    wait_group(gr);
            }
            load_h<K, HG>(bf, hrow, kt);
        }
#pragma unroll
        for (int m = 0; m < K::MT; ++m) {
            unsigned f[K::SPLIT][4];
#pragma unroll
            for (int s = 0; s < K::SPLIT; ++s) {
                if (kt < K::KTR) {  // (the index's guard keeps the not-taken branch in bounds where KTR = 0)
#pragma unroll
                    for (int j = 0; j < 4; ++j) f[s][j] = a[s][m][kt < K::KTR ? kt : 0][j];
                } else {
                    const uint4 v = ld_shared_v4(r_lane + r_smem_offset<K>(s, m, kt - K::KTR));
                    f[s][0] = v.x, f[s][1] = v.y, f[s][2] = v.z, f[s][3] = v.w;
                }
            }
#pragma unroll
            for (int nb = 0; nb < K::NBT; ++nb) {
                float (&p)[4] = part[kt % CH][m][nb];
                M::run(p, f[0], bf[0][nb][kt][0], bf[0][nb][kt][1]);
                if constexpr (K::SPLIT == 2) {
                    M::run(p, f[0], bf[1][nb][kt][0], bf[1][nb][kt][1]);
                    M::run(p, f[1], bf[0][nb][kt][0], bf[0][nb][kt][1]);
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < K::MT; ++m)
#pragma unroll
        for (int nb = 0; nb < K::NBT; ++nb)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float v = part[0][m][nb][i];
#pragma unroll
                for (int c = 1; c < CH; ++c) v += part[c][m][nb][i];
                acc[m][nb][i] = v;
            }
}

// Split-K: the partial sums meet in shared memory, [KS][WARPS_D][MT][NBT][PART_SLOTS][32] floats (one per lane).
// Each warp of a pair finishes one of the lane's two batch columns (c = ks), so it leaves only the other column's
// sums (i = 1 - ks and 3 - ks of each tile) and, after the barrier, adds its partner's for its own column.
// partial_base: where warp `owner` keeps column `c` of tile 0 at this lane (the tiles follow at partial_offset,
// i = 0 or 2 the tile's row half); with 2 slots a warp's region holds its partner's column only, so c is implied.
template <class K>
__device__ __forceinline__ unsigned partial_base(const float* part, int owner, int wd, int c, int lane) {
    const int slot = K::PART_SLOTS == 4 ? c : 0;
    return mma::smem_u32(part + ((owner * K::WARPS_D + wd) * K::MT * K::NBT * K::PART_SLOTS + slot) * 32 + lane);
}
template <class K> __device__ __forceinline__ constexpr unsigned partial_offset(int m, int nb, int i) {
    return unsigned(((m * K::NBT + nb) * K::PART_SLOTS + (K::PART_SLOTS == 4 ? i : i / 2)) * 32 * 4);
}
template <class K>
__device__ __forceinline__ void put_partials(unsigned mine, const float (&acc)[K::MT][K::NBT][4], int ks) {
    static_assert(K::KS == 2, "the pair's columns");
#pragma unroll
    for (int m = 0; m < K::MT; ++m)
#pragma unroll
        for (int nb = 0; nb < K::NBT; ++nb)
#pragma unroll
            for (int i = 0; i < 4; i += 2)  // the partner's column, i + 1 - ks (in `mine`'s base)
                st_shared_f<float>(mine + partial_offset<K>(m, nb, i), ks ? acc[m][nb][i] : acc[m][nb][i + 1]);
}

// Tile::TRADE: the mma left this lane dim g (and lane ^ 4 dim g ^ 1) in both batch columns; afterwards column c of
// `acc` holds dim (g & ~1) + c of the lane's row 2*c4 + (g & 1). The even lane keeps column 0 and takes its
// partner's column 0, the odd one keeps column 1 and takes its partner's column 1: one shuffle a gate.
template <class K> __device__ __forceinline__ void trade_columns(float (&acc)[K::MT][K::NBT][4], int odd) {
#pragma unroll
    for (int m = 0; m < K::MT; ++m)
#pragma unroll
        for (int nb = 0; nb < K::NBT; ++nb)
#pragma unroll
            for (int i0 = 0; i0 < 4; i0 += 2) {
                const float given = __shfl_xor_sync(0xffffffffu, odd ? acc[m][nb][i0] : acc[m][nb][i0 + 1], 4);
                if (odd) acc[m][nb][i0] = given;
                else acc[m][nb][i0 + 1] = given;
            }
}

// The batch row of a lane's cell (nb, cc) relative to the lane's first row (lane_row in `forward`; cc is 0 where
// each warp of a split-K pair finishes one of the lane's two columns, or where the lanes trade them).
template <class K> __device__ __forceinline__ constexpr int cell_row(int nb, int cc) {
    return 8 * nb + (K::KS == 1 ? cc : 0);
}

// h into an h buffer at shared address `addr` (its row and column; float32's lo part SPLIT rows of BT further): one
// dim's value, or two adjacent dims' (Tile::PAIRED: a lane's cells u = 0 and 1) as one 32-bit store a part.
template <class K, int N>
__device__ __forceinline__ void store_h(unsigned addr, const float (&h)[N]) {
    static_assert(N == 1 || N == 2, "one dim or a pair");
    typename K::Op parts[N][K::SPLIT];
#pragma unroll
    for (int i = 0; i < N; ++i) split(h[i], parts[i]);
#pragma unroll
    for (int s = 0; s < K::SPLIT; ++s) {
        const unsigned at = addr + unsigned(s * K::BT * K::HROW * int(sizeof(typename K::Op)));
        if constexpr (N == 1) st_shared_b16(at, mma::op_bits(parts[0][s]));
        else st_shared_b32(at, mma::pack2(parts[0][s], parts[1][s]));
    }
}

// This block's columns of an h buffer, sent to the other blocks of the cluster each step (SliceSender) as 16-byte
// pieces of rows: by each warp, the SPLIT x NBT x 8/KS rows x U pieces of 8 dims that its lanes computed
// (Tile::WARP_SENDS), or by the whole block, all SPLIT*BT rows of DB columns. (Measured against one bulk copy a row
// and receiver, cp.async.bulk shared::cta -> shared::cluster: the copy engine took ~11 cycles a copy, and lstm
// 1x768 ran 2.46 -> 2.84 ms, 12x64 0.44 -> 1.20.)
template <class K> struct HSlice {
    static constexpr int E = int(sizeof(typename K::Op));
    static constexpr int PER_ROW = K::DB * E / 16;
    static constexpr int WARP_ROWS = 8 / K::KS, WARP_PIECES = K::SPLIT * K::NBT * WARP_ROWS * K::U;
    // hbuf0: h buffer 0; the block's (rank, part); dloc, ks: the warp's first dim (within the block) and K-split
    // index.
    __device__ __forceinline__ static auto sender(unsigned hbuf0, unsigned rank, int part, int dloc, int ks,
                                                  int lane) {
        const int d0 = (part * K::CL + int(rank)) * K::DB;
        const unsigned cols = hbuf0 + unsigned(K::column_of_dim(d0, int(rank), part) * E);
        if constexpr (K::DMA) {  // the DMA warp sends the whole slice, from slot 0 to slot `distance` of the others
            return SliceSender<K::SPLIT * K::BT * PER_ROW, K::CL, K::COPIERS, K::KEEP, K::DB * E, K::XG>(
                rank, lane, [=](int chunk) {
                    const int row = chunk / PER_ROW, col = (chunk % PER_ROW) * (16 / E);
                    return cols + unsigned((row * K::HROW + col) * E);
                });
        } else if constexpr (K::WARP_SENDS) {
            return SliceSender<WARP_PIECES, K::CL, 32, K::KEEP>(rank, lane, [=](int piece) {
                const int u = piece % K::U, j = piece / K::U % WARP_ROWS, nb = piece / K::U / WARP_ROWS % K::NBT;
                const int s = piece / K::U / WARP_ROWS / K::NBT;
                const int row = 8 * nb + (K::KS == 1 ? j : 2 * j + ks);  // the rows cell_row gives the warp's lanes
                return cols + unsigned(((s * K::BT + row) * K::HROW + dloc + 8 * u) * E);
            });
        } else {
            return SliceSender<K::SPLIT * K::BT * PER_ROW, K::CL, K::THREADS, K::KEEP>(
                rank, threadIdx.x, [=](int chunk) {
                    const int row = chunk / PER_ROW, col = (chunk % PER_ROW) * (16 / E);
                    return cols + unsigned((row * K::HROW + col) * E);
                });
        }
    }
};

// Tile::G > 1: the slices of h that the cluster's distributed shared memory cannot bring (those of the head's other
// G - 1 clusters), through global memory. After the step's barrier the DMA warps publish this block's slice of h_t,
// send it to the cluster, copy the other clusters' slices into their slots (CL + q) and arrive on the buffer's
// REMOTE_GROUP mbarrier, which the compute warps wait for after the local groups (those slots are the last
// columns). Each 4 data bytes travel as one 8-byte word with the step as a tag beside them (relaxed at gpu scope;
// an aligned 8-byte access is single-copy atomic), so no fence and no flag: a reader polls the words themselves,
// one round trip through L2 (bench/cluster_exchange.py times this against a flag a block and a counter a
// cluster). `head`: this head's and batch tile's words, [G * CL blocks][2 buffers][WORDS], zeroed before the launch
// (a tag is the step + 1, never 0). A buffer's words are written again two steps later, when every reader has
// copied them: a reader publishes h_{t+1} only after its copy of h_t, and the writer needs h_{t+1} first.
template <class K> struct HeadHandoff {
    static constexpr int E = int(sizeof(typename K::Op)), WPR = K::DB * E / 4, ROWS = K::SPLIT * K::BT;
    static constexpr int WORDS = ROWS * WPR, SLICES = (K::G - 1) * K::CL;
    static constexpr int PER_OUT = (WORDS + K::COPIERS - 1) / K::COPIERS;
    // Reading: TPS threads a slice of the other clusters', each its words r, r + TPS, r + 2 TPS, ... (r = me % TPS):
    // one global and one shared address a thread, the rest compile-time offsets (24 addresses held for 24 words
    // spilled 132 bytes).
    static constexpr int TPS = SLICES > 0 ? K::COPIERS / SLICES : 1, PER_IN = K::G > 1 ? WORDS / TPS : 0;
    static_assert(K::G == 1 || (K::COPIERS % SLICES == 0 && WPR % TPS == 0), "hand-off: whole words a thread");
    static constexpr long long POLL_LIMIT = 1ll << 24;  // tries (~5 s): past them a partner never ran, so trap
    unsigned long long* mine;        // this block's words, buffer 0
    const unsigned long long* from;  // this thread's first word of its slice (of the other clusters'), buffer 0
    unsigned to;                     // ... and where it goes in an h buffer (bytes from the buffer's start)

    // Word w of a slice: its bytes from the slice's first column in an h buffer.
    __device__ __forceinline__ static constexpr unsigned word_offset(int w) {
        return unsigned((w / WPR) * K::HROW * E + (w % WPR) * 4);
    }
    // head: the head's block 0, buffer 0; part: this cluster's index in the head; me: the thread's among COPIERS.
    __device__ __forceinline__ HeadHandoff(unsigned long long* head, int part, int rank, int me)
        : mine(nullptr), from(nullptr), to(0u) {
        if constexpr (K::G > 1) {
            const int q = me / TPS, r = me % TPS;  // the slice this thread reads, slot CL + q
            const int blk = (part + 1 + q / K::CL) % K::G * K::CL + q % K::CL;
            mine = head + (part * K::CL + rank) * 2 * WORDS;
            from = head + blk * 2 * WORDS + r;
            to = unsigned((K::CL + q) * K::DB * E) + word_offset(r);
        }
    }
    // The own slice of the h buffer at `hbuf` (slot 0) into buffer `buf`, tagged.
    __device__ __forceinline__ void publish(unsigned hbuf, int buf, unsigned tag, int me) const {
#pragma unroll
        for (int j = 0; j < PER_OUT; ++j) {
            const int w = me + j * K::COPIERS;
            if (WORDS % K::COPIERS == 0 || w < WORDS)
                st_relaxed_gpu_u64(mine + buf * WORDS + w, (1ull * tag) << 32 | ld_shared_b32(hbuf + word_offset(w)));
        }
    }
    // The other clusters' slices from buffer `buf` into their slots of the h buffer at `hbuf` once their tags say
    // this step's, then this thread's arrival on `bar`. BATCH loads in flight at a time: all of them unless
    // FLASHRNN_HANDOFF_BATCH says fewer (a measurement knob). A poll reloads every word of the batch whose tag is
    // still old, all at once: the partner publishes about when this block does, so the first loads often find old
    // words, and reloading them one by one would cost a round trip through L2 each.
#ifdef FLASHRNN_HANDOFF_BATCH
    static constexpr int BATCH = PER_IN < FLASHRNN_HANDOFF_BATCH ? PER_IN : FLASHRNN_HANDOFF_BATCH;
#else
    static constexpr int BATCH = PER_IN;
#endif
    __device__ __forceinline__ void collect(unsigned hbuf, int buf, unsigned tag, unsigned bar) const {
        const unsigned long long* src = from + buf * WORDS;
#pragma unroll
        for (int j0 = 0; j0 < PER_IN; j0 += BATCH) {
            unsigned long long v[BATCH > 0 ? BATCH : 1];
#pragma unroll
            for (int j = 0; j < BATCH; ++j)
                if (j0 + j < PER_IN) v[j] = ld_relaxed_gpu_u64(src + TPS * (j0 + j));
            for (long long tries = 0;; ++tries) {
                bool old = false;
#pragma unroll
                for (int j = 0; j < BATCH; ++j) old |= j0 + j < PER_IN && unsigned(v[j] >> 32) != tag;
                if (!old) break;
                if (tries > POLL_LIMIT) __trap();
#pragma unroll
                for (int j = 0; j < BATCH; ++j)
                    if (j0 + j < PER_IN && unsigned(v[j] >> 32) != tag) v[j] = ld_relaxed_gpu_u64(src + TPS * (j0 + j));
            }
#pragma unroll
            for (int j = 0; j < BATCH; ++j)
                if (j0 + j < PER_IN) st_shared_b32(hbuf + to + word_offset(TPS * (j0 + j)), unsigned(v[j]));
        }
        cluster::mbarrier_arrive(bar);
    }
};

// A block's copies each step: Wx's stages refilled P steps ahead (cp.async) and the last step's staged outputs
// written out, by the K::COPIERS threads (`me` among them).
template <class K, class T> struct StepCopies {
    XPieces<K, T> x;
    OutPieces<K, T> out;

    __device__ __forceinline__ StepCopies(const T* Wx, T* states, T* saved, int b0, int B, int Tn, int n, int d0,
                                          size_t ND, unsigned xbuf, unsigned obuf, int me)
        : x(Wx, b0, B, Tn, n, d0, ND, xbuf, me), out(states, saved, b0, B, Tn, n, d0, ND, obuf, me) {}
    // Before the loop: the first P stages (Wx[0 .. P)), one cp.async group each.
    __device__ __forceinline__ void prologue(int Tn) {
#pragma unroll 1
        for (int p = 0; p < K::P; ++p) {
            if (p < Tn) x.issue(p * K::X_STAGE);
            mma::cp_async_commit();
        }
    }
    // Step t's (stage = t % NS): refill the stage step t-1 read ((t + P) % NS) and write step t-1's outputs out of
    // their staging buffer. Both are safe from the top of step t on (the barrier that closed step t-1 ended those
    // reads and writes).
    __device__ __forceinline__ void step(int t, int stage, int tend) {
        refill(t, stage, tend);
#ifndef FLASHRNN_ABLATE_FLUSH  // measurement knob: the staged outputs stay in shared memory (wrong results)
        if (t > 0) out.flush(staged_before(t));
#endif
    }
    // The staging buffer that step t-1 wrote (step t writes the other one; they alternate).
    __device__ __forceinline__ static unsigned staged_before(int t) { return K::O_BUF - (t & 1) * K::O_BUF; }
    __device__ __forceinline__ void refill(int t, int stage, int tend) {
        const int pre = stage == 0 ? K::NS - 1 : stage - 1;
        if (t + K::P < tend) x.issue(pre * K::X_STAGE);
        mma::cp_async_commit();
    }
    // step's flush in two halves (Tile::SPLIT_FLUSH): step t-1's outputs read out of their staging buffer into
    // `held`, then written to global memory.
    using Held = typename OutPieces<K, T>::Held;
    __device__ __forceinline__ void read_outputs(int t, Held& held) const {
#ifndef FLASHRNN_ABLATE_FLUSH
        if (t > 0) out.read(staged_before(t), held);
#endif
    }
    __device__ __forceinline__ void write_outputs(int t, const Held& held) {
#ifndef FLASHRNN_ABLATE_FLUSH
        if (t > 0) out.write(held);
#endif
    }
    // After the loop: the last step's outputs (after its barrier); past tend the same staged states again, each
    // row's kept ones (saved there repeats step tend-1's, which no backward reads).
    __device__ __forceinline__ void tail(int tend, int Tn) {
#pragma unroll 1
        for (int t = tend - 1; t < Tn; ++t) out.flush(((tend - 1) & 1) * K::O_BUF);
        mma::cp_async_wait<0>();  // leave no copy in flight at exit (the tail groups are empty)
    }
};

// The compute warps' copies where a DMA warp does them (Tile::DMA): none.
struct NoCopies {
    template <class... A> __device__ __forceinline__ NoCopies(A...) {}
    __device__ __forceinline__ void prologue(int) {}
    __device__ __forceinline__ void step(int, int, int) {}
    __device__ __forceinline__ void tail(int, int) {}
};

// The cell's forward for states its own steps produced (Cell::STEADY_FORM, Tile::STEADY), or its one form.
template <class Cell, class... A> __device__ __forceinline__ void steady_forward(A&... a) {
    if constexpr (Cell::STEADY_FORM) Cell::template forward<true>(a...);
    else Cell::forward(a...);
}

template <bool FIRST, class A, class B> struct Pick { using type = A; };
template <class A, class B> struct Pick<false, A, B> { using type = B; };

// The tile's longest sequence (Tn without lengths): from step tend on no state of the tile changes, so the loop
// stops there and the remaining steps only write the kept states. Every block of a cluster has the same tile, so
// the same tend (their h exchange stops at the same step). A warp-wide call.
template <class K>
__device__ __forceinline__ int tile_end(const int* __restrict__ lengths, int b0, int B, int Tn, int lane) {
    if (lengths == nullptr) return Tn;
    static_assert(K::BT <= 32, "one lane a batch row of the tile");
    const int b = b0 + lane;
    return __reduce_max_sync(0xffffffffu, (lane < K::BT && b < B) ? lengths[b] : 0);
}

// The step's closing barrier (barrier 0 of the whole block). Inline PTX: with a DMA warp (Tile::DMA) the compute
// warps and the DMA warp reach it from different code, which PTX's barrier allows and __syncthreads does not say.
__device__ __forceinline__ void step_barrier() { asm volatile("barrier.sync 0;" ::: "memory"); }
// Split-K's partial sums (Tile::PARTIALS) are complete for every compute warp: the block's barrier, which DMA warps
// (Tile::DMA) reach from their own code at the top of their step (dma_warps), so barrier 0 twice a step. Measured
// against barrier 1 for the compute warps alone, which the DMA warps only arrived at (bar.sync / bar.arrive; H200 bf16
// B=16 T=1024, forward / inference ms): gru 1x768 1.624 / 1.545 -> 1.622 / 1.541, elman 0.962 / 0.963 -> 1.003 /
// 0.987, float32 gru 1.973 / 1.727 -> 2.015 / 1.687 (bench/results/phases/2026-12-04-h200-dma-split-k.txt). Kept for
// compute-sanitizer: with barrier 1 its racecheck paired the DMA warps' reads of the staged outputs and of h (before
// barrier 0) with the cells' writes of the other buffer (after it) in every such kernel, 5-11 hazards, and with it
// none; by the barriers' order those accesses never meet (the cause in the tool is not found).
template <class K> __device__ __forceinline__ void partials_barrier() {
    if constexpr (K::DMA) step_barrier();
    else __syncthreads();
}

// Tile::DMA: the block's last DMA_WARPS warps (`me`: this thread's index among them), which run no math. Each step
// they issue the step's copies, meet the compute warps at the step's barrier, then send h_t's slice (which that
// barrier completed) to the other blocks, rank + 1 first (HSlice). The compute warps meanwhile start the next
// step's mma on the slices that have arrived.
template <class K, class T>
__device__ __forceinline__ void dma_warps(StepCopies<K, T>& io, const HeadHandoff<K>& handoff, int part,
                                          unsigned hbuf0, unsigned bars, unsigned rank, int tend, int Tn, int me,
                                          T* saved) {
    auto hsend = HSlice<K>::sender(hbuf0, rank, part, 0, 0, me);
    mma::cp_async_wait<K::P - 1>();
    cluster::sync();  // (forward's: mbarriers initialised, h_{-1} and Wx[0] visible)
    PHASE_CLOCKS_DECLARE
    int stage = 0;  // t % NS
#pragma unroll 1
    for (int t = 0; t < tend; ++t) {
        if constexpr (K::PARTIALS) step_barrier();  // (the compute warps' partial sums of step t: partials_barrier)
        io.step(t, stage, tend);
        stage = stage == K::NS - 1 ? 0 : stage + 1;
        PHASE(6, 0.f)  // the copies
        mma::cp_async_wait<K::P - 1>();
        step_barrier();
        PHASE(4, 0.f)  // the barrier
        if constexpr (K::G > 1) {  // published first: the longest way (the buffer h_t went to: (t + 1) & 1)
            if (t + 1 < tend) handoff.publish(hbuf0 + ((t + 1) & 1) * K::H_BUF, (t + 1) & 1, unsigned(t + 1), me);
        }
        if (t + 1 < tend) hsend.send(((t + 1) & 1) * K::H_BUF, bars + K::bar_offset((t + 1) & 1, 0));
        PHASE(5, 0.f)  // sending h_t's columns
        if constexpr (K::G > 1) {
            if (t + 1 < tend)
                handoff.collect(hbuf0 + ((t + 1) & 1) * K::H_BUF, (t + 1) & 1, unsigned(t + 1),
                                bars + K::bar_offset((t + 1) & 1, K::REMOTE_GROUP));
        }
    }
    io.tail(tend, Tn);
#ifdef FLASHRNN_PHASE_CLOCKS
    step_barrier();
    PHASE_CLOCKS_WRITE(reinterpret_cast<unsigned long long*>(saved))
#endif
}

template <class Cell, class T, int D, int NBT, int P, int CL, int KS, int RS>
__device__ __forceinline__ void forward(const T* __restrict__ Wx, const T* __restrict__ R,
                                        const T* __restrict__ bias, const T* __restrict__ s0,
                                        T* __restrict__ states, T* __restrict__ saved, int B, int Tn, int N,
                                        const int* __restrict__ lengths, unsigned long long* __restrict__ handoff) {
    using K = Tile<Cell, T, D, NBT, P, CL, KS, RS>;
    using Op = typename K::Op;
    extern __shared__ __align__(16) unsigned char smem[];
    Op* hbuf = reinterpret_cast<Op*>(smem);                                       // [2][SPLIT][BT][HROW]
    T* xbuf = reinterpret_cast<T*>(smem + K::H_BYTES);                            // [NS][BT][XROW]
    float* part = reinterpret_cast<float*>(smem + K::H_BYTES + K::X_BYTES);       // split-K partial sums
    T* obuf = reinterpret_cast<T*>(smem + K::H_BYTES + K::X_BYTES + K::PART_BYTES);  // [2][OROWS][OROW]
    const unsigned bars = mma::smem_u32(smem + K::H_BYTES + K::X_BYTES + K::PART_BYTES + K::O_BYTES);  // mbarriers
    const unsigned rsm = bars + K::BAR_BYTES;                                     // R's shared-memory k-tiles

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c4 = lane % 4;
    // ks pinned in a register: the whole-K cells select their accumulator by it every step, and where it was
    // rebuilt from threadIdx the step read SR_TID (S2R, ~20+ cycles) after the mma. Measured (phase clocks, one
    // process, bench/results/phases/2026-12-01-h200-keep-ks.txt): slstm 48x16 0.242 -> 0.227 ms, lstm 48x16
    // 0.203 -> 0.195, 12x64 unchanged.
    const int wd = warp % K::WARPS_D, ks = KS == 1 ? 0 : int(keep<K::KEEP>(unsigned(warp / K::WARPS_D)));
    // The batch row of the lane's first cell: 2*c4, + ks where KS = 2 splits the lane's two columns over the
    // warps, + g & 1 where the lanes trade columns (Tile::TRADE).
    const int lane_row = 2 * c4 + (KS == 1 ? (K::TRADE ? g & 1 : 0) : ks);
    const unsigned rank = CL > 1 ? cluster::rank() : 0;
    const int n = blockIdx.x / (CL * K::G), b0 = blockIdx.y * K::BT;
    const int hpart = K::G > 1 ? int(blockIdx.x / CL) % K::G : 0;  // this cluster's index in the head (Tile::G)
    const int d0 = (hpart * CL + int(rank)) * K::DB;  // first output dim of this block
    const int dloc = wd * K::DW;                      // first output dim of this warp, within the block
    const size_t ND = size_t(N) * D;

    // Start the first P stages before anything else so they land while R is read (Tile::DMA: the DMA warps', which
    // then go their own way; the compute warps never copy).
    constexpr unsigned E = sizeof(T), EOP = sizeof(Op);
    if constexpr (K::G > 1) {  // (before the XG groups' init: its __syncwarp orders these too)
        if (threadIdx.x == 0)
            for (int buf = 0; buf < 2; ++buf)
                cluster::mbarrier_init(bars + K::bar_offset(buf, K::REMOTE_GROUP), unsigned(K::COPIERS));
    }
    if constexpr (CL > 1) exchange_barriers_init(bars, K::XG, [](int gr) { return K::group_bytes(gr); });
    if constexpr (K::DMA) {
        if (warp >= K::WARPS) {
            const int me = int(threadIdx.x) - 32 * K::WARPS;
            StepCopies<K, T> io(Wx, states, saved, b0, B, Tn, n, d0, ND, mma::smem_u32(xbuf), mma::smem_u32(obuf),
                                me);
            io.prologue(Tn);
            constexpr size_t HEAD_WORDS = size_t(K::G) * CL * 2 * HeadHandoff<K>::WORDS;  // a head's, a batch tile's
            unsigned long long* head = K::G > 1 ? handoff + (size_t(blockIdx.y) * N + n) * HEAD_WORDS : nullptr;
            const HeadHandoff<K> ho(head, hpart, int(rank), me);
            dma_warps<K, T>(io, ho, hpart, mma::smem_u32(hbuf), bars, rank, tile_end<K>(lengths, b0, B, Tn, lane), Tn,
                            me, saved);
            exchange_barriers_exit(bars, K::GROUPS);
            return;
        }
    }
    typename Pick<K::DMA, NoCopies, StepCopies<K, T>>::type io(Wx, states, saved, b0, B, Tn, n, d0, ND,
                                                              mma::smem_u32(xbuf), mma::smem_u32(obuf),
                                                              int(threadIdx.x));
    io.prologue(Tn);

    RRegs<K> a;
    const unsigned r_lane = keep<K::KEEP>(rsm + unsigned((warp * K::SPLIT * K::MT * K::RS * 32 + lane) * 16));
    load_r<K>(a, r_lane, R, n, N, d0 + dloc, ks, int(rank), hpart, g, c4);

    // h_{-1}: every block holds all D columns of it (the compute warps write it).
    for (int i = threadIdx.x; i < K::BT * D; i += 32 * K::WARPS) {
        const int bl = i / D, d = i % D, b = b0 + bl;
        store_h<K>(mma::smem_u32(hbuf + bl * K::HROW + K::column_of_dim(d, int(rank), hpart)),
                   {(s0 != nullptr && b < B) ? load_f(s0 + size_t(b) * ND + size_t(n) * D + d) : 0.f});
    }
    // This warp's cells: (u, nb, cc) -> dim d0 + dloc + dim_of(u, g), batch row lane_row + cell_row(nb, cc).
    float bs[K::CU][K::GB];
    float st[K::CU][NBT][K::COWN][K::S];
    // Which of this lane's batch rows still run at step t (bit nb*OWN + cc; rows past B, never written out,
    // always do), and the next step at which one of them ends (Tn: none; always so without lengths). Two
    // registers however many rows: the loop pays one compare a step and a bit test and S selects a cell.
    unsigned running = ~0u;
    int next_end = Tn;
    auto ends_at = [&](int t) {  // rebuilds both at step t (from the lengths, in L1 after the first time)
        running = 0u;
        next_end = Tn;
#pragma unroll
        for (int nb = 0; nb < NBT; ++nb)
#pragma unroll
            for (int cc = 0; cc < K::COWN; ++cc) {
                const int b = b0 + lane_row + cell_row<K>(nb, cc);
                const int len = b < B ? lengths[b] : Tn;
                if (t < len) {
                    running |= 1u << (nb * K::COWN + cc);
                    next_end = min(next_end, len);
                }
            }
    };
    if (lengths != nullptr) ends_at(0);
    const int tend = tile_end<K>(lengths, b0, B, Tn, lane);
#pragma unroll
    for (int u = 0; u < K::CU; ++u) {
        const int d = d0 + dloc + K::dim_of(u, g);
#pragma unroll
        for (int gate = 0; gate < K::GB; ++gate) bs[u][gate] = load_f(bias + (size_t(gate) * N + n) * D + d);
#pragma unroll
        for (int nb = 0; nb < NBT; ++nb)
#pragma unroll
            for (int cc = 0; cc < K::COWN; ++cc) {
                const int b = b0 + lane_row + cell_row<K>(nb, cc);
#pragma unroll
                for (int s = 0; s < K::S; ++s)
                    st[u][nb][cc][s] =
                        (s0 != nullptr && b < B) ? load_f(s0 + (size_t(s) * B + b) * ND + size_t(n) * D + d) : 0.f;
            }
    }
    mma::cp_async_wait<P - 1>();
    if constexpr (CL > 1) cluster::sync();  // mbarriers initialised before any block sends; h_{-1}, Wx[0] visible
    else __syncthreads();

    // Loop-invariant shared-memory addresses of this lane's h rows (the critical path starts with them).
    const unsigned hrow0 = keep<K::KEEP>(ldmatrix_row<K>(hbuf, ks, lane));
    const unsigned hrow1 = keep<K::KEEP>(ldmatrix_row<K>(hbuf + K::H_ELEMS, ks, lane));
    // ... and of this lane's cells, in buffer 0: the first cell's h (every block holds all D columns), Wx in
    // stage 0, staged states and staged saved values. A cell (u, nb, cc) adds a compile-time offset (cell_row),
    // a step the buffer's offset.
    const int lane_col = dloc + K::dim_of(0, g);
    const unsigned h_cell0 =
        keep<K::KEEP>(mma::smem_u32(hbuf + lane_row * K::HROW + K::column_of_dim(d0, int(rank), hpart) + lane_col));
    const unsigned x_cell0 = keep<K::KEEP>(mma::smem_u32(xbuf + lane_row * K::XROW + lane_col));
    const unsigned o_state0 = keep<K::KEEP>(mma::smem_u32(obuf + lane_row * K::OROW + lane_col));
    const unsigned o_saved0 =
        keep<K::KEEP>(mma::smem_u32(obuf + (K::S * K::BT + lane_row * K::NSAVED) * K::OROW + lane_col));
    // Split-K: where this warp leaves its partner's column, and where the partner left this warp's (c = ks).
    const unsigned part_mine = keep<K::KEEP>(partial_base<K>(part, ks, wd, 1 - ks, lane));
    const unsigned part_partner = keep<K::KEEP>(partial_base<K>(part, 1 - ks, wd, ks, lane));
    auto hsend = HSlice<K>::sender(mma::smem_u32(hbuf), rank, hpart, dloc, ks, lane);  // (unused: CL = 1 or DMA)

    int stage = 0;  // t % NS
    // Step t's copies (StepCopies::step; none where a DMA warp does them): Tile::EARLY_COPIES says where they go.
    PHASE_CLOCKS_DECLARE
    // Where the cell has a steady form (Tile::STEADY), step 0 runs in a pass of its own and steps 1.. in a second,
    // with the form: the passes are unrolled, so `steady` is a constant in each copy of the step.
#pragma unroll
    for (int pass = 0; pass < (K::STEADY ? 2 : 1); ++pass) {
        const bool steady = K::STEADY && pass == 1;
        const int pass_end = K::STEADY && pass == 0 ? min(tend, 1) : tend;
#pragma unroll 1
        for (int t = steady ? 1 : 0; t < pass_end; ++t) {
            if (t == next_end) ends_at(t);  // some of this lane's sequences end here (never without lengths)
            PHASE(7, 0.f)  // (the loop's own overhead, from the end of the last step)
            // Here h_{t-1}'s own columns and Wx[t] are visible (the barrier that closed step t-1); the other
            // blocks' columns arrive on this buffer's mbarrier.
            if constexpr (K::EARLY_COPIES) io.step(t, stage, tend);
#ifndef FLASHRNN_ABLATE_EXCHANGE  // measurement knob: no h exchange (wrong results), to time it
            if constexpr (CL > 1 && !K::DMA) {
                if (t > 0) {
                    const unsigned bar = bars + 8 * (t & 1);
                    cluster::mbarrier_wait(bar, ((t - 1) >> 1) & 1);
                    if (threadIdx.x == 0 && t + 2 < tend) cluster::mbarrier_expect(bar, K::RECV_BYTES);  // next use
                }
            }
#endif
            PHASE(0, 0.f)  // the wait for the other blocks' h (and, where K::EARLY_COPIES, the copies before it)
            const unsigned h_next = h_cell0 + ((t + 1) & 1) * K::H_BUF;  // h_t goes to the other buffer
            const unsigned x_now = x_cell0 + stage * K::X_STAGE;
            const unsigned o_buf = (t & 1) * K::O_BUF;

            [[maybe_unused]] uint4 held[K::SPLIT_FLUSH ? sizeof(typename StepCopies<K, T>::Held) / 16 : 1];
            if constexpr (K::SPLIT_FLUSH) io.read_outputs(t, held);  // (written after the cells)
            // Critical path: h fragments, then the mma.
            float acc[K::MT][NBT][4];
            // (Tile::DMA: the other blocks' slices of h_{t-1} arrive on buffer t % 2's groups, waited for in turn.)
            auto wait_group = [&](int gr) {
#ifndef FLASHRNN_ABLATE_EXCHANGE
                if (t > 0) cluster::mbarrier_wait(bars + K::bar_offset(t & 1, gr), ((t - 1) >> 1) & 1);
#endif
            };
            matmul<K>(acc, a, r_lane, (t & 1) ? hrow1 : hrow0, wait_group);
            if constexpr (K::DMA) {  // thread 0 has waited for every group: arm them for their next use
                if (threadIdx.x == 0 && t > 0 && t + 2 < tend)
                    for (int gr = 0; gr < K::XG; ++gr)
                        cluster::mbarrier_expect(bars + K::bar_offset(t & 1, gr), K::group_bytes(gr));
            }
            PHASE(1, acc[0][0][0] + acc[K::MT - 1][NBT - 1][3])  // h's fragments and the mma
            // This step's Wx: issued while the mma run, except where registers are tight (the largest single
            // blocks), where each cell reads its own just before use.
            float x[K::CU][NBT][K::COWN][K::GW];
            auto read_x = [&](int u, int nb, int cc) {  // (PAIRED: u = 0 reads both cells)
#pragma unroll
                for (int gate = 0; gate < K::GW; ++gate) {
                    const unsigned at = x_now + E * (cell_row<K>(nb, cc) * K::XROW + gate * K::DB + K::dim_of(u, 0));
                    if constexpr (K::PAIRED) ld_shared_f2<T>(at, x[0][nb][cc][gate], x[1][nb][cc][gate]);
                    else x[u][nb][cc][gate] = ld_shared_f<T>(at);
                }
            };
            if constexpr (!K::LATE_X) {
#pragma unroll
                for (int u = 0; u < (K::PAIRED ? 1 : K::CU); ++u)
#pragma unroll
                    for (int nb = 0; nb < NBT; ++nb)
#pragma unroll
                        for (int cc = 0; cc < K::COWN; ++cc) read_x(u, nb, cc);
            }
            if constexpr (K::SPLIT_FLUSH) io.refill(t, stage, tend);  // one block: while the mma run
            else if constexpr (!K::EARLY_COPIES) io.step(t, stage, tend);
            if constexpr (K::SPLIT_WRITE_EARLY) io.write_outputs(t, held);  // in the mma's shadow
            if constexpr (K::PARTIALS) {
                put_partials<K>(part_mine, acc, ks);
                partials_barrier<K>();
            }
            if constexpr (K::TRADE) trade_columns<K>(acc, g & 1);
            PHASE(2, x[0][0][0][0])  // Wx's reads, the copies' issue, split-K's partials

            float sv_first[NBT][K::COWN][K::NSAVED];  // PAIRED: cell u = 0's saved values, stored with u = 1's
#pragma unroll
            for (int u = 0; u < K::CU; ++u)
#pragma unroll
                for (int nb = 0; nb < NBT; ++nb)
#pragma unroll
                    for (int cc = 0; cc < K::COWN; ++cc) {
                        const int c = KS == 1 ? cc : ks;
                        const int row = cell_row<K>(nb, cc);  // batch row bl = row + lane_row
                        const int col = K::dim_of(u, 0);      // dim d0 + col + lane_col
                        float rs[K::GR], sn[K::S], sv[K::NSAVED];
                        if constexpr (K::LATE_X) {
                            if (!K::PAIRED || u == 0) read_x(u, nb, cc);
                        }
#pragma unroll
                        for (int gate = 0; gate < K::GR; ++gate) {
                            const int q = (K::TRADE ? 0 : u) * K::GR + gate, m = q / 2, i0 = 2 * (q % 2);
                            if constexpr (KS == 1) {
                                rs[gate] = acc[m][nb][i0 + (K::TRADE ? u : cc)];  // (TRADE: cell u in column u)
                            } else {
                                rs[gate] = c ? acc[m][nb][i0 + 1] : acc[m][nb][i0];
                                if constexpr (K::PARTIALS)
                                    rs[gate] += ld_shared_f<float>(part_partner + partial_offset<K>(m, nb, i0));
                            }
                        }
#ifdef FLASHRNN_ABLATE_CELL  // measurement knob: a trivial cell (wrong results), to time the rest
#pragma unroll
                        for (int s = 0; s < K::S; ++s) sn[s] = 0.5f * rs[0] + x[u][nb][cc][0] + bs[u][0];
#pragma unroll
                        for (int k = 0; k < K::NSAVED; ++k) sv[k] = rs[k % K::GR];
#else
                        if (steady)
                            steady_forward<Cell>(x[u][nb][cc], rs, bs[u], st[u][nb][cc], sn, sv);
                        else
                            Cell::forward(x[u][nb][cc], rs, bs[u], st[u][nb][cc], sn, sv);
#endif
                        // Past the sequence's end the states stay: a select, so the h that the mma reads next step
                        // (and HSlice sends to the cluster), the staged outputs and the registers all keep the last
                        // valid state bit for bit. sv is written as computed (no backward reads it there).
                        const bool run = (running >> (nb * K::COWN + cc)) & 1u;
#pragma unroll
                        for (int s = 0; s < K::S; ++s) sn[s] = run ? sn[s] : st[u][nb][cc][s];
#pragma unroll
                        for (int s = 0; s < K::S; ++s) st[u][nb][cc][s] = sn[s];
                        if constexpr (!K::PAIRED) {
                            store_h<K>(h_next + EOP * (row * K::HROW + col), {sn[0]});
#ifndef FLASHRNN_ABLATE_STORES  // measurement knob: no outputs (wrong results), to time them
#pragma unroll
                            for (int s = 0; s < K::S; ++s)
                                st_shared_f<T>(o_state0 + o_buf + E * ((s * K::BT + row) * K::OROW + col), sn[s]);
#pragma unroll
                            for (int k = 0; k < K::NSAVED_OUT; ++k)
                                st_shared_f<T>(o_saved0 + o_buf + E * ((row * K::NSAVED + k) * K::OROW + col), sv[k]);
#endif
                        } else if (u == 0) {
#pragma unroll
                            for (int k = 0; k < K::NSAVED_OUT; ++k) sv_first[nb][cc][k] = sv[k];
                        } else {  // both cells of the pair, from the lower dim's address
                            store_h<K>(h_next + EOP * (row * K::HROW), {st[0][nb][cc][0], sn[0]});
#ifndef FLASHRNN_ABLATE_STORES
#pragma unroll
                            for (int s = 0; s < K::S; ++s)
                                st_shared_f2<T>(o_state0 + o_buf + E * ((s * K::BT + row) * K::OROW), st[0][nb][cc][s],
                                                sn[s]);
#pragma unroll
                            for (int k = 0; k < K::NSAVED_OUT; ++k)
                                st_shared_f2<T>(o_saved0 + o_buf + E * ((row * K::NSAVED + k) * K::OROW),
                                                sv_first[nb][cc][k], sv[k]);
#endif
                        }
                    }
            stage = stage == K::NS - 1 ? 0 : stage + 1;
            PHASE(3, st[K::CU - 1][NBT - 1][K::COWN - 1][0])  // the cells
#ifndef FLASHRNN_ABLATE_EXCHANGE
            if constexpr (CL > 1 && K::WARP_SENDS) {
                if (t + 1 < tend) {
                    __syncwarp();  // the lanes' h stores before the lanes that send them read them
                    hsend.send(((t + 1) & 1) * K::H_BUF, bars + 8 * ((t + 1) & 1));
                }
            }
#endif
            PHASE(5, 0.f)  // sending h_t's columns (the warp's, Tile::WARP_SENDS)
            if constexpr (K::SPLIT_FLUSH && !K::SPLIT_WRITE_EARLY) io.write_outputs(t, held);
            // Close the step: h_t's own columns and Wx[t+1] complete for every warp of the block (and the reads of
            // step t, of h and of Wx's stage, are over, so the next step may overwrite them).
            mma::cp_async_wait<P - 1>();
            step_barrier();
            PHASE(4, 0.f)  // the barrier
#ifndef FLASHRNN_ABLATE_EXCHANGE
            if constexpr (CL > 1 && !K::WARP_SENDS && !K::DMA) {
                if (t + 1 < tend) hsend.send(((t + 1) & 1) * K::H_BUF, bars + 8 * ((t + 1) & 1));
            }
#endif
            PHASE(5, 0.f)  // sending h_t's columns (the block's)
        }
    }
    io.tail(tend, Tn);
#ifdef FLASHRNN_PHASE_CLOCKS
    step_barrier();
    PHASE_CLOCKS_WRITE(reinterpret_cast<unsigned long long*>(saved))
#endif
    if constexpr (CL > 1) exchange_barriers_exit(bars, K::GROUPS);
}

}  // namespace fused
}  // namespace flashrnn

// ---- The entry: one variant per set of -D defines (runtime contract) --------------------------------------
//   (the defaults of the defines both entries take, and the check of the host's FLASHRNN_SMEM_BYTES and
//   FLASHRNN_THREADS against Tile: common/entry.cuh)
//   FLASHRNN_CELL      LstmCell | SlstmCell | GruCell | ElmanCell (cuda_src/cells/)
//   FLASHRNN_FAST_ACTIVATIONS  1 for 16-bit storage (hardware tanh), 0 for float32 (common/activations.cuh)
//   FLASHRNN_STORAGE   __nv_bfloat16 | __half | float
//   FLASHRNN_D         head dimension (multiple of 16)
//   FLASHRNN_NBT       batch n-tiles of 8 sequences per block
//   FLASHRNN_PREFETCH  steps of Wx in flight ahead of the one computed
//   FLASHRNN_CLUSTER   blocks per head (a thread-block cluster on sm_90 when > 1)
//   FLASHRNN_KSPLIT    warps that split K for the same rows (1 or 2)
//   FLASHRNN_WHOLE_K   1: those KSPLIT warps each run the whole K instead, and split the batch columns only
//   FLASHRNN_R_SMEM    of a warp's k-tiles of R, how many live in shared memory (the last ones; 0: none)
//   FLASHRNN_DMA_WARPS n (clusters): n more warps a block do the copies and the h sends (Tile::DMA)
//   FLASHRNN_WIDE_WARPS 1 (even-Gr cells): a warp owns 16 dims, not 8 (Tile::WIDE)
//   FLASHRNN_F32_HALF  1 (float32 storage): R and h reach the tensor cores as one fp16 operand, not bf16 hi + lo
//   FLASHRNN_HEAD_CLUSTERS G (DMA warps; problems.HEAD_SPLIT, bench/head_split.py): a head spans G clusters, and the
//                      entry takes one more argument, `handoff`: ceil(B / (8*NBT)) * N * G * CLUSTER * 2 * WORDS
//                      zeroed 8-byte words (HeadHandoff)
// Launch: grid (N * CLUSTER * G, ceil(B / (8*NBT))), cluster (CLUSTER, 1, 1), block Tile::THREADS, dynamic shared
// memory Tile::SMEM_BYTES. lengths: [B] int32 with 1 <= lengths[b] <= T, or null (every sequence runs T steps);
// past its end a sequence's states stay at its last valid ones (docs/architecture.md, "Variable lengths").
#ifndef FLASHRNN_NBT
#define FLASHRNN_NBT 1
#endif
#ifndef FLASHRNN_PREFETCH
#define FLASHRNN_PREFETCH 4
#endif

using FlashrnnFusedTile = flashrnn::fused::Tile<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D, FLASHRNN_NBT,
                                                FLASHRNN_PREFETCH, FLASHRNN_CLUSTER, FLASHRNN_KSPLIT, FLASHRNN_R_SMEM>;

template struct flashrnn::LaunchGeometryAgrees<FlashrnnFusedTile, FLASHRNN_SMEM_BYTES, FLASHRNN_THREADS>;

#if defined(FLASHRNN_HEAD_CLUSTERS) && FLASHRNN_HEAD_CLUSTERS > 1
#define FLASHRNN_HANDOFF_PARAM , unsigned long long* __restrict__ handoff
#define FLASHRNN_HANDOFF_ARG , handoff
#else
#define FLASHRNN_HANDOFF_PARAM
#define FLASHRNN_HANDOFF_ARG , nullptr
#endif

extern "C" __global__ void __launch_bounds__(FlashrnnFusedTile::THREADS, 1)
flashrnn_fused_fw(const FLASHRNN_STORAGE* __restrict__ Wx, const FLASHRNN_STORAGE* __restrict__ R,
                  const FLASHRNN_STORAGE* __restrict__ b, const FLASHRNN_STORAGE* __restrict__ states0,
                  FLASHRNN_STORAGE* __restrict__ states, FLASHRNN_STORAGE* __restrict__ saved, int B, int T, int N,
                  const int* __restrict__ lengths FLASHRNN_HANDOFF_PARAM) {
    flashrnn::fused::forward<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D, FLASHRNN_NBT, FLASHRNN_PREFETCH,
                             FLASHRNN_CLUSTER, FLASHRNN_KSPLIT, FLASHRNN_R_SMEM>(Wx, R, b, states0, states, saved, B, T, N,
                                                                  lengths FLASHRNN_HANDOFF_ARG);
}
