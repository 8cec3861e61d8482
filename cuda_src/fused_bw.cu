// cuda_fused backward: one persistent reverse-time kernel per (head, tile of 8 sequences); a time step costs two
// __syncthreads (one with KS = 1). Heads whose R^T one block cannot hold take a thread-block cluster of CL blocks
// (sm_90), exactly as the forward's: block `rank` owns dims [rank*DB, (rank+1)*DB) (its rows of R^T and its
// cells), and after each step sends its drs columns (GR gates x DB) to the other blocks with st.async, counted by
// their mbarrier for that drs buffer (common/pieces.cuh SliceSender). Where no cluster holds R^T in registers,
// the last RS k-tiles of each warp live in shared memory (16-bit storage; Tile::RS; gru D = 768: 20 of 36). lstm
// and slstm at D = 768 fit neither (R^T is 4.7 MB in bf16: ~295 KB an SM of a 16-block cluster, plus ~85 KB of
// drs buffers and stages, past what 16 SMs' registers and shared memory leave once ptxas takes ~100 registers a
// thread besides R^T): they take the scatter-cluster kernel at the end of this file (backward_scatter).
//
// The recurrence in reverse: ds_t = carry_t + upstream_t, with carry_t[h] = ds_prev[h] + sum_g R_g^T drs_g,t+1.
// Matrix view of the recurrent term: dH[D, 8] = A[D, Gr*D] x DRS[Gr*D, 8], A[k][g*D + j] = R[g][j][k] (R^T, the
// gates side by side along K). M = the h dims (16 a warp), K = every gate's rows, N = the batch tile.
//   * A lives in registers as mma.sync A-fragments for the whole run (loaded once, transposed on load).
//   * drs_{t+1} lives in shared memory as the B operand, [batch][Gr*D] rows, double-buffered: step t reads one
//     buffer and writes the other, so one barrier a step orders both.
//   * KS warps share each 16-row M tile, each multiplying every KS-th k-tile; their partial sums meet in shared
//     memory. The accumulator layout decides who runs the cell: lane (g, c4) of an M tile's warps covers dims
//     16w + g (+8) and batch rows 2*c4 (+1), 4 cells, dealt out over the KS warps (one each at KS = 4); their
//     carried state gradients stay in registers and Cell::backward (cuda_src/cells/) runs on them there.
//   * the step's inputs (saved pre-activations, the previous states, upstream gradients) are loaded one step
//     ahead into registers, so their latency overlaps the previous step.
//   * outputs: dWx[:, t] (= the cell's dx) and drs[:, t] (for dR, a GEMM after the kernel); db is a sum over
//     those after the kernel too (deterministic: no atomics anywhere).
// float32 storage: as in the forward, R^T and drs are each split into bf16 hi + lo and multiplied as
// hi*hi + hi*lo + lo*hi; or, in the scatter kernel where that fits nothing (FLASHRNN_F32_HALF), one fp16 operand
// each, drs scaled by a power of two a batch row (ScatterTile::SCALED, CellLanes::write_scaled).
//
// ---- Per-step latency, 12x64 LSTM bf16, B=16 (estimated BEFORE measuring; H100 ~1.75-1.98 GHz) --------------
//   barrier (4 warps)                                             ~ 25 cycles
//   ldmatrix x2 of drs, 16 k-tiles (pipelined)                    ~ 60
//   mma chain: 16 m16n8k16 in 4 independent chains of 4 (~33 each) ~ 150
//   pointwise LSTM backward, 4 cells a lane: 5 transcendentals + ~30 FMAs each, issue-bound on 4 warps ~ 250
//   drs convert + st.shared (4 cells x 4 gates), global stores of dWx/drs (fire and forget) ~ 60
//   -------------------------------------------------------------------------------------
//   ~ 550 cycles = ~0.3 us a step -> T=1024: ~0.3 ms (+ the dR GEMM and db sum after the kernel).
// ---- Measured (H100, .scratch split timing, bf16 B=16 T=1024; bench/results/*fused-fwbw.json) --------------
//   kernel alone: lstm 12x64 3.51 ms = 3.43 us a step (~6800 cycles at 1.98 GHz), 11x the estimate; lstm 48x16
//   4.10 ms (4.0 us); gru 12x64 2.26 ms (2.2 us). After the kernel, dR (cuBLAS GEMMs on the stored values)
//   and db (GEMMs against ones) add 0.17 ms: full backward 3.61 ms at 12x64 (with float32 copies and
//   cupy.matmul they had added 2.0 ms).
//   Diagnosis: 12x64 ran 4 warps a block (D/16), one block an SM, so ONE warp a scheduler: every instruction
//   of a lane's 4 cells (~1000 a step: 4 cells' pointwise math, 32 loads with 64-bit index math, 16 stores,
//   16 mma) waited on its predecessor, with no other warp to fill the gap: ~6-7 cycles each, ~6800 cycles.
//   Ruled out earlier: the end-of-step copy nxt -> cur (unrolling twice without it measured slower).
// ---- Redesign (KS warps per 16-row M tile; estimated BEFORE measuring) ---------------------------------------
//   KS = 4 at D = 64: 16 warps, each multiplies a quarter of the k-tiles (4 mma, independent), the partial sums
//   meet in shared memory (one more barrier a step), and each lane runs ONE cell (its loads, math, stores);
//   the (b, t) index moves by one subtraction a step instead of being rebuilt for every load.
//   Per warp and step ~150 instructions; 16 warps on 4 schedulers: ~600 issue cycles, critical path
//   ldmatrix + 4 mma (~70) + red store/barrier/load (~80) + pointwise chain (~150) + drs store + barrier (~60)
//   ~ 400 cycles, so ~600-800 cycles = 0.3-0.4 us a step -> ~0.4 ms at T=1024 (from 3.4 ms), fwbw ~1.2 ms.
// ---- Measured after (H200, bf16 12x64 B=16; ncu at T=256 under its locked clock, then bench fwbw at T=1024) -----
//   KS = 4 alone: kernel 644 us at T=256, fwbw 2.88 ms (from 4.15 on H100). ncu: 38% of stall samples on
//     the bf16 -> float conversions right after the one-step-ahead loads (the prefetch did not hide them).
//   + inputs staged by cp.async 3 steps ahead: 367 us, fwbw 1.82 ms. + outputs staged, 16-byte stores: 313 us,
//     fwbw 1.66 ms. + dR and db summed in the kernel (no h_prev copy, no GEMMs after): 1.80 ms with the dR mma
//     at the top of the step (they delayed the step's own mma), 1.62 ms with them at its end.
//   Still ~2x the estimate: ~230 instructions a warp a step (ncu: IMAD 23%, LEA/ISETP/LOP3 ~20%: indices,
//   selects, stage bookkeeping), 16 warps on 4 schedulers ~900 issue cycles, and two barriers.
// ---- Clusters (stop 17; estimated BEFORE measuring by ConstrINT's backward model, H100 preset, bf16 B=16) -------
//   lstm 3x256 on 8-block clusters, KS = 4 (8 warps, 16 k-tiles of R^T a warp in registers): ~5100 cycles a step
//   (2.6 us, ~2.6 ms at T=1024), of which the drs exchange is ~3800: every block receives 7 x 4 gates x 32 dims x
//   8 sequences x 2 bytes = 14 KB a step, at the 4 bytes a cycle the forward's sweep fitted to its h exchange
//   (problems.KernelModel.cluster_bytes_per_cycle). The `cuda` backward it replaces took ~7.3 ms. lstm 1x512
//   (16 blocks, 4 of 32 k-tiles in shared memory): ~9400 cycles (4.8 us) a step.
//   Measured (H200, forward+backward minus forward, dR GEMMs after the kernel included; bench/results/
//   2026-11-30-h200-reference.json): lstm 3x256 2.65 - 0.86 = 1.80 ms (the `cuda` backward: 7.3), ~3500 cycles a
//   step: the exchange costs less than the forward's fitted 4 bytes a cycle says (not profiled yet). slstm 3x256
//   1.82, gru 3x256 1.70, elman 1x768 1.53, gru 1x768 (16 blocks, 12 warps, 20 of 36 k-tiles in shared memory) 3.73
//   (the `cuda` backward: 9.6).
// ---- Addresses (stop 15, as the forward: per-thread bases + compile-time offsets, common/pieces.cuh) ---------
//   Loop body 236 -> 178 SASS instructions at 12x64 (lstm). Measured (H200 B=16 T=1024, forward+backward):
//   lstm 12x64 1.62 -> 1.47 ms, 48x16 0.825 -> 0.678, slstm 1.98 -> 1.61, gru 1.51 -> 1.36
//   (bench/results/2026-11-30-h200-reference-d255229.json).
// ---- Stages of the rows the cells read (stop 19; for the scatter kernel's registers, see ScatterTile) -----------
//   Here it was expected to change little (fewer cp.async pieces where h_{t-1} is not staged: lstm 12x64 without
//   dR tiles 64 -> 56 rows, slstm 96 -> 80). Measured (H200, 2026-12-01-h200-reference-b7c6264.json, forward+
//   backward): lstm 12x64 1.48 -> 1.39 ms, 48x16 0.698 -> 0.690; slstm 12x64 1.61 -> 1.59, 48x16 0.777 -> 0.807;
//   gru and elman not run. lstm's 6% is more than the pieces explain; not profiled.
#include "common/entry.cuh"
#include "common/mma.cuh"
#include "common/phase_clocks.cuh"
#include "common/pieces.cuh"
#include "common/types.cuh"
#include "cells/cells.cuh"

namespace flashrnn {
namespace fused_bw {

// Set bits of a mask, and which state the k-th set bit is (compile-time where the arguments are).
__host__ __device__ constexpr int count_bits(unsigned mask) {
    int n = 0;
    for (int s = 0; s < 8; ++s) n += int((mask >> s) & 1u);
    return n;
}
__host__ __device__ constexpr int nth_bit(unsigned mask, int k) {
    int at = 0;
    for (int s = 0; s < 8; ++s)
        if ((mask >> s) & 1u) at = k-- == 0 ? s : at;
    return at;
}

// What both kernels below stage a step, over a block's DB dims and BT = 8 sequences (Tile and ScatterTile add their
// matmul's geometry): a step's inputs, staged by cp.async P steps ahead in NS = P + 2 stages (a stage is refilled
// two steps after its own, since step t's h_{t-1} rows are read again at the top of step t-1 by the dR tiles), as
// rows of the block's DB values (+ one 16-byte piece of padding, so the 4 batch rows a warp reads at once fall in
// distinct banks): saved [BT][NSAVED], then the previous states the cell's backward reads [NPREV][BT] (Cell::
// PREV_READ, and h where the kernel's dR tiles read h_{t-1}: H_PREV), then the upstream gradients it reads [NUP][BT]
// (Cell::DS_READ; sLSTM's on m reaches nothing). Rows nothing reads are not staged: at sLSTM D = 768 the 96 rows
// of all states took 2 KB more of the scatter kernel's shared memory and a third 16-byte piece a thread. A
// step's outputs, staged as rows [BT][GO] (dWx's gates, then drs's where the cell's drs is not its dx) and written
// out during the next step as 16-byte pieces (double-buffered): the forward measured 2-byte scattered stores at ~40
// cycles each a step.
template <class Cell, class T, int D_, int DB_, int P_, bool STORE_DRS_, int THREADS_, bool H_PREV_> struct Staging {
    using Op = typename OperandOf<T>::Op;
    static constexpr int SPLIT = OperandOf<T>::SPLIT;
    static constexpr bool KEEP = SPLIT == 1;  // per-thread addresses pinned in registers (common/pieces.cuh, keep)
    static constexpr bool SCALED = false;     // drs scaled a batch row on its way to the mma (ScatterTile::SCALED)
#ifdef FLASHRNN_LEAN_COPIES  // measurement knob: every kernel's copies in the lean form (InPieces), for an A/B
    static constexpr bool LEAN_COPIES = true;
#else
    static constexpr bool LEAN_COPIES = false;  // InPieces keeps step 0's addresses (ScatterTile: lean, registers)
#endif
    static constexpr int D = D_, DB = DB_, BT = 8, P = P_, NS = P_ + 2, THREADS = THREADS_;
    static constexpr int GW = Cell::GW, GR = Cell::GR, GB = Cell::GB, S = Cell::S, NSAVED = Cell::NSAVED;
    static constexpr int CH = 16 / int(sizeof(T));           // elements in a 16-byte piece
    // A staged row: the block's dims and a 16-byte pad (rows of the same dims in different banks), but for the
    // scatter kernel's one-stage form (P = 0, ScatterTile::ONE_STAGE), whose every byte goes to R^T.
    static constexpr int ROW = DB + (P_ == 0 ? 0 : CH);
    static constexpr unsigned PREV_STAGED = Cell::PREV_READ | (H_PREV_ ? 1u : 0u), UP_STAGED = Cell::DS_READ;
    static constexpr int NPREV = count_bits(PREV_STAGED), NUP = count_bits(UP_STAGED);
    static constexpr int SAVED_ROWS = BT * NSAVED, PREV_ROW0 = SAVED_ROWS, UP_ROW0 = SAVED_ROWS + NPREV * BT;
    static constexpr int STAGE_ROWS = UP_ROW0 + NUP * BT, STAGE_ELEMS = STAGE_ROWS * ROW;
    // Where state s's rows start among the previous states' (its upstream gradient's) rows, in units of BT.
    __host__ __device__ static constexpr int prev_slot(int s) { return count_bits(PREV_STAGED & ((1u << s) - 1u)); }
    __host__ __device__ static constexpr int up_slot(int s) { return count_bits(UP_STAGED & ((1u << s) - 1u)); }
    static constexpr int PIECES = STAGE_ROWS * (DB / CH);
    static constexpr bool STORE_DRS = STORE_DRS_;
    static constexpr int GO = GW + (STORE_DRS ? GR : 0), OUT_ELEMS = BT * GO * ROW, OUT_PIECES = BT * GO * (DB / CH);
    static constexpr int STAGE_BYTES = NS * STAGE_ELEMS * int(sizeof(T)), OUT_BYTES = 2 * OUT_ELEMS * int(sizeof(T));
    static_assert(BT * GB * DB * 4 <= STAGE_BYTES, "db's block reduction reuses the stages");
    static_assert(P >= 0, "steps of inputs in flight");
    static_assert(THREADS <= 1024, "one block per (head, batch tile)");
};

// Compile-time geometry of the drs-exchange kernel (`backward`). ConstrINT's backward problem (constrint/
// backward.py) mirrors THREADS and SMEM_BYTES.
// KS warps share one 16-row M tile, each taking every KS-th k-tile: the partial sums meet in shared memory
// (`red`), and the four cells a lane's accumulator covers are dealt out among those KS warps (warp ks owns the
// cells q = ks, ks + KS, ...). So each warp runs 4/KS cells' loads, pointwise math and stores: issue #6
// measured KS = 1 (4 warps at D = 64, one warp a scheduler) at ~6800 cycles a step, every instruction of the
// 4 cells serialised on its latency.
template <class Cell, class T, int D_, int KS_, int P_, bool STORE_DRS_, bool FUSED_DR_, int CL_, int RS_>
struct Tile : Staging<Cell, T, D_, D_ / CL_, P_, STORE_DRS_, 32 * (D_ / CL_ / 16) * KS_, FUSED_DR_> {
    using Base = Staging<Cell, T, D_, D_ / CL_, P_, STORE_DRS_, 32 * (D_ / CL_ / 16) * KS_, FUSED_DR_>;
    using typename Base::Op;
    using Base::D, Base::DB, Base::BT, Base::SPLIT, Base::GR, Base::THREADS, Base::STAGE_BYTES, Base::OUT_BYTES;
    static constexpr int KS = KS_, CL = CL_;
    static constexpr int WARPS_M = DB / 16, WARPS = WARPS_M * KS;
    static constexpr int KT = GR * D / 16;                   // k-tiles: every gate's rows
    static constexpr int KT_W = (KT + KS - 1) / KS;          // k-tiles a warp holds (the last may hold fewer)
    static constexpr int RS = RS_, KTR = KT_W - RS_;         // ... of those in shared memory, in registers
    static constexpr int CHAINS = KT_W < 4 ? KT_W : 4;       // independent partial sums of the mma chain
    static constexpr int CELLS = 4 / KS;                     // cells a lane runs
    static constexpr int KROW = GR * D + 8;                  // padded row: ldmatrix rows in distinct banks
    static constexpr int GATE_COLS = D;                      // a gate's columns in a drs row
    static constexpr int BUF_ELEMS = SPLIT * BT * KROW;      // one drs buffer (every block's columns)
    static constexpr int RED_FLOATS = KS > 1 ? KS * WARPS_M * 4 * 32 : 0;  // [ks][warp_m][cell q][lane]
    static constexpr int BUF_BYTES = 2 * BUF_ELEMS * int(sizeof(Op)), RED_BYTES = RED_FLOATS * 4;
    static constexpr int BAR_BYTES = CL > 1 ? 16 : 0;        // two mbarriers (one per drs buffer)
    // R^T's shared-memory k-tiles as A-fragments in lane order, [WARPS][SPLIT][RS][32 lanes][4 registers]: one
    // conflict-free 16-byte load a lane per fragment (as the forward's).
    static constexpr int R_BYTES = WARPS * SPLIT * RS * 512;
    static constexpr int SMEM_BYTES = BUF_BYTES + RED_BYTES + STAGE_BYTES + OUT_BYTES + BAR_BYTES + R_BYTES;
    // Bytes of drs one block receives from the others a step: their GR*DB columns of every batch row.
    static constexpr unsigned RECV_BYTES = unsigned((CL - 1) * SPLIT * BT * GR * DB * int(sizeof(Op)));
    // dR in the kernel (16-bit storage): per step, dR_head[(gate, i)][j] += sum_b drs_t[b][(gate, i)] h_{t-1}[b][j]
    // as m16n8k8 tiles (k = the tile's 8 sequences), read from the drs buffer and the stage already in shared
    // memory; DR_TILES dealt out over the warps, TPW each (4 accumulators a tile). Chosen by the host
    // (ConstrINT's backward problem, constrint/backward.py: the tiles' accumulators cost registers, which it
    // weighs against the GEMM after the kernel that dR otherwise is).
    static constexpr int DR_TILES = GR * D / 16 * (D / 8), TPW = (DR_TILES + WARPS - 1) / WARPS;
    static constexpr bool FUSED_DR = FUSED_DR_;
    static_assert(!FUSED_DR || SPLIT == 1, "dR in the kernel multiplies 16-bit operands (float32 splits them)");
    static_assert(!FUSED_DR || CL == 1, "dR in the kernel: one block a head (a cluster's would need every h)");
    static_assert(!(FUSED_DR && Base::STORE_DRS), "drs is stored only for a dR GEMM after the kernel");
    static_assert(D % (16 * CL) == 0, "D must be a multiple of 16 blocks' share (16 CL)");
    static_assert(RS >= 0 && RS <= KT_W, "R^T k-tiles in shared memory: some of the warp's");
    static_assert(KS == 1 || KS == 2 || KS == 4, "the 4 cells of a lane split evenly over KS warps");
    static_assert(Base::P >= 1, "at least one step of inputs in flight");
};

// One A-fragment of R^T at k-tile kt (k-tiles past KT, the last warp's tail, are zeros): row k = k0 + g (+8),
// column kk = 16*kt + 2*c4 (+1, +8) = gate*D + j, value R[gate][j][k].
template <class K, class T>
__device__ __forceinline__ void rt_fragment(unsigned (&f)[K::SPLIT][4], const T* __restrict__ R, int n, int N, int k0,
                                            int kt, int g, int c4) {
    using Op = typename K::Op;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int k = k0 + g + 8 * (j & 1);
        const int kk = 16 * kt + 2 * c4 + 8 * (j >> 1);
        const int gate = kk / K::D, row = kk % K::D;
        Op lo[K::SPLIT], hi[K::SPLIT];
        if (kt < K::KT) {
            const T* p = R + ((size_t(gate) * N + n) * K::D + row) * K::D + k;
            split(load_f(p), lo);
            split(load_f(p + K::D), hi);  // the next j: the next row of R
        } else {
            split(0.f, lo);
            split(0.f, hi);
        }
#pragma unroll
        for (int s = 0; s < K::SPLIT; ++s) f[s][j] = mma::pack2(lo[s], hi[s]);
    }
}

// Registers of R^T's fragments: the KTR register k-tiles (at least one array element, for the compiler).
template <class K> using RtRegs = unsigned[K::KTR > 0 ? K::KTR : 1][K::SPLIT][4];

// This lane's address of fragment (s, r) of the warp's shared-memory k-tiles (Tile::R_BYTES's layout).
template <class K> __device__ __forceinline__ constexpr unsigned rt_smem_offset(int s, int r) {
    return unsigned((s * K::RS + r) * 512);
}

// An A-fragment of R^T in shared memory, both kernels: this lane's 16 bytes of part 0 at `at`, of part s at
// s * `part_bytes` further (one conflict-free 16-byte access a lane and part).
template <class K>
__device__ __forceinline__ void st_rt_fragment(unsigned at, unsigned part_bytes, const unsigned (&f)[K::SPLIT][4]) {
#pragma unroll
    for (int s = 0; s < K::SPLIT; ++s)
        st_shared_v4(at + s * part_bytes, make_uint4(f[s][0], f[s][1], f[s][2], f[s][3]));
}
template <class K>
__device__ __forceinline__ void ld_rt_fragment(unsigned (&f)[K::SPLIT][4], unsigned at, unsigned part_bytes) {
#pragma unroll
    for (int s = 0; s < K::SPLIT; ++s) {
        const uint4 v = ld_shared_v4(at + s * part_bytes);
        f[s][0] = v.x, f[s][1] = v.y, f[s][2] = v.z, f[s][3] = v.w;
    }
}

// R^T for this warp's k-tiles kt = ks + KS*jt: the first KTR into registers, the rest into shared memory at
// `r_lane` (this lane's address of the warp's first fragment there), one at a time (not unrolled: as the
// forward's load_r, so that ptxas does not hoist all their global loads into registers).
template <class K, class T>
__device__ __forceinline__ void load_rt(RtRegs<K>& a, unsigned r_lane, const T* __restrict__ R, int n, int N, int k0,
                                        int ks, int g, int c4) {
#pragma unroll
    for (int jt = 0; jt < K::KTR; ++jt) {
        unsigned f[K::SPLIT][4];
        rt_fragment<K>(f, R, n, N, k0, ks + K::KS * jt, g, c4);
#pragma unroll
        for (int s = 0; s < K::SPLIT; ++s)
#pragma unroll
            for (int j = 0; j < 4; ++j) a[jt][s][j] = f[s][j];
    }
#pragma unroll 1
    for (int r = 0; r < K::RS; ++r) {
        unsigned f[K::SPLIT][4];
        rt_fragment<K>(f, R, n, N, k0, ks + K::KS * (K::KTR + r), g, c4);
        st_rt_fragment<K>(r_lane + rt_smem_offset<K>(0, r), rt_smem_offset<K>(1, 0), f);
    }
}

// The drs B-fragments of k-tile kt, one per operand part (`addr`: this lane's ldmatrix row of the buffer, whose
// SPLIT parts are BT rows apart).
template <class K>
__device__ __forceinline__ void drs_fragments(unsigned (&bf)[K::SPLIT][2], unsigned addr, int kt) {
    constexpr int E = int(sizeof(typename K::Op));
#pragma unroll
    for (int s = 0; s < K::SPLIT; ++s) mma::ldmatrix_x2(bf[s], addr + unsigned((s * K::BT * K::KROW + 16 * kt) * E));
}

// p += f x bf: one mma, or for float32's hi + lo parts hi*hi + hi*lo + lo*hi (fused_fw.cu's split).
template <class K>
__device__ __forceinline__ void mma_split(float (&p)[4], const unsigned (&f)[K::SPLIT][4],
                                          const unsigned (&bf)[K::SPLIT][2]) {
    using M = mma::Mma<typename K::Op>;
    M::run(p, f[0], bf[0][0], bf[0][1]);
    if constexpr (K::SPLIT == 2) {
        M::run(p, f[0], bf[1][0], bf[1][1]);
        M::run(p, f[1], bf[0][0], bf[0][1]);
    }
}

// One k-tile's product into partial sum p: the drs B-fragments of k-tile kt times the A-fragment f.
template <class K>
__device__ __forceinline__ void mma_ktile(float (&p)[4], const unsigned (&f)[K::SPLIT][4], unsigned addr, int kt) {
    unsigned bf[K::SPLIT][2];
    drs_fragments<K>(bf, addr, kt);
    mma_split<K>(p, f, bf);
}

// This warp's share of dh[16 dims][8 batch rows] = R^T drs from one drs buffer (`addr`: this lane's ldmatrix
// row): the sum over its k-tiles only. The register k-tiles unrolled; the shared-memory ones (RS > 0) in a loop of
// CHAINS at a time, so that ptxas does not hoist their loads into registers the kernel has no room for (unrolled,
// lstm D=768 took ~130 registers a thread besides R^T's).
template <class K>
__device__ __forceinline__ void matmul(float (&acc)[4], const RtRegs<K>& a, unsigned r_lane, unsigned addr, int ks) {
    float part[K::CHAINS][4];
#pragma unroll
    for (int c = 0; c < K::CHAINS; ++c)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[c][i] = 0.f;
#pragma unroll
    for (int jt = 0; jt < K::KTR; ++jt) {
        const int kt = ks + K::KS * jt;
        if (K::KT % K::KS != 0 && kt >= K::KT) break;  // the tail warp's last slot (uniform within the warp)
        mma_ktile<K>(part[jt % K::CHAINS], a[jt], addr, kt);
    }
#pragma unroll 1
    for (int r0 = 0; r0 < K::RS; r0 += K::CHAINS) {
#pragma unroll
        for (int c = 0; c < K::CHAINS; ++c) {
            const int r = r0 + c, kt = ks + K::KS * (K::KTR + r);
            if ((K::RS % K::CHAINS != 0 && r >= K::RS) || (K::KT % K::KS != 0 && kt >= K::KT)) break;
            unsigned f[K::SPLIT][4];
            ld_rt_fragment<K>(f, r_lane + rt_smem_offset<K>(0, r), rt_smem_offset<K>(1, 0));
            mma_ktile<K>(part[c], f, addr, kt);
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float v = part[0][i];
#pragma unroll
        for (int c = 1; c < K::CHAINS; ++c) v += part[c][i];
        acc[i] = v;
    }
}

// Pointers and sizes of the contract's tensors ([.., B, T, .., N, D]).
template <class T> struct Args {
    const T *R, *s0, *states, *saved, *dstates, *dlast;
    T *dWx, *drs, *dinit;
    float *dr_part, *db_part;  // [tiles, GR, N, D, D] (FUSED_DR) and [tiles, GB, N, D]: this block's sums
    const int* lengths;  // [B] or null (every sequence has length Tn)
    unsigned* progress;  // null, or per boundary the blocks that have written the steps above it (see below)
    int B, Tn, N, SD;    // SD: state rows of dstates (1: h only, S: all)
    int chunk_mask;      // the steps between two counts - 1 (a power of two, minus 1)
    int chunk_phase;     // (Tn - 1) & chunk_mask: the steps t that count
};

// dR on the SMs this kernel leaves idle (recurrent_grad.OverlappedDr): every C = chunk_mask + 1 steps from the
// last, at the barrier of step t = last - k C (k > 0), once its outputs [t+1, Tn) are written, the block adds 1 to
// progress[k]; the host's side stream waits for a count to reach every block (cuStreamWaitValue32) before it sums
// those steps' dR. (One count a boundary, not one in all: blocks of other heads and batch tiles drift apart, by
// whole waves where the grid exceeds the GPU.) The steps' outputs are plain global stores issued before the block
// barrier; after it one thread (REPORTER) fences and adds, as cooperative groups' grid sync does: the barrier puts
// every thread's stores before the fence, which is cumulative. Step 0's outputs are the kernel's end. REPORTS
// false (a kernel that sums dR itself, FUSED_DR): a __syncthreads only.
// The test reads the arguments as they come and counts step last too, in progress[0], and in backward_scatter the
// round after step 0 (t = -1) where Tn is a multiple of C, in progress[Tn / C], which nobody reads: each derived
// value or test kept over the loop costs registers, and kernels at 255 spilled (slstm float32 D = 448).
template <bool REPORTS, int REPORTER = 0, class T>
__device__ __forceinline__ void barrier_reporting_progress(const Args<T>& A, int t, int last) {
    __syncthreads();
    if constexpr (REPORTS) {
        if (threadIdx.x == REPORTER && A.progress != nullptr && (t & A.chunk_mask) == A.chunk_phase) {
            __threadfence();
            atomicAdd(A.progress + ((last - t) >> __popc(A.chunk_mask)), 1u);
        }
    }
}

// Copies the inputs of step t (saved[b, t], states[b, t-1] or states0 at t = 0, dstates[b, t]) of this block's
// batch tile and dims [d0, d0 + DB) into one stage, for t = Tn-1, Tn-2, ... in turn. Missing tensors and rows past
// B are zero-filled (never read), so a stage always holds the inputs as the math wants them.
// Two forms, by K::LEAN_COPIES:
// * lean (the scatter kernel, whose R^T tiles take what registers the rest leaves): a thread keeps per piece only
//   its source and destination; a piece moves back one step by NSAVED (saved rows) or one (states) rows of N*D, and
//   step 0's initial-state addresses are rebuilt when step 0 comes (at sLSTM D = 768 keeping strides and those took
//   12 registers, 3 tiles of R^T);
// * kept (every other kernel): a thread also keeps each piece's step-0 address and its stride, so a step's copy
//   is a select, the cp.async and a subtract a piece. The lean form's step-0 rebuild sat in the step loop as a
//   branch a piece, and ptxas turned it into selects only where a thread has one piece: at slstm 48x16 (160
//   pieces, 128 threads) warp 0's two pieces took ~52 issued instructions and 5 taken branches a step ahead of the
//   mma (SASS, sm_90), the kept form 35 and none; lstm's one piece 29 -> 23.
//   Estimated before measuring: ~40-80 of slstm 48x16's ~765 cycles a step, its backward 0.447 -> 0.41-0.43 ms;
//   lstm 48x16 -0.005..-0.01 ms; 12x64 and 3x256 (one piece a thread, already selects) unchanged. Measured (H100
//   bf16 B=16 T=1024, the backward alone, knob FLASHRNN_LEAN_COPIES for the old form, dWx bitwise equal;
//   bench/results/phases/2026-12-06-h100-bw-kept-copies.txt), ms: slstm 48x16 0.443 -> 0.411, lstm 48x16 0.414 ->
//   0.395 (twice the estimate), slstm 12x64 0.693 -> 0.698, lstm 12x64 0.702 -> 0.694, gru 12x64 0.612 -> 0.606.
template <class K, class T> struct InPieces {
    static constexpr int PER_ROW = K::DB / K::CH;
    static constexpr int PER = (K::PIECES + K::THREADS - 1) / K::THREADS;  // pieces per thread
    static constexpr unsigned ET = sizeof(T);
    static constexpr bool LEAN = K::LEAN_COPIES;
    static constexpr int KEPT = LEAN ? 1 : PER;
    unsigned long long src[PER];  // global address of piece j for the next call
    unsigned dst[PER];            // shared address of piece j in stage 0
    unsigned valid, exists;       // bit j: read piece j (else its 16 bytes are zero-filled) / the thread has one
    unsigned saved;               // (lean) bit j: piece j is a saved row (NSAVED rows of N*D a step)
    unsigned nd;                  // (lean) N*D
    unsigned long long first[KEPT];  // (kept) piece j's address at step 0
    unsigned back[KEPT];             // (kept) bytes src[j] moves back a step (0 where it reads nothing); at most
                                     // NSAVED * N * D * sizeof(T), < 2^32 (constrint/backward.py holds it)
    unsigned valid_first;            // (kept) bit j: read piece j at step 0

    // Piece i: row r of a stage (saved [BT][NSAVED], then the staged previous states, then upstream gradients).
    struct Piece {
        int r, dc, s, b;
        bool is_saved, is_prev, valid;
        size_t col;
    };
    __device__ __forceinline__ static Piece piece(const Args<T>& A, int i, int b0, int n, int d0) {
        Piece p;
        p.r = i / PER_ROW, p.dc = (i % PER_ROW) * K::CH;
        p.is_saved = p.r < K::PREV_ROW0, p.is_prev = !p.is_saved && p.r < K::UP_ROW0;
        const int slot = p.is_saved ? 0 : (p.r - (p.is_prev ? K::PREV_ROW0 : K::UP_ROW0)) / K::BT;
        p.s = p.is_saved ? 0 : nth_bit(p.is_prev ? K::PREV_STAGED : K::UP_STAGED, slot);
        p.b = b0 + (p.is_saved ? p.r / K::NSAVED : p.r % K::BT);
        p.col = size_t(n) * K::D + d0 + p.dc;
        const bool up_present = A.dstates != nullptr && p.s < A.SD;
        p.valid = i < K::PIECES && p.b < A.B && (p.is_saved || p.is_prev || up_present);
        return p;
    }
    // Where a previous-state piece reads at step 0: the initial state, or nothing (null states0: zeros).
    __device__ __forceinline__ static const T* initial(const Args<T>& A, const Piece& p) {
        return A.s0 == nullptr ? nullptr : A.s0 + (size_t(p.s) * A.B + p.b) * (size_t(A.N) * K::D) + p.col;
    }

    __device__ __forceinline__ InPieces(const Args<T>& A, int b0, int n, int d0, unsigned stage0) {
        const size_t ND = size_t(A.N) * K::D, BTND = size_t(A.B) * A.Tn * ND;
        valid = exists = saved = valid_first = 0u;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const int i = threadIdx.x + j * K::THREADS;
            const Piece p = piece(A, i, b0, n, d0);
            const size_t row = size_t(p.b) * A.Tn + A.Tn - 1;  // (b, Tn-1)
            const T* from = p.is_saved ? A.saved + (row * K::NSAVED + p.r % K::NSAVED) * ND + p.col
                            : p.is_prev ? A.states + p.s * BTND + (row - 1) * ND + p.col
                                        : A.dstates + p.s * BTND + row * ND + p.col;
            // Any mapped address where nothing is read (a zero-fill, which stays put), or where step Tn-1 has no
            // previous state.
            src[j] = keep<K::KEEP>(reinterpret_cast<unsigned long long>(
                p.valid && !(p.is_prev && A.Tn == 1) ? from : A.saved));
            dst[j] = keep<K::KEEP>(stage0 + unsigned((p.r * K::ROW + p.dc) * int(ET)));
            valid |= p.valid ? 1u << j : 0u;
            exists |= i < K::PIECES ? 1u << j : 0u;
            saved |= p.is_saved ? 1u << j : 0u;
            if constexpr (!LEAN) {
                const unsigned step = p.valid ? unsigned((p.is_saved ? K::NSAVED : 1) * ND * ET) : 0u;
                const T* at0 = p.is_prev ? initial(A, p) : reinterpret_cast<const T*>(src[j] - (A.Tn - 1ull) * step);
                const bool read0 = p.valid && at0 != nullptr;
                first[j] = keep<K::KEEP>(reinterpret_cast<unsigned long long>(read0 ? at0 : A.saved));
                back[j] = keep<K::KEEP>(step);
                valid_first |= read0 ? 1u << j : 0u;
            }
        }
        valid = keep<K::KEEP>(valid), exists = keep<K::KEEP>(exists);
        if constexpr (LEAN) saved = keep<K::KEEP>(saved), nd = keep<K::KEEP>(unsigned(A.N) * unsigned(K::D));
        else valid_first = keep<K::KEEP>(valid_first);
    }
    // Step t into the stage `stage_off` bytes past stage 0 (t counts down; step 0 is the last call, and its
    // previous states are the initial states, or zeros).
    __device__ __forceinline__ void issue(unsigned stage_off, int t, const Args<T>& A, int b0, int n, int d0) {
        const bool step0 = t == 0;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            if (!((exists >> j) & 1u)) continue;
            if constexpr (!LEAN) {
                const unsigned reads = step0 ? valid_first : valid;
                mma::cp_async_16(dst[j] + stage_off, reinterpret_cast<const void*>(step0 ? first[j] : src[j]),
                                 (reads >> j) & 1u);
                src[j] -= back[j];
                continue;
            }
            bool read = (valid >> j) & 1u;
            unsigned long long from = src[j];
            if (step0) {
                const Piece p = piece(A, threadIdx.x + j * K::THREADS, b0, n, d0);
                if (p.is_prev) {
                    read = read && A.s0 != nullptr;
                    if (read) from = reinterpret_cast<unsigned long long>(initial(A, p));
                }
            }
            mma::cp_async_16(dst[j] + stage_off, reinterpret_cast<const void*>(from), read);
            const unsigned rows = (saved >> j) & 1u ? unsigned(K::NSAVED) : 1u;
            src[j] -= (valid >> j) & 1u ? (unsigned long long)(nd * rows) * ET : 0ull;
        }
    }
};

// dR tiles of one step: A = drs_t^T (the drs buffer holds it as [batch][(gate, i)] rows, hence .trans), B =
// h_{t-1} (the stage's h rows, [batch][j], .trans again); tile `warp + WARPS * j` is (M tile, N tile).
// a_row: this lane's ldmatrix row in the drs buffer, b_row: in the stage's h rows (backward's dr_a_row and
// dr_b_row give both in buffer and stage 0).
template <class K>
__device__ __forceinline__ void accumulate_dr(float (&dr)[K::TPW][4], unsigned a_row, unsigned b_row, int warp) {
    using M = mma::Mma<typename K::Op>;
    constexpr int NT = K::D / 8;
#pragma unroll
    for (int j = 0; j < K::TPW; ++j) {
        const int tile = warp + K::WARPS * j;
        if (K::DR_TILES % K::WARPS != 0 && tile >= K::DR_TILES) break;  // uniform within the warp
        unsigned a[2], b;
        mma::ldmatrix_x2_trans(a, a_row + unsigned(tile / NT * 16 * 2));
        mma::ldmatrix_x1_trans(b, b_row + unsigned(tile % NT * 8 * 2));
        M::run_k8(dr[j], a, b);
    }
}

// One step's staged outputs (dWx[b, t], drs[b, t], the block's dims) as 16-byte pieces of rows, for t = Tn-1,
// Tn-2, ... in turn (rows past B skipped).
template <class K, class T> struct OutPieces : StorePieces<(K::OUT_PIECES + K::THREADS - 1) / K::THREADS, K::KEEP> {
    static constexpr int PER_ROW = K::DB / K::CH;
    static constexpr int PER = (K::OUT_PIECES + K::THREADS - 1) / K::THREADS;

    __device__ __forceinline__ OutPieces(const Args<T>& A, int b0, int n, int d0, unsigned buf0) {
        const size_t ND = size_t(A.N) * K::D;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const int i = threadIdx.x + j * K::THREADS;
            const int r = i / PER_ROW, dc = (i % PER_ROW) * K::CH, bl = r / K::GO, go = r % K::GO;
            const int b = b0 + bl;
            const size_t row = size_t(b) * A.Tn + A.Tn - 1, col = size_t(n) * K::D + d0 + dc;
            const bool live = i < K::OUT_PIECES && b < A.B, dwx = go < K::GW;
            T* dst = !live ? A.dWx : dwx ? A.dWx + (row * K::GW + go) * ND + col
                                         : A.drs + (row * K::GR + go - K::GW) * ND + col;
            const long long back = !live ? 0 : (long long)((dwx ? K::GW : K::GR) * ND * sizeof(T));
            this->set(j, buf0 + unsigned((r * K::ROW + dc) * int(sizeof(T))), dst, -back, live);
        }
    }
};

// This block's sums over its sequences and every step: dR tiles straight from the accumulators; db through
// shared memory (each of the tile's 8 sequences is another lane's cell), summed in a fixed order. The host adds
// the blocks' partial sums in a fixed order too: deterministic, no atomics.
template <class K, class T>
__device__ __forceinline__ void write_partials(const Args<T>& A, const float (&dr)[K::TPW][4],
                                               const float (&dbacc)[K::CELLS][K::GB], float* red_db, int warp,
                                               int lane, int ks, int wm, int n, int d0, bool has_cells = true) {
    const int g = lane / 4, c4 = lane % 4;
    if constexpr (K::FUSED_DR) {
        constexpr int NT = K::D / 8;
#pragma unroll
        for (int j = 0; j < K::TPW; ++j) {
            const int tile = warp + K::WARPS * j;
            if (K::DR_TILES % K::WARPS != 0 && tile >= K::DR_TILES) break;
            const int row = tile / NT * 16 + g, gate = row / K::D, i = row % K::D, col = tile % NT * 8 + 2 * c4;
            float* out = A.dr_part + ((size_t(blockIdx.y) * K::GR + gate) * A.N + n) * K::D * K::D + col;
            *reinterpret_cast<float2*>(out + i * K::D) = make_float2(dr[j][0], dr[j][1]);
            *reinterpret_cast<float2*>(out + (i + 8) * K::D) = make_float2(dr[j][2], dr[j][3]);
        }
    }
    __syncthreads();  // every warp is past its last read of the stages
#pragma unroll
    for (int m = 0; m < K::CELLS; ++m) {
        if (!has_cells) break;
        const int q = ks + K::KS * m, bl = 2 * c4 + q % 2, d = 16 * wm + g + 8 * (q / 2);
#pragma unroll
        for (int gate = 0; gate < K::GB; ++gate) red_db[(bl * K::GB + gate) * K::DB + d] = dbacc[m][gate];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < K::GB * K::DB; i += K::THREADS) {
        float sum = 0.f;
#pragma unroll
        for (int bl = 0; bl < K::BT; ++bl) sum += red_db[bl * K::GB * K::DB + i];
        const int gate = i / K::DB, d = i % K::DB;
        A.db_part[((size_t(blockIdx.y) * K::GB + gate) * A.N + n) * K::D + d0 + d] = sum;
    }
}

// Cell m of a lane (q = ks + KS*m: batch row 2*c4 + q % 2, dim 16*wm + g + 8*(q / 2)) relative to its first
// (m = 0): compile-time row and column offsets (for even KS, q % 2 = ks % 2 whatever m).
template <class K> __device__ __forceinline__ constexpr int cell_row(int m) { return K::KS == 1 ? m % 2 : 0; }
template <class K> __device__ __forceinline__ constexpr int cell_col(int m) {
    return K::KS == 1 ? 8 * (m / 2) : 8 * (K::KS / 2) * m;
}

// A lane's cells, in either kernel: cell m is entry q = ks + KS*m of the m16n8 accumulator of M tile wm of the
// block's dims, i.e. batch row 2*c4 + q % 2 and dim 16*wm + g + 8*(q / 2). It keeps their carried state
// gradients, db sums and lengths, and its first cell's addresses in stage 0, output buffer 0 and drs buffer 0
// (cell m adds cell_row<K>(m) rows and cell_col<K>(m) columns). Rows b >= B run on zeros and write nothing.
template <class K, class Cell, class T> struct CellLanes {
    static constexpr unsigned ET = sizeof(T), E = sizeof(typename K::Op);
    float carry[K::CELLS][K::S];
    float pending[K::SCALED ? K::CELLS : 1][K::GR];  // K::SCALED: this step's drs, until write_scaled
    float dbacc[K::CELLS][K::GB] = {};  // db, summed over the steps
    int length[K::CELLS];
    unsigned live;  // bit m: cell m's batch row is < B
    unsigned in_saved0, in_prev0, drs_out0, staged0;

    // drs_col0: the block's first drs column in a drs row (its dims' offset where a row holds every block's).
    // dlast is the upstream gradient of the last step only: it starts the carry.
    __device__ __forceinline__ CellLanes(const Args<T>& A, const T* stages, const T* obuf, const typename K::Op* buf,
                                         int b0, int n, int d0, int drs_col0, int ks, int wm, int lane) {
        const int g = lane / 4, c4 = lane % 4;
        const size_t ND = size_t(A.N) * K::D;
#pragma unroll
        for (int m = 0; m < K::CELLS; ++m) {
            const int q = ks + K::KS * m, b = b0 + 2 * c4 + q % 2, d = d0 + 16 * wm + g + 8 * (q / 2);
#pragma unroll
            for (int s = 0; s < K::S; ++s)
                carry[m][s] = A.dlast != nullptr && b < A.B
                                  ? load_f(A.dlast + (size_t(s) * A.B + b) * ND + size_t(n) * K::D + d) : 0.f;
            length[m] = b < A.B && A.lengths != nullptr ? A.lengths[b] : A.Tn;
            live = (m == 0 ? 0u : live) | (b < A.B ? 1u << m : 0u);
        }
        // Batch row 2*c4 (+1 for ks odd), dim 16*wm + g (+8 for ks = 2, 3: KS = 4's one cell, q = ks).
        const int row0 = 2 * c4 + (K::KS == 1 ? 0 : ks % 2), col0 = 16 * wm + g + (K::KS == 1 ? 0 : 8 * (ks / 2));
        in_saved0 = keep<K::KEEP>(mma::smem_u32(stages + row0 * K::NSAVED * K::ROW + col0));
        in_prev0 = keep<K::KEEP>(mma::smem_u32(stages + (K::PREV_ROW0 + row0) * K::ROW + col0));
        drs_out0 = keep<K::KEEP>(mma::smem_u32(buf + row0 * K::KROW + drs_col0 + col0));  // (gate 0's column)
        staged0 = keep<K::KEEP>(mma::smem_u32(obuf + row0 * K::GO * K::ROW + col0));
    }

    // Step t of the cells, given dh (the recurrent term of h's gradient): Cell::backward on the stage at
    // `in_off` bytes past stage 0; drs_t into the drs buffer `drs_off` bytes past buffer 0, dWx (and drs) into
    // the output buffer `out_off` bytes past buffer 0.
    __device__ __forceinline__ void step(const float (&dh)[K::CELLS], int t, unsigned in_off, unsigned out_off,
                                         unsigned drs_off) {
#pragma unroll
        for (int m = 0; m < K::CELLS; ++m) {
            const int rm = cell_row<K>(m), cm = cell_col<K>(m);  // this cell's offsets from the lane's first
            float saved[K::NSAVED], prev[K::S], ds[K::S], dx[K::GW], drs[K::GR], db[K::GB], dsp[K::S];
#pragma unroll
            for (int k = 0; k < K::NSAVED; ++k)
                saved[k] = ld_shared_f<T>(in_saved0 + in_off + ET * ((rm * K::NSAVED + k) * K::ROW + cm));
#pragma unroll
            for (int s = 0; s < K::S; ++s) {  // states the cell does not read are not staged (Staging)
                const unsigned at = in_prev0 + in_off + ET * (rm * K::ROW + cm);
                prev[s] = (K::PREV_STAGED >> s) & 1u ? ld_shared_f<T>(at + ET * K::prev_slot(s) * K::BT * K::ROW) : 0.f;
                const unsigned up = ET * (K::UP_ROW0 - K::PREV_ROW0 + K::up_slot(s) * K::BT) * K::ROW;
                ds[s] = carry[m][s] + ((K::UP_STAGED >> s) & 1u ? ld_shared_f<T>(at + up) : 0.f);
            }
            ds[0] += dh[m];
            Cell::backward(ds, prev, saved, dx, drs, db, dsp);
            // Past a sequence's end (t >= its length) the step copied the states: no gate gradient, and the
            // whole state gradient passes to step t-1. Selects, not products: saved there may hold anything.
            const bool running = t < length[m];
            const bool live = (this->live >> m) & 1u;  // padded rows: drs 0, so they add nothing to dh
#pragma unroll
            for (int s = 0; s < K::S; ++s) carry[m][s] = !live ? 0.f : running ? dsp[s] : ds[s];
#pragma unroll
            for (int gate = 0; gate < K::GB; ++gate) dbacc[m][gate] += live && running ? db[gate] : 0.f;
#pragma unroll
            for (int gate = 0; gate < K::GR; ++gate) {
                const float v = live && running ? drs[gate] : 0.f;
                if constexpr (K::SCALED) pending[m][gate] = v;
                else store_drs(m, gate, v, drs_off);
            }
            const unsigned staged = staged0 + out_off + ET * (rm * K::GO * K::ROW + cm);
#pragma unroll
            for (int gate = 0; gate < K::GW; ++gate)
                st_shared_f<T>(staged + ET * gate * K::ROW, running ? dx[gate] : 0.f);
            if constexpr (K::STORE_DRS)
#pragma unroll
                for (int gate = 0; gate < K::GR; ++gate)
                    st_shared_f<T>(staged + ET * (K::GW + gate) * K::ROW, running ? drs[gate] : 0.f);
        }
    }

    // drs of cell m and `gate` into the drs buffer `drs_off` bytes past buffer 0, as mma operands.
    __device__ __forceinline__ void store_drs(int m, int gate, float v, unsigned drs_off) const {
        const int rm = cell_row<K>(m), cm = cell_col<K>(m);
        typename K::Op parts[K::SPLIT];
        split(v, parts);
#pragma unroll
        for (int s = 0; s < K::SPLIT; ++s)
            st_shared_b16(drs_out0 + drs_off + E * ((s * K::BT + rm) * K::KROW + gate * K::GATE_COLS + cm),
                          mma::op_bits(parts[s]));
    }

    // K::SCALED (float32 storage with fp16 operands): the step's drs, held back by `step`, into the drs buffer
    // scaled by a power of two a batch row, so that the row's largest value lands in [2^14, 2^15). fp16's range
    // then holds any gradient: a row's values down to 2^-38 of its largest keep fp16's 11 bits (smaller ones round
    // to subnormals or zero, below what float32 sums of them resolve). A lane's cells are one row (2 c4 + ks); the
    // row's largest is over the block's cells of it, the 8 lanes of its c4 in each of the MB cell warps of its ks:
    // shuffles, then shared memory (`scales`: [MB][BT] floats, then each row's 1/scale [BT]) and a barrier of the
    // cell warps (barrier 1). The product multiplies each column of its partials by the row's 1/scale, exactly
    // (powers of two). max.NaN keeps a NaN a NaN; an inf or NaN row takes the smallest scale and stays so.
    __device__ __forceinline__ void write_scaled(unsigned scales, unsigned drs_off, int ks, int wm, int lane) const {
        float big = 0.f;
#pragma unroll
        for (int m = 0; m < K::CELLS; ++m)
#pragma unroll
            for (int gate = 0; gate < K::GR; ++gate) big = max_nan(big, fabsf(pending[m][gate]));
#pragma unroll
        for (int x = 4; x < 32; x *= 2) big = max_nan(big, __shfl_xor_sync(0xffffffffu, big, x));
        const int row = 2 * (lane % 4) + ks;
        if (lane < 4) st_shared_f<float>(scales + 4u * unsigned(wm * K::BT + row), big);
        asm volatile("bar.sync 1, %0;" ::"n"(K::CELL_WARPS * 32) : "memory");
#pragma unroll
        for (int w = 0; w < K::MB; ++w)
            big = max_nan(big, ld_shared_f<float>(scales + 4u * unsigned(w * K::BT + row)));
        const int e = (__float_as_int(big) >> 23) & 0xff;  // biased exponent: 0 for a row of zeros
        const int shift = e == 0 ? 0 : max(-126, min(126, 141 - e));  // big * 2^shift in [2^14, 2^15)
        const float scale = __int_as_float((127 + shift) << 23);
#pragma unroll
        for (int m = 0; m < K::CELLS; ++m)
#pragma unroll
            for (int gate = 0; gate < K::GR; ++gate) store_drs(m, gate, pending[m][gate] * scale, drs_off);
        if (wm == 0 && lane < 4)
            st_shared_f<float>(scales + 4u * unsigned(K::MB * K::BT + row), __int_as_float((127 - shift) << 23));
    }

    // After step 0: the gradient on the initial states (dh: the recurrent term into h_{-1}).
    __device__ __forceinline__ void store_dinit(const Args<T>& A, const float (&dh)[K::CELLS], int b0, int n,
                                                int d0, int ks, int wm, int lane) const {
        const int g = lane / 4, c4 = lane % 4;
        const size_t ND = size_t(A.N) * K::D;
#pragma unroll
        for (int m = 0; m < K::CELLS; ++m) {
            const int q = ks + K::KS * m, b = b0 + 2 * c4 + q % 2, d = d0 + 16 * wm + g + 8 * (q / 2);
            if (b >= A.B) continue;
#pragma unroll
            for (int s = 0; s < K::S; ++s)
                store_f(A.dinit + (size_t(s) * A.B + b) * ND + size_t(n) * K::D + d,
                        carry[m][s] + (s == 0 ? dh[m] : 0.f));
        }
    }
};

// The cells whose backward step keeps ks pinned in a register (backward says why: measured, sLSTM only).
template <class Cell> constexpr bool pins_backward_ks = false;
template <> constexpr bool pins_backward_ks<SlstmCell> = true;

template <class Cell, class T, int D, int KS, int P, bool STORE_DRS, bool FUSED_DR, int CL, int RS>
__device__ __forceinline__ void backward(const Args<T> A) {
    using K = Tile<Cell, T, D, KS, P, STORE_DRS, FUSED_DR, CL, RS>;
    using Op = typename K::Op;
    extern __shared__ __align__(16) unsigned char smem[];
    Op* buf = reinterpret_cast<Op*>(smem);                               // [2][SPLIT][BT][KROW]
    float* red = reinterpret_cast<float*>(smem + K::BUF_BYTES);          // [KS][WARPS_M][4][32]
    T* stages = reinterpret_cast<T*>(smem + K::BUF_BYTES + K::RED_BYTES);  // [NS][STAGE_ROWS][ROW]
    T* obuf = reinterpret_cast<T*>(smem + K::BUF_BYTES + K::RED_BYTES + K::STAGE_BYTES);  // [2][BT][GO][ROW]
    const unsigned bars = mma::smem_u32(smem + K::BUF_BYTES + K::RED_BYTES + K::STAGE_BYTES + K::OUT_BYTES);
    const unsigned rsm = bars + K::BAR_BYTES;  // R^T's shared-memory k-tiles
    constexpr int E = int(sizeof(Op));

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c4 = lane % 4;
    // sLSTM: ks pinned in a register (keep), as the forward pins it. ptxas otherwise rebuilds ks's term of the
    // drs ldmatrix address from SR_TID each step in slstm 12x64's step loop ((tid >> 2) & ~31: S2R, SHF, LOP3,
    // IADD ahead of the first LDSM, the start of the step's chain), where lstm's keeps it in a register.
    // Estimate before measuring: the S2R's ~20-30 cycles and 3 dependent ops off a ~1650-cycle step, ~2%. The SASS
    // with the pin (step loop, instructions / S2R): slstm 12x64 274 / 2 -> 267 / 2, gru 12x64 169 / 3 -> 162 / 2,
    // lstm 12x64 174 / 0 unchanged, lstm 48x16 184 / 0 -> 208 / 4, slstm 48x16 265 / 3 -> 273 / 4 (ptxas rebuilds
    // other threadIdx terms instead, around the dR tiles). Measured (H200 bf16 B=16 T=1024, backward alone,
    // bench/results/phases/2026-12-02-h200-bulk-sends-pin-ks.txt), ms: slstm 12x64 1.056 -> 1.011, slstm 48x16
    // 0.473 -> 0.451, slstm 12x64 B=64 1.163 -> 1.150; but lstm 48x16 0.422 -> 0.443, and gru 12x64, lstm 12x64,
    // lstm 3x256 +0.2..0.8%: so sLSTM's kernels only. Not at 640 threads (96 registers a thread: slstm D80
    // k_split 4 spilled 4 bytes on sm_80 with the pin). Knob FLASHRNN_PIN_KS=0|1 overrides the cell rule.
#ifdef FLASHRNN_PIN_KS
    constexpr bool PIN_KS_WANTED = FLASHRNN_PIN_KS;
#else
    constexpr bool PIN_KS_WANTED = pins_backward_ks<Cell>;
#endif
    constexpr bool PIN_KS = PIN_KS_WANTED && K::KS > 1 && K::THREADS <= 512;
    const int wm = warp % K::WARPS_M, ks = PIN_KS ? int(keep<K::KEEP>(unsigned(warp / K::WARPS_M))) : warp / K::WARPS_M;
    // A cluster of CL blocks shares a head: block `rank` owns dims [d0, d0 + DB) (its rows of R^T, its cells),
    // reads every block's drs columns (they arrive by st.async each step) and sends its own.
    const unsigned rank = CL > 1 ? cluster::rank() : 0;
    const int n = blockIdx.x / CL, b0 = blockIdx.y * K::BT, d0 = int(rank) * K::DB;
    const size_t ND = size_t(A.N) * D;
    const int last = A.Tn - 1;

    // The inputs of the last P steps start first, so that they land while R^T is read.
    constexpr unsigned ET = sizeof(T), STAGE = K::STAGE_ELEMS * ET, OBUF = K::OUT_ELEMS * ET;  // bytes
    constexpr unsigned DRS_BUF = K::BUF_ELEMS * E;
    InPieces<K, T> incopy(A, b0, n, d0, mma::smem_u32(stages));
#pragma unroll 1
    for (int p = 0; p < P; ++p) {  // step last - p into stage p (step t lives in stage (last - t) % NS)
        if (last - p >= 0) incopy.issue(p * STAGE, last - p, A, b0, n, d0);
        mma::cp_async_commit();
    }
    OutPieces<K, T> outcopy(A, b0, n, d0, mma::smem_u32(obuf));
    if constexpr (CL > 1) exchange_barriers_init(bars, K::RECV_BYTES);

    RtRegs<K> a;
    const unsigned r_lane = keep<K::KEEP>(rsm + unsigned((warp * K::SPLIT * K::RS * 32 + lane) * 16));
    load_rt<K>(a, r_lane, A.R, n, A.N, d0 + 16 * wm, ks, g, c4);
    // drs_T = 0: the last step gets no gradient through R (both buffers: which one it reads depends on T).
    for (int i = threadIdx.x; i < 2 * K::BUF_ELEMS; i += K::THREADS) buf[i] = mma::to_op<Op>(0.f);

    float dr[K::TPW][4] = {};  // this warp's dR tiles (FUSED_DR)
    CellLanes<K, Cell, T> cells(A, stages, obuf, buf, b0, n, d0, d0, ks, wm, lane);
    // ldmatrix x2: lanes 0-15 address rows (batch) l % 8 at k offset 8 * (l / 8) of the k-tile.
    const unsigned row =
        keep<K::KEEP>(mma::smem_u32(buf) + unsigned(((lane % 8) * K::KROW + 8 * ((lane / 8) & 1)) * E));
    // dR tiles (.trans ldmatrix): rows (batch) l % 8 of the drs buffer and of the stage's h rows.
    const unsigned dr_a_row = row;
    const unsigned dr_b_row = keep<K::KEEP>(mma::smem_u32(stages + (K::PREV_ROW0 + lane % 8) * K::ROW));
    // Split-K: this warp's partial sums (entry q at q*32 floats), and entry q = ks of warp 0's (warp w's at
    // w*WARPS_M*4*32 floats further).
    const unsigned red_mine = keep<K::KEEP>(mma::smem_u32(red + ks * K::WARPS_M * 4 * 32 + wm * 4 * 32 + lane));
    const unsigned red_col = keep<K::KEEP>(mma::smem_u32(red + (wm * 4 + ks) * 32 + lane));
    // This block's drs columns (SPLIT*BT rows x GR gates of DB), sent to the cluster's other blocks each step.
    constexpr int DRS_PER_ROW = K::DB * E / 16;
    SliceSender<K::SPLIT * K::BT * K::GR * DRS_PER_ROW, CL, K::THREADS, K::KEEP> drs_send(
        rank, threadIdx.x, [&](int chunk) {
            const int r = chunk / DRS_PER_ROW, gate = r % K::GR, col = (chunk % DRS_PER_ROW) * (16 / E);
            return mma::smem_u32(buf + (r / K::GR) * K::KROW + gate * D + d0 + col);
        });
    mma::cp_async_wait<P - 1>();  // step last's stage (this thread's pieces; the barrier shows everyone's)
    if constexpr (CL > 1) cluster::sync();  // mbarriers initialised and drs zeroed before any block sends
    else __syncthreads();

    int stage = 0;  // (last - t) % NS: the stage of step t
    // Refill the stage of step t+2 (done with before the barrier that closed step t+1) with step t-P, and write
    // out step t+1's staged outputs (staged before that barrier). A cluster issues them before it waits for the
    // other blocks' drs (the forward measured 3-16% a step so, fused_fw.cu Tile::EARLY_COPIES), one block after.
    // (Splitting one block's flush as the forward's Tile::SPLIT_FLUSH does, shared-memory loads with the copies and
    // global stores after the mma's issue, measured slower here: slstm 12x64 backward 1.048 -> 1.082 ms.)
    auto copies = [&](int t) {
        const int refill = stage + P < K::NS ? stage + P : stage + P - K::NS;
        if (t - P >= 0) incopy.issue(refill * STAGE, t - P, A, b0, n, d0);
        mma::cp_async_commit();
        if (t < last) outcopy.flush(((t + 1) & 1) * OBUF);
    };
#ifdef FLASHRNN_LATE_COPIES  // measurement knob: a cluster's copies after the wait, as one block's
    constexpr bool early_copies = false;
#else
    constexpr bool early_copies = CL > 1;
#endif
#pragma unroll 1
    for (int t = last; t >= -1; --t) {
        if constexpr (early_copies) copies(t);
        // drs_{t+1}'s other columns arrive on buffer (t+1)&1's mbarrier: its ((last - t - 1) / 2)-th phase. It is
        // armed again for drs_{t-1}, the next to arrive there, unless step t-1 is the last round (t = 0).
        if constexpr (CL > 1) {
            if (t < last) {
                const unsigned bar = bars + 8 * ((t + 1) & 1);
                cluster::mbarrier_wait(bar, unsigned((last - t - 1) >> 1) & 1u);
                if (threadIdx.x == 0 && t >= 1) cluster::mbarrier_expect(bar, K::RECV_BYTES);
            }
        }
        // Refill the stage of step t+1 (read by the previous step, before its closing barrier) with step t-P,
        // and write out step t+1's staged outputs (staged before that barrier).
        // Step t+1's dR tiles: its drs (buffer (t+1)&1) and h_t rows (its stage, refilled only at step t-1).
        // Issued at the end of the step, off the critical path (measured: at the top of the step they delayed
        // the step's own mma and cost 0.16 ms at 12x64); step 0's in the last round, before it ends.
        const int stage_next = stage == 0 ? K::NS - 1 : stage - 1;
        if constexpr (K::FUSED_DR)
            if (t < 0) accumulate_dr<K>(dr, dr_a_row + ((t + 1) & 1) * DRS_BUF, dr_b_row + stage_next * STAGE, warp);
        if constexpr (!early_copies) copies(t);
        // Reads drs_{t+1} from buffer (t+1)&1, writes drs_t into buffer t&1.
        float acc[4];
        matmul<K>(acc, a, r_lane, row + unsigned(((t + 1) & 1) * K::BUF_ELEMS * E), ks);
        float dh[K::CELLS];
        if constexpr (KS == 1) {
#pragma unroll
            for (int m = 0; m < K::CELLS; ++m) dh[m] = acc[m];
        } else {  // partial sums of the KS warps of this M tile meet in shared memory
#pragma unroll
            for (int q = 0; q < 4; ++q) st_shared_f<float>(red_mine + 4 * 32 * q, acc[q]);
            __syncthreads();
#pragma unroll
            for (int m = 0; m < K::CELLS; ++m) {  // q = ks + KS * m
                float v = 0.f;
#pragma unroll
                for (int w = 0; w < KS; ++w) v += ld_shared_f<float>(red_col + 4 * 32 * (w * K::WARPS_M * 4 + KS * m));
                dh[m] = v;
            }
        }
        if (t < 0) {  // after step 0: the gradient on the initial states
            cells.store_dinit(A, dh, b0, n, d0, ks, wm, lane);
            break;
        }
        cells.step(dh, t, stage * STAGE, (t & 1) * OBUF, (t & 1) * DRS_BUF);
        if constexpr (K::FUSED_DR)
            if (t < last) accumulate_dr<K>(dr, dr_a_row + ((t + 1) & 1) * DRS_BUF, dr_b_row + stage_next * STAGE, warp);
        stage = stage == K::NS - 1 ? 0 : stage + 1;
        mma::cp_async_wait<P - 1>();  // step t-1's stage (issued P steps ago) has landed
        barrier_reporting_progress<!FUSED_DR>(A, t, last);  // a __syncthreads; copies(t) flushed step t+1
        // drs_t's own columns are complete (and step t read drs_{t+1}'s, every block's: a block receives drs_t
        // only after it sent drs_{t+1}, so buffer t&1 is free at every receiver).
        if constexpr (CL > 1) drs_send.send((t & 1) * DRS_BUF, bars + 8 * (t & 1));
    }
    mma::cp_async_wait<0>();  // no copy in flight (the tail groups are empty): the stages are free below
    write_partials<K, T>(A, dr, cells.dbacc, reinterpret_cast<float*>(stages), warp, lane, ks, wm, n, d0);
    if constexpr (CL > 1) exchange_barriers_exit(bars);
}


// ---- Scatter clusters: the backward of heads whose drs exchange does not fit ------------------------------------
// lstm and slstm at D = 768 (16-bit): the drs buffers of `backward` alone take 96 KB a block (every gate's D
// columns, double-buffered), and with R^T's 295 KB a block and ~100 registers a thread besides, no split of R^T
// between registers and shared memory fits 16 SMs. Here block `rank` still owns dims [d0, d0 + DB) (its cells), but
// holds the columns of R^T that ITS cells' drs multiply: every D row of R^T against its GR x DB gate columns (KL
// k-tiles). Each step it multiplies those by its own drs (M = D, K = GR*DB, N = 8): a partial dh over every dim,
// which it sends to the blocks that own them (block j gets M tiles [j*MB, (j+1)*MB), as the mma accumulators
// stand, rounded to bf16: one 8-byte st.async a lane and M tile), and each block sums the CL partials of its dims
// in float32 in a fixed order (deterministic). So:
//   * the drs buffer holds the block's own columns only (GR*DB, 6 KB double-buffered at lstm D = 768), the
//     receive buffers CL x MB x 256 bytes (24 KB double-buffered): 30 KB against 96;
//   * a block receives (CL - 1) x DB x 8 x 2 bytes a step (11.5 KB at lstm D = 768) against (CL - 1) x GR x DB x 8
//     x 2 (46 KB), and sends straight from registers (no shared-memory read, no per-piece addresses);
//   * the KS split of K goes: W warps each hold MPW = D/16/W M tiles of every local k-tile (MPW independent mma
//     chains), and 2*MB of them run the cells afterwards (2 cells a lane; ScatterTile::KS = 2 names that split).
// Estimated BEFORE measuring (lstm 1x768 bf16, 8 warps, 6 of 12 k-tiles in registers, H100): the matmul ~600 mma
// an SM (~1000 cycles with 147 KB of R^T read from shared memory at 128 B a cycle) + the exchange (~23 KB in, at
// the forward's fitted 4 B a cycle an SM... ~5800 cycles; the drs exchange measured ~2x faster than that rate, so
// ~3000) + cells (~600) + two barriers: ~4000-5000 cycles (2.2-2.8 us) a step, ~2.5 ms at T=1024 against the
// `cuda` backward's ~11. (ConstrINT's scatter_estimate, with the forward's exchange rate: 8700 cycles, 4.4 ms.)
// Measured (H200, bench/results/2026-12-01-h200-reference-ecd8ab5.json): forward+backward 5.25 ms against 13.7,
// the forward 2.47, so the backward ~2.8 ms with the dR GEMMs (the sweep, bench/results/constrint/
// 2026-12-01-h200-sweep-backward-lstm1x768.json: 2.80 ms for this configuration, 8 warps with 39 of 72 tiles in
// shared memory; 12 warps with 24-26 of 48: 2.96-3.02). ~2.6 us a step (~4700 cycles at 1.83 GHz): the first
// estimate's range; the exchange is cheaper than the forward's fitted rate says, as for the drs exchange. Not
// profiled: which of the matmul (160 KB of R^T from shared memory a step), the exchange and the cells bounds it.
// Stop 19 (the stages hold only the rows the cells read, InPieces keeps 3 registers a piece, not 7): estimated BEFORE
// measuring, slstm 1x768 (now 38 of 72 tiles a warp in registers, 34 in shared memory, prefetch 3) as lstm's
// backward plus its cells' extra (~+10%: the forward's slstm-lstm difference, 0.5 ms, is that): fwbw ~5.8-5.9 ms
// against the `cuda` backward's 13.4; lstm (40 in registers, 32 in shared memory: 131 KB of R^T read a step
// instead of 160) ~0.1 ms faster if the shared-memory reads bound the step. Measured (H200, bench/results/
// 2026-12-01-h200-reference-b7c6264.json): slstm 5.94 ms (the estimate); lstm 5.33 (5.25 before): no gain, so
// R^T's shared-memory reads do not bound this kernel's step (the solver's prefetch went from 1 to 3 with the
// room, not yet swept: within the sweep's spread). What does (exchange or cells) still wants ncu.
// Stop 42, phase clocks (bench/phase_clocks.py --direction backward; bench/results/phases/2026-12-03-h200-scatter-
// partials.txt), lstm 1x768, cycles a step at ~1.7 GHz, the largest warp: copies 384, mma + sends 2622, barrier
// 265, wait for the partials 237, their sum and the cells 936 (6 cell warps, 2 cells a lane), loop 59: ~4300.
// Ablations: without the exchange (partials kept local) the mma phase is 1968 and the backward 2.60 -> 2.17 ms;
// without the product 383 and 1.42 ms. So the product (~1950 cycles: 576 mma an SM, 131 KB of R^T from shared
// memory) is 45% of the step, the sends ~640 on top of it (11.5 KB leaving at the ~18 bytes a cycle the forward
// measured, behind the ldmatrix and R^T loads), the cells ~900. With float32 partials the sends took twice the
// bytes: bf16 partials (ScatterTile::PIECE) took 2.847 -> 2.594 ms.
// float32 storage (stop 45): R^T's tiles and drs as bf16 hi + lo parts, hi*hi + hi*lo + lo*hi per tile (as `backward`
// and the forward), partials in float32. R^T takes twice the bytes, so float32 lstm/slstm D = 384-512 and gru D = 384,
// which no other stage takes (the drs buffers of `backward` over every gate's columns, hi and lo, took 66-131 KB a
// block), run here; D = 768 (9.4 MB of R^T) fits no 16 SMs. Estimated BEFORE measuring (lstm 1x512, B=16, T=1024,
// against bf16's 1.81 ms for the same head): three mma a tile, twice the shared-memory bytes of R^T and of the
// partials, the accurate activations: ~1.8x, ~3.3 ms with the dR GEMMs, against the `cuda` backward's ~10-15 ms.
// Measured (H200, bench/results/phases/2026-12-03-h200-float32-scatter.txt): 2.98 ms (1.65x bf16), `cuda` 13.69;
// slstm 1x512 3.11, lstm 2x512 3.76 (`cuda` 37.7). 10% under the estimate, not profiled: the estimate scaled the
// whole bf16 step, where stop 42's phase clocks put the product at ~45% of it and the rest (copies, barriers, the
// wait) grows less than the product in float32. Weighed against the cluster kernel with R^T in
// shared memory it also took float32 lstm/slstm 3x256 (3.97 -> 2.96 ms, 3.81 -> 3.02), gru 1x512 (4.58 -> 2.86)
// and elman D = 768 at 12 heads or B = 256 (-30%).
template <class Cell, class T, int D_, int W_, int P_, bool STORE_DRS_, int CL_, int RSK_>
struct ScatterTile : Staging<Cell, T, D_, D_ / CL_, P_, STORE_DRS_, 32 * W_, false> {
    using Base = Staging<Cell, T, D_, D_ / CL_, P_, STORE_DRS_, 32 * W_, false>;
    using typename Base::Op;
    using Base::D, Base::DB, Base::BT, Base::SPLIT, Base::GR, Base::STAGE_BYTES, Base::OUT_BYTES;
    static constexpr int CL = CL_, WARPS = W_;
    static constexpr int MT = D / 16, MPW = MT / WARPS;  // M tiles of every dim; a warp's
    static constexpr int MB = DB / 16;                   // M tiles of one block's dims
    // M tiles of the matmul's first pass (matmul_scatter); the second takes the rest. The second pass's sends are
    // on the step's path (the first's leave during the second's mma), so where it was measured (MPW = 6: lstm and
    // slstm D = 768, 8 warps) the second is the shorter, 4 + 2 instead of 3 + 3: estimated ~1/6 of the ~640 cycles
    // the sends add a step; measured (H200 bf16 B=16 T=1024, backward with its dR GEMMs) lstm 2.550 -> 2.510 ms,
    // slstm 2.635 -> 2.583; 5 + 1 slower (2.629, 2.689: one dependent chain of KL mma). Elsewhere halves (not
    // measured). FLASHRNN_SCATTER_PASS=n (measurement knob) sets it.
#ifdef FLASHRNN_SCATTER_PASS
    static constexpr int PASS = FLASHRNN_SCATTER_PASS < MPW ? FLASHRNN_SCATTER_PASS : MPW;
#else
    static constexpr int PASS = MPW == 6 ? 4 : (MPW + 1) / 2;
#endif
    static constexpr int KL = GR * DB / 16;              // k-tiles: the block's gate columns
    // A warp's MPW x KL tiles of R^T in (k-tile, M tile) order, f = kt * MPW + i: the first KRF in registers, the
    // last RST in shared memory; k-tiles [0, KTR) hold every register tile (the last of them some shared ones too).
    static constexpr int TILES = MPW * KL, RST = RSK_, KRF = TILES - RSK_, KTR = (KRF + MPW - 1) / MPW;
    // The product's order (matmul_scatter_merged): the shared-memory tiles merged into the register ones. Found
    // in the SASS (bench/sass_loop.py): each warp ran its register tiles (the shared-memory port idle), then its
    // shared-memory ones one LDS.128 -> HMMA pair at a time through one register quad (~30 cycles a tile, the
    // tensor cores mostly idle), and all 8 warps did so in step. Estimated before measuring: the first pass's
    // shared-memory loop (20 tiles a warp) overlapped with its 28 register mma, ~150-400 of ~4300 cycles a step.
    // Measured (H100 bf16 B=16 T=1024, the backward with its dR GEMM, bench/phase_clocks.py; bench/results/phases/
    // 2026-12-06-h100-scatter-merged.txt): lstm 1x768 2.308 -> 2.186 ms (mma + sends 2645 -> 2186 cycles on the
    // slowest warp), slstm 2.487 -> 2.254, gru 2.364 -> 2.207. FLASHRNN_SCATTER_MERGED=0 (measurement knob) runs
    // all the register tiles first, as before. (Passes of 3 + 3 M tiles merged: 2.216 ms; a short pass split into
    // 4 chains: 2.259; 5 + 1: 2.314: each slower than 4 + 2.)
#ifdef FLASHRNN_SCATTER_MERGED
    static constexpr bool MERGED = FLASHRNN_SCATTER_MERGED;
#else
    static constexpr bool MERGED = true;
#endif
    // Cells: as Tile with KS = 2, two warps an M tile of the block's dims. At D = 768 that is 6 warps on 4
    // schedulers; spreading the last M tile's cells one a warp over the other 4 warps (3 cells a lane a scheduler,
    // not 2 or 4) measured slower (lstm 1x768 2.185 -> 2.222 ms, slstm 2.246 -> 2.324; phases/2026-12-06-h100-
    // scatter-merged.txt and -spread.patch): the busiest cell warp's phase did not shorten (914 -> 942 cycles).
    static constexpr int KS = 2, WARPS_M = MB, CELLS = 2, CELL_WARPS = 2 * MB;
    // The thread that counts the flushed steps (barrier_reporting_progress) at the first barrier: the last warp's
    // where it runs no cells (its fence then waits while the cells run), else thread 0.
    static constexpr int REPORTER = CELL_WARPS < WARPS ? 32 * (WARPS - 1) : 0;
    static_assert(CELLS == 2, "the partials' sum below picks 2 entries of 4");
    static constexpr int KROW = GR * DB + 8;             // padded drs row: ldmatrix rows in distinct banks
    static constexpr int GATE_COLS = DB;
    // One drs buffer, one output buffer and NS = P + 1 input stages (Staging's `backward` double-buffers the first
    // two and keeps P + 2 stages for its dR tiles): a step's matmul reads drs_{t+1} and its outputs are flushed
    // before the barrier after which its cells write drs_t and the outputs, and a stage is free once its step's
    // cells have run. Shared memory is what limits this kernel (lstm D = 768: 229 of 227 KB... see SMEM_BYTES).
    static constexpr int BUF_ELEMS = SPLIT * BT * KROW, BUF_BYTES = BUF_ELEMS * int(sizeof(Op));  // [SPLIT][BT][KROW]
    static constexpr int STAGES_USED = P_ + 1, STAGE_BYTES_USED = STAGES_USED * Base::STAGE_ELEMS * int(sizeof(T));
    // P = 0 (KernelModel.bw_scatter_one_stage: float32 slstm D = 672 and 768, whose R^T lacks the second stage's 15 KB
    // even with one receive buffer): one stage. Step t-1's inputs are issued once step t's cells have read it (after
    // the step's second barrier) and waited for before step t-1's first barrier, so step t-1's product (~4 us a step at
    // D = 768 in float32, against a DRAM latency of ~1) hides their load; the rows drop their pad too (Staging::ROW:
    // 1.6 KB). problems.ONE_STAGE says what it measured.
    static constexpr bool ONE_STAGE = P_ == 0;
    static constexpr int OUT_BYTES_USED = Base::OUT_ELEMS * int(sizeof(T));
    // A lane's partial of one M tile (its 4 float accumulators) travels as 4 bf16 (two pairs), 8 bytes: half the
    // bytes of floats each block sends and receives a step, and half the receive buffers. Rounding each of the CL
    // partials adds ~2^-9 of a partial to dh's error, the size of drs's own rounding to the mma's bf16 operand; the
    // sum stays in float32 and in rank order (deterministic). Measured (H200 bf16 B=16 T=1024, the backward with
    // its dR GEMMs, bench/phase_clocks.py, float -> bf16 partials): lstm 1x768 2.847 -> 2.594 ms, slstm 2.887 ->
    // 2.695 (bench/results/phases/2026-12-03-h200-scatter-partials.txt; dWx moved by at most 1 bf16 ulp).
    // float32 storage keeps the partials in float32 (16 bytes; SPEC's float32 tolerance, 1e-4, is below bf16's
    // rounding), ordered (0, 2, 1, 3) so that each of the lane's two cell warps reads its two as one 8-byte load.
    // The bf16 pairs are ordered so too ((0, 2) and (1, 3): PAIRS_BY_KS), each cell lane reading one 4-byte word
    // and both its halves, where pairs (0, 1) and (2, 3) had it read 8 bytes and pick a half of each word by ks at
    // run time (two instructions a partial). Estimated before measuring (SASS, sm_90, lstm 1x768: the step loop
    // 692 -> 650 instructions; a cell lane's sum of 16 partials 112 -> 80 issued, 8 -> 4 KB of shared memory
    // read a cell warp): ~30-60 of the ~4300 cycles a step, the backward 1%. Measured (H100, as MERGED, both with
    // the old product order): lstm 1x768 2.372 -> 2.308 ms, slstm 2.459 -> 2.487 (within the run's spread: the
    // next call measured 2.487 for the pairs again); dWx within 1 bf16 ulp. FLASHRNN_SCATTER_PAIRS_01 (measurement
    // knob) sends the pairs (0, 1) and (2, 3), for the A/B.
#ifdef FLASHRNN_SCATTER_PAIRS_01
    static constexpr bool PAIRS_BY_KS = false;
#else
    static constexpr bool PAIRS_BY_KS = true;
#endif
    static constexpr int PIECE = sizeof(T) == 2 ? 8 : 16;  // bytes of one lane's partial of one M tile
    static constexpr bool HALF_READ = PIECE == 16 || PAIRS_BY_KS;  // a cell lane reads its half of a piece
    static constexpr int SLOT_BYTES = MB * 32 * PIECE;   // one block's partial for another: [MB][32 lanes][PIECE]
    // Receive buffers: two, step t's partials in buffer t & 1 (a block sends step t-2's only after it has received step
    // t-1's, the receiver's own among them, which the receiver sends only after it has read step t's). With
    // FLASHRNN_ONE_RECV (KernelModel.bw_scatter_one_recv: float32 lstm D = 672 and 768, whose second buffer of float32
    // partials, 24 KB at D = 768, is what R^T lacks; slstm's with ONE_STAGE too) one: every block arrives at a relaxed
    // cluster barrier once its cell warps have read the partials (the adds consumed the loaded values: the loads are
    // done) and waits on it before it sends the next step's, after its cells, so the wait lands where the slowest
    // block's cells already hold the step. problems.ONE_RECV says what it measured.
#ifdef FLASHRNN_ONE_RECV
    static constexpr bool ONE_RECV = FLASHRNN_ONE_RECV;
#else
    static constexpr bool ONE_RECV = false;
#endif
    static constexpr int RECV_BUFFERS = ONE_RECV ? 1 : 2;
    static constexpr int RECV_BUF_BYTES = CL * SLOT_BYTES, RECV_BYTES_ALL = RECV_BUFFERS * RECV_BUF_BYTES;
    static constexpr int BAR_BYTES = 16;  // an mbarrier a receive buffer (16 bytes either way: R^T's tiles follow)
    // The receive buffer of step t, and the phase of its mbarrier that step t's partials complete.
    __device__ __forceinline__ static constexpr int recv_buffer(int t) { return ONE_RECV ? 0 : t & 1; }
    __device__ __forceinline__ static constexpr unsigned recv_parity(int last, int t) {
        return unsigned(ONE_RECV ? last - t : (last - t) >> 1) & 1u;
    }
    // R^T's shared-memory tiles as A-fragments in lane order, [WARPS][SPLIT][RST][32 lanes][4 registers].
    static constexpr int R_BYTES = WARPS * SPLIT * RST * 512;
    // float32 storage with fp16 operands (FLASHRNN_F32_HALF; R^T saturates to fp16's range, CellLanes::write_scaled
    // scales drs): each batch row's largest drs over a cell warp's cells, [MB][BT], and the row's 1/scale, [BT].
    static constexpr bool SCALED = sizeof(T) == 4 && SPLIT == 1;
    static constexpr bool LEAN_COPIES = true;  // (InPieces: the registers go to R^T's tiles)
    static constexpr int SCALE_BYTES = SCALED ? (MB + 1) * BT * 4 : 0;
    static constexpr int SMEM_BYTES =
        BUF_BYTES + RECV_BYTES_ALL + STAGE_BYTES_USED + OUT_BYTES_USED + BAR_BYTES + R_BYTES + SCALE_BYTES;
    static constexpr unsigned RECV_BYTES = unsigned((CL - 1) * SLOT_BYTES);  // from the other blocks, a step
    static constexpr bool FUSED_DR = false;
    static constexpr int DR_TILES = 0, TPW = 1;
    static_assert(CL > 1 && D % (16 * CL) == 0, "scatter clusters: D a multiple of 16 CL");
    static_assert(MT % WARPS == 0, "the warps share the M tiles evenly");
    static_assert(CELL_WARPS <= WARPS, "two warps an M tile of the block's dims run its cells");
    static_assert(RST >= 0 && RST <= TILES, "R^T tiles in shared memory: some of the warp's");
    static_assert(Base::BT * Base::GB * DB * 4 <= STAGE_BYTES_USED, "db's block reduction reuses the stages");
};

// A-fragment of R^T for (M tile mt, local k-tile kt): row m = 16 mt + g (+8), local column kk = 16 kt + 2 c4 (+1, +8)
// = gate * DB + jj, value R[gate][d0 + jj][m] (float32: its hi and lo parts, as rt_fragment).
template <class K, class T>
__device__ __forceinline__ void rt_scatter_fragment(unsigned (&f)[K::SPLIT][4], const T* __restrict__ R, int n, int N,
                                                    int d0, int mt, int kt, int g, int c4) {
    using Op = typename K::Op;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int m = 16 * mt + g + 8 * (j & 1), kk = 16 * kt + 2 * c4 + 8 * (j >> 1);
        const int gate = kk / K::DB, jj = kk % K::DB;
        const T* p = R + ((size_t(gate) * N + n) * K::D + d0 + jj) * K::D + m;
        Op lo[K::SPLIT], hi[K::SPLIT];
        split(load_f(p), lo);
        split(load_f(p + K::D), hi);
#pragma unroll
        for (int s = 0; s < K::SPLIT; ++s) f[s][j] = mma::pack2(lo[s], hi[s]);
    }
}

template <class K> using ScatterRegs = unsigned[K::KRF > 0 ? K::KRF : 1][K::SPLIT][4];

// Where part s of this lane's shared-memory tile r of R^T lives, past `r_lane` (ScatterTile::R_BYTES's layout).
template <class K> __device__ __forceinline__ constexpr unsigned rt_scatter_offset(int s, int r) {
    return unsigned((s * K::RST + r) * 512);
}

// R^T of this warp's M tiles [mt0, mt0 + MPW): tiles f < KRF into registers, the rest into shared memory at
// `r_lane` (one at a time, as load_rt).
template <class K, class T>
__device__ __forceinline__ void load_rt_scatter(ScatterRegs<K>& a, unsigned r_lane, const T* __restrict__ R, int n,
                                                int N, int d0, int mt0, int g, int c4) {
#pragma unroll
    for (int f = 0; f < K::KRF; ++f) rt_scatter_fragment<K>(a[f], R, n, N, d0, mt0 + f % K::MPW, f / K::MPW, g, c4);
#pragma unroll 1
    for (int f = K::KRF; f < K::TILES; ++f) {
        unsigned v[K::SPLIT][4];
        rt_scatter_fragment<K>(v, R, n, N, d0, mt0 + f % K::MPW, f / K::MPW, g, c4);
        st_rt_fragment<K>(r_lane + rt_scatter_offset<K>(0, f - K::KRF), rt_scatter_offset<K>(1, 0), v);
    }
}

// The pass's NI x KL tiles of R^T in k-tile-major order, tile u = (k-tile u / NI, M tile I0 + u % NI): the
// register ones (f = kt * MPW + I0 + u % NI < KRF) are its first NREG, the shared-memory ones the other NSM.
template <class K, int I0, int NI> struct PassTiles {
    static constexpr int NT = K::KL * NI;
    // Tile u's index f among the warp's tiles (ScatterTile::TILES' order).
    __host__ __device__ static constexpr int warp_tile(int u) { return (u / NI) * K::MPW + I0 + u % NI; }
    __host__ __device__ static constexpr int count_registers() {
        int n = 0;
        for (int u = 0; u < NT; ++u) n += warp_tile(u) < K::KRF;
        return n;
    }
    static constexpr int NREG = count_registers(), NSM = NT - NREG, PAIRS = NREG < NSM ? NREG : NSM;
};

// matmul_scatter with the shared-memory tiles merged into the register ones (ScatterTile::MERGED): tile j of each
// list in turn, the shared-memory tile's load issued ahead of the register tile's mma, then whichever list is
// longer. Each warp then keeps the tensor cores busy while its fragment loads are in flight, instead of running all
// its register tiles (the shared-memory port idle) and then its shared-memory tiles one load-mma pair at a time.
template <class K, int I0, int NI>
__device__ __forceinline__ void matmul_scatter_merged(float (&acc)[NI][4], const ScatterRegs<K>& a, unsigned r_lane,
                                                      unsigned addr) {
    using PT = PassTiles<K, I0, NI>;
    unsigned br[K::SPLIT][2], bs[K::SPLIT][2];  // drs of the register list's k-tile and of the shared list's
    // Tile u's product (from registers, or the fragment `fr` loaded from shared memory), loading drs at its k-tile's
    // first tile.
    const auto reg_tile = [&](int u) {
        const int kt = u / NI, i = u % NI, f = PT::warp_tile(u);
        if (i == 0 || u == 0) drs_fragments<K>(br, addr, kt);
        mma_split<K>(acc[i], a[f < K::KRF ? f : 0], br);
    };
    const auto load_tile = [&](unsigned (&fr)[K::SPLIT][4], int u) {
        const int kt = u / NI, i = u % NI, f = PT::warp_tile(u);
        if (i == 0 || u == PT::NREG) drs_fragments<K>(bs, addr, kt);
        ld_rt_fragment<K>(fr, r_lane + rt_scatter_offset<K>(0, f - K::KRF), rt_scatter_offset<K>(1, 0));
    };
#pragma unroll
    for (int j = 0; j < PT::PAIRS; ++j) {
        unsigned fr[K::SPLIT][4];
        load_tile(fr, PT::NREG + j);
        reg_tile(j);
        mma_split<K>(acc[(PT::NREG + j) % NI], fr, bs);
    }
#pragma unroll
    for (int u = PT::PAIRS; u < PT::NREG; ++u) reg_tile(u);
#pragma unroll
    for (int u = PT::NREG + PT::PAIRS; u < PT::NT; ++u) {
        unsigned fr[K::SPLIT][4];
        load_tile(fr, u);
        mma_split<K>(acc[u % NI], fr, bs);
    }
}

// The warp's partial dh[M tiles mt0 + I0 .. + NI][8] = R^T[those rows, the block's columns] x drs (`addr`: this
// lane's ldmatrix row of the drs buffer): NI independent chains over the KL k-tiles, the shared-memory ones in a
// loop. A warp's MPW M tiles go in passes of NI (K::PASS), so that only NI accumulators are live at once.
template <class K, int I0, int NI>
__device__ __forceinline__ void matmul_scatter(float (&acc)[NI][4], const ScatterRegs<K>& a, unsigned r_lane,
                                               unsigned addr) {
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
#ifdef FLASHRNN_ABLATE_MATMUL  // measurement knob: no product (wrong results), to time the rest of the step
    return;
#endif
    if constexpr (K::MERGED) {
        matmul_scatter_merged<K, I0, NI>(acc, a, r_lane, addr);
        return;
    }
#pragma unroll
    for (int kt = 0; kt < K::KTR; ++kt) {
        unsigned bf[K::SPLIT][2];
        drs_fragments<K>(bf, addr, kt);
#pragma unroll
        for (int i = 0; i < NI; ++i) {
            constexpr int F0 = I0;  // (f of M tile I0 + i at k-tile kt: kt * MPW + I0 + i)
            const int f = kt * K::MPW + F0 + i;
            if (f < K::KRF) {
                mma_split<K>(acc[i], a[f < K::KRF ? f : 0], bf);
            } else {
                unsigned fr[K::SPLIT][4];
                ld_rt_fragment<K>(fr, r_lane + rt_scatter_offset<K>(0, f - K::KRF), rt_scatter_offset<K>(1, 0));
                mma_split<K>(acc[i], fr, bf);
            }
        }
    }
#pragma unroll 1
    for (int kt = K::KTR; kt < K::KL; ++kt) {
        unsigned bf[K::SPLIT][2];
        drs_fragments<K>(bf, addr, kt);
#pragma unroll
        for (int i = 0; i < NI; ++i) {
            unsigned fr[K::SPLIT][4];
            ld_rt_fragment<K>(fr, r_lane + rt_scatter_offset<K>(0, kt * K::MPW + I0 + i - K::KRF),
                              rt_scatter_offset<K>(1, 0));
            mma_split<K>(acc[i], fr, bf);
        }
    }
}

// One pass of the step's partials: M tiles mt0 + I0 .. + NI from drs at `addr`, each to its owner's receive buffer
// at `at` (this lane's place in slot `rank`, M tile 0) counted by its mbarrier `bar` (local addresses).
template <class K, int I0, int NI>
__device__ __forceinline__ void scatter_pass(const ScatterRegs<K>& a, unsigned r_lane, unsigned addr, int mt0,
                                             unsigned rank, unsigned at, unsigned bar, float2 unscale) {
    float acc[NI][4];
    matmul_scatter<K, I0, NI>(acc, a, r_lane, addr);
#pragma unroll
    for (int i = 0; i < NI; ++i) {
        if constexpr (K::SCALED) {  // columns 2 c4 (entries 0, 2) and 2 c4 + 1 (1, 3): drs's rows' 1/scale
            acc[i][0] *= unscale.x, acc[i][2] *= unscale.x, acc[i][1] *= unscale.y, acc[i][3] *= unscale.y;
        }
        const int mt = mt0 + I0 + i;
        const unsigned to = unsigned(mt / K::MB), local = at + unsigned(mt % K::MB * 32 * K::PIECE);
#ifdef FLASHRNN_ABLATE_EXCHANGE  // measurement knob: every partial stays in this block (wrong results)
        const bool own = true;
#else
        const bool own = to == rank;  // this block's own: the barrier after the passes shows it
#endif
        if constexpr (K::PIECE == 8) {  // (ScatterTile::PIECE)
            const auto bf = [](float x) { return mma::to_op<__nv_bfloat16>(x); };
            constexpr int X1 = K::PAIRS_BY_KS ? 2 : 1, Y0 = 3 - X1;  // x: entries (0, X1), y: (Y0, 3)
            const uint2 v =
                make_uint2(mma::pack2(bf(acc[i][0]), bf(acc[i][X1])), mma::pack2(bf(acc[i][Y0]), bf(acc[i][3])));
            if (own) st_shared_v2(local, v);
            else cluster::st_async_8(cluster::map(local, to), v, cluster::map(bar, to));
        } else {
            const auto u = [](float x) { return __float_as_uint(x); };
            const uint4 v = make_uint4(u(acc[i][0]), u(acc[i][2]), u(acc[i][1]), u(acc[i][3]));
            if (own) st_shared_v4(local, v);
            else cluster::st_async_16(cluster::map(local, to), v, cluster::map(bar, to));
        }
    }
}

template <class Cell, class T, int D, int W, int P, bool STORE_DRS, int CL, int RSK>
__device__ __forceinline__ void backward_scatter(const Args<T> A) {
    using K = ScatterTile<Cell, T, D, W, P, STORE_DRS, CL, RSK>;
    using Op = typename K::Op;
    extern __shared__ __align__(16) unsigned char smem[];
    float* recv = reinterpret_cast<float*>(smem);                          // [2][CL][MB][32 lanes][PIECE bytes]
    Op* buf = reinterpret_cast<Op*>(smem + K::RECV_BYTES_ALL);             // [BT][KROW]: the block's drs
    T* stages = reinterpret_cast<T*>(smem + K::RECV_BYTES_ALL + K::BUF_BYTES);  // [NS][STAGE_ROWS][ROW]
    T* obuf = reinterpret_cast<T*>(smem + K::RECV_BYTES_ALL + K::BUF_BYTES + K::STAGE_BYTES_USED);  // [BT][GO][ROW]
    const unsigned bars =
        mma::smem_u32(smem + K::RECV_BYTES_ALL + K::BUF_BYTES + K::STAGE_BYTES_USED + K::OUT_BYTES_USED);
    const unsigned rsm = bars + K::BAR_BYTES;  // R^T's shared-memory k-tiles
    const unsigned scales = rsm + K::R_BYTES;  // (K::SCALED: the drs rows' largest values and 1/scale)
    constexpr int E = int(sizeof(Op));

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c4 = lane % 4;
    const int mt0 = warp * K::MPW;                       // this warp's M tiles (of every dim) in the matmul
    const bool cell_warp = warp < K::CELL_WARPS;
    const int wm = warp % K::MB, ks = warp / K::MB % 2;  // a cell warp's M tile of the block's dims, its half
    const unsigned rank = cluster::rank();
    const int n = blockIdx.x / CL, b0 = blockIdx.y * K::BT, d0 = int(rank) * K::DB;
    const int last = A.Tn - 1;

    constexpr unsigned ET = sizeof(T), STAGE = K::STAGE_ELEMS * ET;  // bytes
    constexpr unsigned RECV_BUF = K::RECV_BUF_BYTES;
    InPieces<K, T> incopy(A, b0, n, d0, mma::smem_u32(stages));
    constexpr int IN_FLIGHT = K::ONE_STAGE ? 1 : P;  // steps of inputs issued ahead of the loop
#pragma unroll 1
    for (int p = 0; p < IN_FLIGHT; ++p) {  // step last - p into stage p (step t lives in stage (last - t) % (P + 1))
        if (last - p >= 0) incopy.issue(p * STAGE, last - p, A, b0, n, d0);
        mma::cp_async_commit();
    }
    OutPieces<K, T> outcopy(A, b0, n, d0, mma::smem_u32(obuf));
    exchange_barriers_init(bars, K::RECV_BYTES, K::RECV_BUFFERS);

    ScatterRegs<K> a;
    const unsigned r_lane = keep<true>(rsm + unsigned((warp * K::SPLIT * K::RST * 32 + lane) * 16));
    load_rt_scatter<K>(a, r_lane, A.R, n, A.N, d0, mt0, g, c4);
    // drs_T = 0: the last step gets no gradient through R.
    for (int i = threadIdx.x; i < K::BUF_ELEMS; i += K::THREADS) buf[i] = mma::to_op<Op>(0.f);
    if constexpr (K::SCALED)  // (1/scale of drs_T's rows: the product multiplies its zeros by them)
        if (threadIdx.x < K::BT) st_shared_f<float>(scales + 4u * unsigned(K::MB * K::BT + threadIdx.x), 1.f);

    CellLanes<K, Cell, T> cells(A, stages, obuf, buf, b0, n, d0, 0, ks, wm, lane);
    // ldmatrix x2: lanes 0-15 address rows (batch) l % 8 at k offset 8 * (l / 8) of the k-tile.
    const unsigned row =
        keep<true>(mma::smem_u32(buf) + unsigned(((lane % 8) * K::KROW + 8 * ((lane / 8) & 1)) * E));
    // Where this lane's partials go: slot `rank` of the receiving block, M tile mt % MB, this lane's PIECE bytes; and
    // where its cells' come from: slot 0 of its own M tile wm, this warp's half of the piece (entries ks, ks + 2).
    const unsigned sent0 =
        keep<true>(mma::smem_u32(recv) + unsigned(int(rank) * K::SLOT_BYTES + lane * K::PIECE));
    const unsigned summed0 = keep<true>(
        mma::smem_u32(recv) + unsigned((wm * 32 + lane) * K::PIECE + (K::HALF_READ ? K::PIECE / 2 * ks : 0)));
    mma::cp_async_wait<IN_FLIGHT - 1>();  // step last's stage (this thread's pieces; the barrier shows everyone's)
    cluster::sync();                      // mbarriers initialised and drs zeroed before any block sends

    int stage = 0;  // (last - t) % NS: the stage of step t
    // Refill the stage of step t+1 (its cells ran before the last barrier) with step t-P, and write out step t+1's
    // staged outputs (before the first barrier, after which the cells of step t write the output buffer again).
    // They go after the partials' sends, where the cell warps would otherwise wait for the other blocks' partials,
    // not ahead of the product on the step's path. Estimated before measuring (phase clocks, lstm 1x768: copies
    // 323-384 cycles a step ahead of the product, the wait for the partials 150-240): ~150-240 of ~4300 cycles a
    // step, 4-5%. Measured (H200 bf16 B=16 T=1024, backward with its dR GEMMs, bench/results/phases/2026-12-03-
    // h200-scatter-partials.txt): lstm 1x768 2.600 -> 2.550 ms, slstm 2.702 -> 2.635 (2-2.5%), half the estimate:
    // the phase clocks put the copies' issue at 317 cycles (was 362) and leave the wait as it was (141, was 140),
    // so the copies did not fill the wait; what the step gained is their issue, shorter off the product's path.
    // FLASHRNN_SCATTER_COPIES_FIRST=1 (measurement knob) puts them back at the top of the step.
#ifdef FLASHRNN_SCATTER_COPIES_FIRST
    constexpr bool copies_first = FLASHRNN_SCATTER_COPIES_FIRST;
#else
    constexpr bool copies_first = false;
#endif
    auto copies = [&](int t) {
        if constexpr (!K::ONE_STAGE) {  // (ONE_STAGE: the one stage is step t's until its cells have run)
            const int refill = stage == 0 ? P : stage - 1;  // the stage of step t+1 (NS = P + 1)
            if (t - P >= 0) incopy.issue(refill * STAGE, t - P, A, b0, n, d0);
            mma::cp_async_commit();
        }
        if (t < last) outcopy.flush(0);
    };
    PHASE_CLOCKS_DECLARE
#pragma unroll 1
    for (int t = last; t >= -1; --t) {
        PHASE(7, 0.f)  // (the loop's own overhead, from the end of the last step)
        if constexpr (copies_first) copies(t);
        PHASE(0, 0.f)  // the copies' issue (FLASHRNN_SCATTER_COPIES_FIRST)
        if constexpr (K::ONE_RECV)
            if (t < last) cluster::wait();  // every block has read step t+1's partials out of the one buffer
        // Partial dh_t over this warp's M tiles from drs_{t+1}, sent to their owners' receive
        // buffer recv_buffer(t) (this block's own by a plain store: the barrier below shows it).
        {
            const unsigned addr = row, at = sent0 + K::recv_buffer(t) * RECV_BUF;
            const unsigned bar = bars + 8 * K::recv_buffer(t);
            float2 unscale = make_float2(1.f, 1.f);
            if constexpr (K::SCALED)
                ld_shared_f2<float>(scales + 4u * unsigned(K::MB * K::BT + 2 * c4), unscale.x, unscale.y);
            scatter_pass<K, 0, K::PASS>(a, r_lane, addr, mt0, rank, at, bar, unscale);
            if constexpr (K::MPW > K::PASS)
                scatter_pass<K, K::PASS, K::MPW - K::PASS>(a, r_lane, addr, mt0, rank, at, bar, unscale);
        }
        PHASE(1, 0.f)  // the product and the partials' sends (issued)
        if constexpr (!copies_first) copies(t);
        PHASE(0, 0.f)  // the copies' issue
        if constexpr (K::ONE_STAGE) mma::cp_async_wait<0>();  // step t's inputs, issued at the end of step t+1
        // This block's own partials are in place; drs_{t+1} and the outputs of t+1 are read (and their flush
        // counted, barrier_reporting_progress, by a warp that runs no cells: its fence waits out their stores).
        barrier_reporting_progress<true, K::REPORTER>(A, t, last);
        PHASE(2, 0.f)  // the first barrier
        float dh[K::CELLS];
        if (cell_warp) {
            // The other blocks' partials of dh_t arrive on receive buffer t&1's mbarrier: its ((last - t) / 2)-th
            // phase. Thread 0 arms it again for step t-2 (unless that is past the last round, t = -1): no block
            // sends step t-2's partials before it has received step t-1's, this block's among them, which this
            // block sends only after this. (ONE_RECV: the one buffer's (last - t)-th phase, armed again for step
            // t-1, which no block sends before this block has arrived at the cluster barrier below.)
#ifndef FLASHRNN_ABLATE_EXCHANGE
            const unsigned bar = bars + 8 * K::recv_buffer(t);
            cluster::mbarrier_wait(bar, K::recv_parity(last, t));
            if (threadIdx.x == 0 && t >= (K::ONE_RECV ? 0 : 1)) cluster::mbarrier_expect(bar, K::RECV_BYTES);
#endif
            PHASE(3, 0.f)  // the wait for the other blocks' partials
            const unsigned from = summed0 + K::recv_buffer(t) * RECV_BUF;
#pragma unroll
            for (int m = 0; m < K::CELLS; ++m) dh[m] = 0.f;
#pragma unroll
            for (int src = 0; src < CL; ++src) {  // in rank order: the same sum on every run
                // entries q = ks + KS*m of the accumulator, ks and ks + 2: this lane's half of the piece
                const unsigned at = from + unsigned(src * K::SLOT_BYTES);
                if constexpr (K::PIECE == 16) {  // (as float)
                    const uint2 v = ld_shared_v2(at);
                    dh[0] += __uint_as_float(v.x);
                    dh[1] += __uint_as_float(v.y);
                } else if constexpr (K::PAIRS_BY_KS) {  // (a bf16 pair: ks in the low half, ks + 2 in the high one)
                    const unsigned v = ld_shared_b32(at);
                    dh[0] += __uint_as_float(v << 16);
                    dh[1] += __uint_as_float(v & 0xffff0000u);
                } else {  // (pairs (0, 1) and (2, 3): the low halves for ks = 0, the high ones for ks = 1)
                    const uint2 v = ld_shared_v2(at);
                    dh[0] += __uint_as_float(ks == 0 ? v.x << 16 : v.x & 0xffff0000u);
                    dh[1] += __uint_as_float(ks == 0 ? v.y << 16 : v.y & 0xffff0000u);
                }
            }
            if constexpr (K::ONE_RECV) cluster::arrive_relaxed();  // (this warp's reads of the buffer are done)
            if (t < 0) {
                cells.store_dinit(A, dh, b0, n, d0, ks, wm, lane);
            } else {
                cells.step(dh, t, stage * STAGE, 0, 0);
                if constexpr (K::SCALED) cells.write_scaled(scales, 0, ks, wm, lane);
            }
            PHASE(4, dh[0])  // the partials' sum and the cells
        } else if constexpr (K::ONE_RECV) {
            cluster::arrive_relaxed();  // (the other warps read no partials)
        }
        if (t < 0) break;
        if constexpr (K::ONE_STAGE) {
            __syncthreads();  // drs_t complete for step t-1's matmul; the receive buffer t&1 and the stage read
            if (t > 0) incopy.issue(0, t - 1, A, b0, n, d0);
            mma::cp_async_commit();
        } else {
            stage = stage == P ? 0 : stage + 1;
            mma::cp_async_wait<P - 1>();  // step t-1's stage (issued P steps ago) has landed
            __syncthreads();              // drs_t complete for step t-1's matmul; the receive buffer t&1 read
        }
        PHASE(5, 0.f)  // the second barrier (and the stage's wait)
    }
    mma::cp_async_wait<0>();  // no copy in flight (the tail groups are empty): the stages are free below
    if constexpr (K::ONE_RECV) cluster::wait();  // (the last round's arrival: barrier.cluster alternates the two)
#ifdef FLASHRNN_PHASE_CLOCKS
    PHASE_CLOCKS_WRITE(reinterpret_cast<unsigned long long*>(A.dWx + size_t(A.B) * A.Tn * K::GW * A.N * D) -
                       size_t(gridDim.x) * gridDim.y * 32 * 8)
#endif
    const float no_dr[1][4] = {};
    write_partials<K, T>(A, no_dr, cells.dbacc, reinterpret_cast<float*>(stages), warp, lane, ks, wm, n, d0,
                         cell_warp);
    exchange_barriers_exit(bars, 1, K::RECV_BUFFERS);
}

}  // namespace fused_bw
}  // namespace flashrnn

// ---- The entry: one variant per set of -D defines -----------------------------------------------------------
//   FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_FAST_ACTIVATIONS, FLASHRNN_D: as the forward (fused_fw.cu).
//   FLASHRNN_KSPLIT: warps splitting K for the same 16 rows (1, 2 or 4; Tile).
//   FLASHRNN_PREFETCH: steps of inputs in flight (cp.async stages ahead; Tile::P; 0: the scatter kernel's one
//     stage, ScatterTile::ONE_STAGE).
//   FLASHRNN_STORE_DRS: 1 where the cell's drs differs from its dx (gru) and dR is a GEMM after the kernel: the
//   kernel writes drs too. FLASHRNN_FUSED_DR: 1 where the kernel sums dR itself (16-bit storage, one block a head).
//   FLASHRNN_CLUSTER: blocks a head (a thread-block cluster when > 1, sm_90). FLASHRNN_R_SMEM: of a warp's k-tiles
//   of R^T, how many live in shared memory (the last ones; 0: none).
//   FLASHRNN_SCATTER: 1 for the scatter-cluster kernel (backward_scatter: FLASHRNN_WARPS warps, FLASHRNN_R_SMEM of
//   its KL k-tiles in shared memory; FLASHRNN_KSPLIT and FLASHRNN_FUSED_DR unused; FLASHRNN_ONE_RECV: 1 for one
//   receive buffer of partials, ScatterTile::ONE_RECV).
// Launch: grid (N * CLUSTER, ceil(B / 8)), cluster (CLUSTER, 1, 1), block Tile::THREADS (= 2 D KSPLIT / CLUSTER),
// dynamic shared memory Tile::SMEM_BYTES.
// lengths ([B] int32, or null: all T): steps t >= lengths[b] pass the state gradient through (no gate gradient).
// Outputs: dWx [B,T,Gw,N,D], drs [B,T,Gr,N,D] (written where FLASHRNN_STORE_DRS), dinit [S,B,1,N,D], all in the
// storage type, every element of rows b < B written; float32 partial sums over each batch tile (blockIdx.y) of
// dR [tiles,Gr,N,D,D] (where Tile::FUSED_DR, else null) and db [tiles,Gb,N,D].
// dstates ([SD,B,T,N,D]), dlast ([S,B,1,N,D]) and states0 may be null. progress: null, or floor(T / C) + 1 zeroed
// uint32 for counts every C = chunk_mask + 1 steps (a power of two; chunk_phase = (T - 1) & chunk_mask):
// progress[k], 0 < k < T / C, raised by 1 by each block that has written steps [T - k C, T)
// (barrier_reporting_progress).
#ifndef FLASHRNN_PREFETCH
#define FLASHRNN_PREFETCH 2
#endif
#ifndef FLASHRNN_STORE_DRS
#define FLASHRNN_STORE_DRS 0
#endif
#ifndef FLASHRNN_FUSED_DR
#define FLASHRNN_FUSED_DR 0
#endif

#ifndef FLASHRNN_SCATTER
#define FLASHRNN_SCATTER 0
#endif
#ifndef FLASHRNN_WARPS
#define FLASHRNN_WARPS 8
#endif

#if FLASHRNN_SCATTER
using FlashrnnFusedBwTile = flashrnn::fused_bw::ScatterTile<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D, FLASHRNN_WARPS,
                                                            FLASHRNN_PREFETCH, FLASHRNN_STORE_DRS != 0,
                                                            FLASHRNN_CLUSTER, FLASHRNN_R_SMEM>;
#else
using FlashrnnFusedBwTile = flashrnn::fused_bw::Tile<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D, FLASHRNN_KSPLIT,
                                                     FLASHRNN_PREFETCH, FLASHRNN_STORE_DRS != 0,
                                                     FLASHRNN_FUSED_DR != 0, FLASHRNN_CLUSTER, FLASHRNN_R_SMEM>;
#endif
template struct flashrnn::LaunchGeometryAgrees<FlashrnnFusedBwTile, FLASHRNN_SMEM_BYTES, FLASHRNN_THREADS>;

extern "C" __global__ void __launch_bounds__(FlashrnnFusedBwTile::THREADS, 1)
flashrnn_fused_bw(const FLASHRNN_STORAGE* __restrict__ R, const FLASHRNN_STORAGE* __restrict__ states0,
                  const FLASHRNN_STORAGE* __restrict__ states, const FLASHRNN_STORAGE* __restrict__ saved,
                  const FLASHRNN_STORAGE* __restrict__ dstates, const FLASHRNN_STORAGE* __restrict__ dlast,
                  FLASHRNN_STORAGE* __restrict__ dWx, FLASHRNN_STORAGE* __restrict__ drs,
                  FLASHRNN_STORAGE* __restrict__ dinit, float* __restrict__ dr_part, float* __restrict__ db_part,
                  int B, int T, int N, int SD, const int* __restrict__ lengths, unsigned* progress,
                  int chunk_mask, int chunk_phase) {
    flashrnn::fused_bw::Args<FLASHRNN_STORAGE> args{R, states0, states, saved, dstates, dlast, dWx, drs, dinit,
                                                    dr_part, db_part, lengths, progress, B, T, N, SD, chunk_mask,
                                                    chunk_phase};
#if FLASHRNN_SCATTER
    flashrnn::fused_bw::backward_scatter<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D, FLASHRNN_WARPS,
                                         FLASHRNN_PREFETCH, FLASHRNN_STORE_DRS != 0, FLASHRNN_CLUSTER,
                                         FLASHRNN_R_SMEM>(args);
#else
    flashrnn::fused_bw::backward<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D, FLASHRNN_KSPLIT, FLASHRNN_PREFETCH,
                                 FLASHRNN_STORE_DRS != 0, FLASHRNN_FUSED_DR != 0, FLASHRNN_CLUSTER,
                                 FLASHRNN_R_SMEM>(args);
#endif
}
