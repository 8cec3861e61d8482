// cuda_fused backward: one persistent reverse-time kernel per (head, tile of 8 sequences); blocks never talk to
// each other, a time step costs two __syncthreads (one with KS = 1). Heads that need a cluster in the forward are not handled
// here (backends/fused.py delegates them to the `cuda` backend's backward).
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
// hi*hi + hi*lo + lo*hi.
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
// ---- Redesign (KS warps per 16-row M tile, fused.py bw_ksplit; estimated BEFORE measuring) -------------------
//   KS = 4 at D = 64: 16 warps, each multiplies a quarter of the k-tiles (4 mma, independent), the partial sums
//   meet in shared memory (one more barrier a step), and each lane runs ONE cell (its loads, math, stores);
//   the (b, t) index moves by one subtraction a step instead of being rebuilt for every load.
//   Per warp and step ~150 instructions; 16 warps on 4 schedulers: ~600 issue cycles, critical path
//   ldmatrix + 4 mma (~70) + red store/barrier/load (~80) + pointwise chain (~150) + drs store + barrier (~60)
//   ~ 400 cycles, so ~600-800 cycles = 0.3-0.4 us a step -> ~0.4 ms at T=1024 (from 3.4 ms), fwbw ~1.2 ms.
#include "common/mma.cuh"
#include "common/types.cuh"
#include "cells/cells.cuh"

namespace flashrnn {
namespace fused_bw {

template <class T> struct OperandOf;
template <> struct OperandOf<__nv_bfloat16> { using Op = __nv_bfloat16; static constexpr int SPLIT = 1; };
template <> struct OperandOf<__half> { using Op = __half; static constexpr int SPLIT = 1; };
template <> struct OperandOf<float> { using Op = __nv_bfloat16; static constexpr int SPLIT = 2; };

template <class Op, int SPLIT> __device__ __forceinline__ void split(float v, Op (&out)[SPLIT]) {
    out[0] = mma::to_op<Op>(v);
    if constexpr (SPLIT == 2) out[1] = mma::to_op<Op>(v - mma::op_to_float(out[0]));
}

// Compile-time geometry. backends/fused.py (bw_geometry) mirrors THREADS and SMEM_BYTES.
// KS warps share one 16-row M tile, each taking every KS-th k-tile: the partial sums meet in shared memory
// (`red`), and the four cells a lane's accumulator covers are dealt out among those KS warps (warp ks owns the
// cells q = ks, ks + KS, ...). So each warp runs 4/KS cells' loads, pointwise math and stores: issue #6
// measured KS = 1 (4 warps at D = 64, one warp a scheduler) at ~6800 cycles a step, every instruction of the
// 4 cells serialised on its latency.
template <class Cell, class T, int D_, int KS_> struct Tile {
    using Op = typename OperandOf<T>::Op;
    static constexpr int SPLIT = OperandOf<T>::SPLIT;
    static constexpr int D = D_, BT = 8, KS = KS_;
    static constexpr int GW = Cell::GW, GR = Cell::GR, GB = Cell::GB, S = Cell::S, NSAVED = Cell::NSAVED;
    static constexpr int WARPS_M = D / 16, WARPS = WARPS_M * KS, THREADS = 32 * WARPS;
    static constexpr int KT = GR * D / 16;                   // k-tiles: every gate's rows
    static constexpr int KT_W = (KT + KS - 1) / KS;          // k-tiles a warp holds (the last may hold fewer)
    static constexpr int CHAINS = KT_W < 4 ? KT_W : 4;       // independent partial sums of the mma chain
    static constexpr int CELLS = 4 / KS;                     // cells a lane runs
    static constexpr int KROW = GR * D + 8;                  // padded row: ldmatrix rows in distinct banks
    static constexpr int BUF_ELEMS = SPLIT * BT * KROW;      // one drs buffer
    static constexpr int RED_FLOATS = KS > 1 ? KS * WARPS_M * 4 * 32 : 0;  // [ks][warp_m][cell q][lane]
    static constexpr int SMEM_BYTES = 2 * BUF_ELEMS * int(sizeof(Op)) + RED_FLOATS * 4;
    static_assert(D % 16 == 0, "D must be a multiple of 16");
    static_assert(KS == 1 || KS == 2 || KS == 4, "the 4 cells of a lane split evenly over KS warps");
    static_assert(THREADS <= 1024, "one block per (head, batch tile)");
};

// A-fragments of R^T for this warp's k-tiles kt = ks + KS*j: row k = k0 + g (+8), column kk = 16*kt + 2*c4
// (+1, +8) = gate*D + j, value R[gate][j][k]. k-tiles past KT (the last warp's tail) are never multiplied.
template <class K, class T>
__device__ __forceinline__ void load_rt(unsigned (&a)[K::SPLIT][K::KT_W][4], const T* __restrict__ R, int n, int N,
                                        int k0, int ks, int g, int c4) {
    using Op = typename K::Op;
#pragma unroll
    for (int jt = 0; jt < K::KT_W; ++jt) {
        const int kt = ks + K::KS * jt;
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
            for (int s = 0; s < K::SPLIT; ++s) a[s][jt][j] = mma::pack2(lo[s], hi[s]);
        }
    }
}

// This warp's share of dh[16 dims][8 batch rows] = R^T drs from one drs buffer (`addr`: this lane's ldmatrix
// row): the sum over its k-tiles only.
template <class K>
__device__ __forceinline__ void matmul(float (&acc)[4], const unsigned (&a)[K::SPLIT][K::KT_W][4], unsigned addr,
                                       int ks) {
    using M = mma::Mma<typename K::Op>;
    constexpr int E = int(sizeof(typename K::Op));
    float part[K::CHAINS][4];
#pragma unroll
    for (int c = 0; c < K::CHAINS; ++c)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[c][i] = 0.f;
#pragma unroll
    for (int jt = 0; jt < K::KT_W; ++jt) {
        const int kt = ks + K::KS * jt;
        if (K::KT % K::KS != 0 && kt >= K::KT) break;  // the tail warp's last slot (uniform within the warp)
        unsigned bf[K::SPLIT][2];
#pragma unroll
        for (int s = 0; s < K::SPLIT; ++s)
            mma::ldmatrix_x2(bf[s], addr + unsigned((s * K::BT * K::KROW + 16 * kt) * E));
        float (&p)[4] = part[jt % K::CHAINS];
        M::run(p, a[0][jt], bf[0][0], bf[0][1]);
        if constexpr (K::SPLIT == 2) {
            M::run(p, a[0][jt], bf[1][0], bf[1][1]);
            M::run(p, a[1][jt], bf[0][0], bf[0][1]);
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

// One cell's inputs of one step: saved pre-activations, previous states, upstream gradient on the states.
template <class K> struct In {
    float saved[K::NSAVED], prev[K::S], up[K::S];
};

// Pointers and sizes the per-cell loads need (all [.., B, T, .., N, D] tensors of the contract).
template <class T> struct Args {
    const T *R, *s0, *states, *saved, *dstates, *dlast;
    T *dWx, *drs, *dinit;
    const int* lengths;  // [B] or null (every sequence has length Tn)
    int B, Tn, N, SD;  // SD: state rows of dstates (1: h only, S: all)
};

// Inputs of a cell at step t. `row` = ((b * Tn + t) * N + n) * D + d, the element offset of (b, t, n, d) in a
// tensor with one row per (b, t); gate tensors ([b, t, gate, n, d]) scale its (b, t) part by their gate count.
// Missing tensors count as zeros.
template <class K, class T>
__device__ __forceinline__ void load_in(In<K>& in, const Args<T>& A, size_t bt_nd, size_t col, int b, int t) {
    const size_t ND = size_t(A.N) * K::D, BTND = size_t(A.B) * A.Tn * ND;
#pragma unroll
    for (int k = 0; k < K::NSAVED; ++k) in.saved[k] = load_f(A.saved + bt_nd * K::NSAVED + k * ND + col);
#pragma unroll
    for (int s = 0; s < K::S; ++s) {
        float p = 0.f;
        if (t > 0) p = load_f(A.states + s * BTND + bt_nd - ND + col);
        else if (A.s0 != nullptr) p = load_f(A.s0 + (size_t(s) * A.B + b) * ND + col);
        in.prev[s] = p;
        float u = 0.f;
        if (A.dstates != nullptr && s < A.SD) u = load_f(A.dstates + s * BTND + bt_nd + col);
        if (A.dlast != nullptr && t == A.Tn - 1) u += load_f(A.dlast + (size_t(s) * A.B + b) * ND + col);
        in.up[s] = u;
    }
}

template <class Cell, class T, int D, int KS>
__device__ __forceinline__ void backward(const Args<T> A) {
    using K = Tile<Cell, T, D, KS>;
    using Op = typename K::Op;
    extern __shared__ __align__(16) unsigned char smem[];
    Op* buf = reinterpret_cast<Op*>(smem);  // [2][SPLIT][BT][KROW]
    float* red = reinterpret_cast<float*>(smem + 2 * K::BUF_ELEMS * sizeof(Op));  // [KS][WARPS_M][4][32]
    constexpr int E = int(sizeof(Op));

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c4 = lane % 4;
    const int wm = warp % K::WARPS_M, ks = warp / K::WARPS_M;
    const int n = blockIdx.x, b0 = blockIdx.y * K::BT;
    const size_t ND = size_t(A.N) * D;

    unsigned a[K::SPLIT][K::KT_W][4];
    load_rt<K>(a, A.R, n, A.N, 16 * wm, ks, g, c4);
    // drs_T = 0: the last step gets no gradient through R (both buffers: which one it reads depends on T).
    for (int i = threadIdx.x; i < 2 * K::BUF_ELEMS; i += K::THREADS) buf[i] = mma::to_op<Op>(0.f);

    // This lane's cells: m -> q = ks + KS*m, (i, c) = (q / 2, q % 2) -> dim 16*wm + g + 8i, batch row 2*c4 + c
    // (the accumulator's entry q). Rows b >= B run on zeros and write nothing.
    float carry[K::CELLS][K::S];
    In<K> cur[K::CELLS] = {};
    int length[K::CELLS];
    size_t bt_nd[K::CELLS];  // ((b * Tn + t) * N + n) * D + 0 at the current step t (d is in `col`)
    const int last = A.Tn - 1;
#pragma unroll
    for (int m = 0; m < K::CELLS; ++m) {
        const int q = ks + KS * m, b = b0 + 2 * c4 + q % 2;
#pragma unroll
        for (int s = 0; s < K::S; ++s) carry[m][s] = 0.f;
        length[m] = b < A.B && A.lengths != nullptr ? A.lengths[b] : A.Tn;
        bt_nd[m] = (size_t(b) * A.Tn + last) * ND;
        if (b < A.B) load_in<K>(cur[m], A, bt_nd[m], size_t(n) * D + 16 * wm + g + 8 * (q / 2), b, last);
    }
    // ldmatrix x2: lanes 0-15 address rows (batch) l % 8 at k offset 8 * (l / 8) of the k-tile.
    const unsigned row = mma::smem_u32(buf) + unsigned(((lane % 8) * K::KROW + 8 * ((lane / 8) & 1)) * E);
    __syncthreads();

#pragma unroll 1
    for (int t = last; t >= -1; --t) {
        // Reads drs_{t+1} from buffer (t+1)&1, writes drs_t into buffer t&1.
        float acc[4];
        matmul<K>(acc, a, row + unsigned(((t + 1) & 1) * K::BUF_ELEMS * E), ks);
        // The next step's inputs, issued before this step's reduction and math so that their latency overlaps.
        In<K> nxt[K::CELLS] = {};
#pragma unroll
        for (int m = 0; m < K::CELLS; ++m) {
            const int q = ks + KS * m, b = b0 + 2 * c4 + q % 2;
            if (t > 0 && b < A.B)
                load_in<K>(nxt[m], A, bt_nd[m] - ND, size_t(n) * D + 16 * wm + g + 8 * (q / 2), b, t - 1);
        }
        float dh[K::CELLS];
        if constexpr (KS == 1) {
#pragma unroll
            for (int m = 0; m < K::CELLS; ++m) dh[m] = acc[m];
        } else {  // partial sums of the KS warps of this M tile meet in shared memory
#pragma unroll
            for (int q = 0; q < 4; ++q) red[((ks * K::WARPS_M + wm) * 4 + q) * 32 + lane] = acc[q];
            __syncthreads();
#pragma unroll
            for (int m = 0; m < K::CELLS; ++m) {
                const int q = ks + KS * m;
                float v = 0.f;
#pragma unroll
                for (int w = 0; w < KS; ++w) v += red[((w * K::WARPS_M + wm) * 4 + q) * 32 + lane];
                dh[m] = v;
            }
        }
        if (t < 0) {  // after step 0: the gradient on the initial states
#pragma unroll
            for (int m = 0; m < K::CELLS; ++m) {
                const int q = ks + KS * m, b = b0 + 2 * c4 + q % 2, d = 16 * wm + g + 8 * (q / 2);
                if (b >= A.B) continue;
#pragma unroll
                for (int s = 0; s < K::S; ++s)
                    store_f(A.dinit + (size_t(s) * A.B + b) * ND + size_t(n) * D + d,
                            carry[m][s] + (s == 0 ? dh[m] : 0.f));
            }
            break;
        }
        Op* out = buf + (t & 1) * K::BUF_ELEMS;
#pragma unroll
        for (int m = 0; m < K::CELLS; ++m) {
            const int q = ks + KS * m, bl = 2 * c4 + q % 2, b = b0 + bl, d = 16 * wm + g + 8 * (q / 2);
            float ds[K::S], dx[K::GW], drs[K::GR], db[K::GB], dsp[K::S];
#pragma unroll
            for (int s = 0; s < K::S; ++s) ds[s] = carry[m][s] + cur[m].up[s];
            ds[0] += dh[m];
            Cell::backward(ds, cur[m].prev, cur[m].saved, dx, drs, db, dsp);
            // Past a sequence's end (t >= its length) the step copied the states: no gate gradient, and the
            // whole state gradient passes to step t-1. Selects, not products: saved there may hold anything.
            const bool running = t < length[m];
            const bool live = b < A.B;  // padded rows: drs 0, so they add nothing to dh
#pragma unroll
            for (int s = 0; s < K::S; ++s) carry[m][s] = !live ? 0.f : running ? dsp[s] : ds[s];
#pragma unroll
            for (int gate = 0; gate < K::GR; ++gate) {
                Op parts[K::SPLIT];
                split(live && running ? drs[gate] : 0.f, parts);
#pragma unroll
                for (int s = 0; s < K::SPLIT; ++s) out[(s * K::BT + bl) * K::KROW + gate * D + d] = parts[s];
            }
            if (live) {
                const size_t col = size_t(n) * D + d;
#pragma unroll
                for (int gate = 0; gate < K::GW; ++gate)
                    store_f(A.dWx + bt_nd[m] * K::GW + gate * ND + col, running ? dx[gate] : 0.f);
                if (A.drs != nullptr)  // null where the cell's drs equals its dx (the host reads dWx)
#pragma unroll
                    for (int gate = 0; gate < K::GR; ++gate)
                        store_f(A.drs + bt_nd[m] * K::GR + gate * ND + col, running ? drs[gate] : 0.f);
            }
            cur[m] = nxt[m];
            bt_nd[m] -= ND;
        }
        __syncthreads();
    }
}

}  // namespace fused_bw
}  // namespace flashrnn

// ---- The entry: one variant per set of -D defines -----------------------------------------------------------
//   FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_FAST_ACTIVATIONS, FLASHRNN_D: as the forward (fused_fw.cu).
//   FLASHRNN_KSPLIT: warps splitting K for the same 16 rows (1, 2 or 4; Tile).
// Launch: grid (N, ceil(B / 8)), block Tile::THREADS (= 2 D KSPLIT), dynamic shared memory Tile::SMEM_BYTES.
// lengths ([B] int32, or null: all T): steps t >= lengths[b] pass the state gradient through (no gate gradient).
// Outputs: dWx [B,T,Gw,N,D], drs [B,T,Gr,N,D] (may be null: not written), dinit [S,B,1,N,D], all in the storage
// type; every element of rows b < B written. dstates ([SD,B,T,N,D]), dlast ([S,B,1,N,D]) and states0 may be null.
#ifndef FLASHRNN_CELL
#define FLASHRNN_CELL LstmCell
#endif
#ifndef FLASHRNN_STORAGE
#define FLASHRNN_STORAGE __nv_bfloat16
#endif
#ifndef FLASHRNN_D
#define FLASHRNN_D 64
#endif
#ifndef FLASHRNN_KSPLIT
#define FLASHRNN_KSPLIT 1
#endif

using FlashrnnFusedBwTile = flashrnn::fused_bw::Tile<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D, FLASHRNN_KSPLIT>;
#ifdef FLASHRNN_SMEM_BYTES
static_assert(FlashrnnFusedBwTile::SMEM_BYTES == FLASHRNN_SMEM_BYTES, "bw_geometry's shared memory disagrees with Tile");
#endif
#ifdef FLASHRNN_THREADS
static_assert(FlashrnnFusedBwTile::THREADS == FLASHRNN_THREADS, "bw_geometry's threads disagree with Tile");
#endif

extern "C" __global__ void __launch_bounds__(FlashrnnFusedBwTile::THREADS, 1)
flashrnn_fused_bw(const FLASHRNN_STORAGE* __restrict__ R, const FLASHRNN_STORAGE* __restrict__ states0,
                  const FLASHRNN_STORAGE* __restrict__ states, const FLASHRNN_STORAGE* __restrict__ saved,
                  const FLASHRNN_STORAGE* __restrict__ dstates, const FLASHRNN_STORAGE* __restrict__ dlast,
                  FLASHRNN_STORAGE* __restrict__ dWx, FLASHRNN_STORAGE* __restrict__ drs,
                  FLASHRNN_STORAGE* __restrict__ dinit, int B, int T, int N, int SD,
                  const int* __restrict__ lengths) {
    flashrnn::fused_bw::Args<FLASHRNN_STORAGE> args{R, states0, states, saved, dstates, dlast, dWx, drs, dinit,
                                                    lengths, B, T, N, SD};
    flashrnn::fused_bw::backward<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D, FLASHRNN_KSPLIT>(args);
}
