// cuda_fused backward: one persistent reverse-time kernel per (head, tile of 8 sequences); blocks never talk to
// each other, a time step costs one __syncthreads. Heads that need a cluster in the forward are not handled
// here (backends/fused.py delegates them to the `cuda` backend's backward).
//
// The recurrence in reverse: ds_t = carry_t + upstream_t, with carry_t[h] = ds_prev[h] + sum_g R_g^T drs_g,t+1.
// Matrix view of the recurrent term: dH[D, 8] = A[D, Gr*D] x DRS[Gr*D, 8], A[k][g*D + j] = R[g][j][k] (R^T, the
// gates side by side along K). M = the h dims (16 a warp), K = every gate's rows, N = the batch tile.
//   * A lives in registers as mma.sync A-fragments for the whole run (loaded once, transposed on load).
//   * drs_{t+1} lives in shared memory as the B operand, [batch][Gr*D] rows, double-buffered: step t reads one
//     buffer and writes the other, so one barrier a step orders both.
//   * the accumulator layout decides who runs the cell: lane (g, c4) of warp w holds dh for dims 16w + g (+8)
//     and batch rows 2*c4 (+1), so it owns those 4 cells, their carried state gradients stay in registers and
//     Cell::backward (cuda_src/cells/) runs on them with no exchange between threads.
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
//   Not yet measured which part of the step costs the extra ~6000 cycles; the suspects, in order: the 4 cells'
//   scattered 2-byte global loads (saved, states, dstates: up to 12 a cell) prefetched only one step ahead, and
//   the scattered 2-byte stores of dWx/drs (the forward measured 12 such stores a thread at ~540 cycles a step and
//   fixed it by staging rows in shared memory and storing 16-byte pieces; the same fix applies here, and a
//   cp.async prefetch several steps deep for the inputs, as the forward's Wx).
//   Ruled out: the end-of-step copy nxt -> cur stalling on the loads just issued. Unrolling the loop twice
//   with the two register sets alternating (no copy) measured slower, 4.16 us a step at 12x64 (3.36 us as is).
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
template <class Cell, class T, int D_> struct Tile {
    using Op = typename OperandOf<T>::Op;
    static constexpr int SPLIT = OperandOf<T>::SPLIT;
    static constexpr int D = D_, BT = 8;
    static constexpr int GW = Cell::GW, GR = Cell::GR, GB = Cell::GB, S = Cell::S, NSAVED = Cell::NSAVED;
    static constexpr int WARPS = D / 16, THREADS = 32 * WARPS;
    static constexpr int KT = GR * D / 16;                   // k-tiles: every gate's rows
    static constexpr int CHAINS = KT < 4 ? KT : 4;           // independent partial sums of the mma chain
    static constexpr int KROW = GR * D + 8;                  // padded row: ldmatrix rows in distinct banks
    static constexpr int BUF_ELEMS = SPLIT * BT * KROW;      // one drs buffer
    static constexpr int SMEM_BYTES = 2 * BUF_ELEMS * int(sizeof(Op));
    static_assert(D % 16 == 0, "D must be a multiple of 16");
};

// A-fragments of R^T: row k = 16*warp + g (+8), column kk = 16*kt + 2*c4 (+1, +8) = gate*D + j, value R[gate][j][k].
template <class K, class T>
__device__ __forceinline__ void load_rt(unsigned (&a)[K::SPLIT][K::KT][4], const T* __restrict__ R, int n, int N,
                                        int k0, int g, int c4) {
    using Op = typename K::Op;
#pragma unroll
    for (int kt = 0; kt < K::KT; ++kt)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int k = k0 + g + 8 * (j & 1);
            const int kk = 16 * kt + 2 * c4 + 8 * (j >> 1);
            const int gate = kk / K::D, row = kk % K::D;
            const T* p = R + ((size_t(gate) * N + n) * K::D + row) * K::D + k;
            Op lo[K::SPLIT], hi[K::SPLIT];
            split(load_f(p), lo);
            split(load_f(p + K::D), hi);  // the next j: the next row of R
#pragma unroll
            for (int s = 0; s < K::SPLIT; ++s) a[s][kt][j] = mma::pack2(lo[s], hi[s]);
        }
}

// dh[16 dims of this warp][8 batch rows] = R^T drs from one drs buffer (`addr`: this lane's ldmatrix row).
template <class K>
__device__ __forceinline__ void matmul(float (&acc)[4], const unsigned (&a)[K::SPLIT][K::KT][4], unsigned addr) {
    using M = mma::Mma<typename K::Op>;
    constexpr int E = int(sizeof(typename K::Op));
    float part[K::CHAINS][4];
#pragma unroll
    for (int c = 0; c < K::CHAINS; ++c)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[c][i] = 0.f;
#pragma unroll
    for (int kt = 0; kt < K::KT; ++kt) {
        unsigned bf[K::SPLIT][2];
#pragma unroll
        for (int s = 0; s < K::SPLIT; ++s)
            mma::ldmatrix_x2(bf[s], addr + unsigned((s * K::BT * K::KROW + 16 * kt) * E));
        float (&p)[4] = part[kt % K::CHAINS];
        M::run(p, a[0][kt], bf[0][0], bf[0][1]);
        if constexpr (K::SPLIT == 2) {
            M::run(p, a[0][kt], bf[1][0], bf[1][1]);
            M::run(p, a[1][kt], bf[0][0], bf[0][1]);
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
    int B, Tn, N, SD;  // SD: state rows of dstates (1: h only, S: all)
    const int* lengths;  // [B] or null (every sequence runs Tn steps)
};

// Inputs of cell (b, d) at step t (b < B). Missing tensors count as zeros.
template <class K, class T>
__device__ __forceinline__ void load_in(In<K>& in, const Args<T>& A, int b, int t, int n, int d) {
    const size_t ND = size_t(A.N) * K::D, BTND = size_t(A.B) * A.Tn * ND;
    const size_t col = size_t(n) * K::D + d;
#pragma unroll
    for (int k = 0; k < K::NSAVED; ++k)
        in.saved[k] = load_f(A.saved + ((size_t(b) * A.Tn + t) * K::NSAVED + k) * ND + col);
#pragma unroll
    for (int s = 0; s < K::S; ++s) {
        float p = 0.f;
        if (t > 0) p = load_f(A.states + s * BTND + (size_t(b) * A.Tn + t - 1) * ND + col);
        else if (A.s0 != nullptr) p = load_f(A.s0 + (size_t(s) * A.B + b) * ND + col);
        in.prev[s] = p;
        float u = 0.f;
        if (A.dstates != nullptr && s < A.SD) u = load_f(A.dstates + s * BTND + (size_t(b) * A.Tn + t) * ND + col);
        if (A.dlast != nullptr && t == A.Tn - 1) u += load_f(A.dlast + (size_t(s) * A.B + b) * ND + col);
        in.up[s] = u;
    }
}

template <class Cell, class T, int D>
__device__ __forceinline__ void backward(const Args<T> A) {
    using K = Tile<Cell, T, D>;
    using Op = typename K::Op;
    extern __shared__ __align__(16) unsigned char smem[];
    Op* buf = reinterpret_cast<Op*>(smem);  // [2][SPLIT][BT][KROW]
    constexpr int E = int(sizeof(Op));

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c4 = lane % 4;
    const int n = blockIdx.x, b0 = blockIdx.y * K::BT;
    const size_t ND = size_t(A.N) * D;

    unsigned a[K::SPLIT][K::KT][4];
    load_rt<K>(a, A.R, n, A.N, 16 * warp, g, c4);
    // drs_T = 0: the last step gets no gradient through R (both buffers: which one it reads depends on T).
    for (int i = threadIdx.x; i < 2 * K::BUF_ELEMS; i += K::THREADS) buf[i] = mma::to_op<Op>(0.f);

    // This lane's cells: (i, c) -> dim 16*warp + g + 8i, batch row 2*c4 + c (the accumulator's c[2i + c]).
    float carry[2][2][K::S];
    In<K> cur[2][2] = {};
    const int last = A.Tn - 1;
    int len[2];  // steps batch row 2*c4 + c runs (Tn without lengths and past B)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
        const int b = b0 + 2 * c4 + c;
        len[c] = (A.lengths != nullptr && b < A.B) ? A.lengths[b] : A.Tn;
    }
    // The tile's longest sequence: at steps t >= tend every row of the tile is past its end, drs_{t+1} is zero
    // for all of them, so the mma and the cells are skipped there (the gradients still pass through).
    int tend = A.Tn;
    if (A.lengths != nullptr) {
        const int b = b0 + lane;
        tend = __reduce_max_sync(0xffffffffu, (lane < K::BT && b < A.B) ? A.lengths[b] : 0);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
#pragma unroll
            for (int s = 0; s < K::S; ++s) carry[i][c][s] = 0.f;
            const int b = b0 + 2 * c4 + c;
            if (b < A.B) load_in<K>(cur[i][c], A, b, last, n, 16 * warp + g + 8 * i);
        }
    // ldmatrix x2: lanes 0-15 address rows (batch) l % 8 at k offset 8 * (l / 8) of the k-tile.
    const unsigned row = mma::smem_u32(buf) + unsigned(((lane % 8) * K::KROW + 8 * ((lane / 8) & 1)) * E);
    __syncthreads();

#pragma unroll 1
    for (int t = last; t >= -1; --t) {
        // Reads drs_{t+1} from buffer (t+1)&1, writes drs_t into buffer t&1.
        const bool active = t < tend;  // the same for the whole block
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        if (active) matmul<K>(acc, a, row + unsigned(((t + 1) & 1) * K::BUF_ELEMS * E));
        if (t < 0) {  // after step 0: the gradient on the initial states
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int b = b0 + 2 * c4 + c, d = 16 * warp + g + 8 * i;
                    if (b >= A.B) continue;
#pragma unroll
                    for (int s = 0; s < K::S; ++s)
                        store_f(A.dinit + (size_t(s) * A.B + b) * ND + size_t(n) * D + d,
                                carry[i][c][s] + (s == 0 ? acc[2 * i + c] : 0.f));
                }
            break;
        }
        In<K> nxt[2][2] = {};
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int b = b0 + 2 * c4 + c;
                if (t > 0 && b < A.B) load_in<K>(nxt[i][c], A, b, t - 1, n, 16 * warp + g + 8 * i);
            }
        Op* out = buf + (t & 1) * K::BUF_ELEMS;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int bl = 2 * c4 + c, b = b0 + bl, d = 16 * warp + g + 8 * i;
                float ds[K::S], dx[K::GW] = {}, drs[K::GR] = {}, db[K::GB], dsp[K::S];
#pragma unroll
                for (int s = 0; s < K::S; ++s) ds[s] = carry[i][c][s] + cur[i][c].up[s];
                ds[0] += acc[2 * i + c];
#pragma unroll
                for (int s = 0; s < K::S; ++s) dsp[s] = ds[s];
                if (active) Cell::backward(ds, cur[i][c].prev, cur[i][c].saved, dx, drs, db, dsp);
                const bool live = b < A.B;  // padded rows: drs 0, so they add nothing to dh
                // Past the sequence's end (saved may hold anything there, even NaN: selects, no products with a
                // mask): dx = drs = 0, so this row's dh of step t-1 is 0 and it adds nothing to dR or db, and
                // the whole state gradient of the step (ds, with dh in ds[0]) carries on to s_{t-1}.
                const bool run = t < len[c];
#pragma unroll
                for (int s = 0; s < K::S; ++s) carry[i][c][s] = live ? (run ? dsp[s] : ds[s]) : 0.f;
#pragma unroll
                for (int gate = 0; gate < K::GW; ++gate) dx[gate] = run ? dx[gate] : 0.f;
#pragma unroll
                for (int gate = 0; gate < K::GR; ++gate) {
                    drs[gate] = run ? drs[gate] : 0.f;
                    Op parts[K::SPLIT];
                    split(live ? drs[gate] : 0.f, parts);
#pragma unroll
                    for (int s = 0; s < K::SPLIT; ++s) out[(s * K::BT + bl) * K::KROW + gate * D + d] = parts[s];
                }
                if (live) {
                    const size_t col = size_t(n) * D + d, bt = size_t(b) * A.Tn + t;
#pragma unroll
                    for (int gate = 0; gate < K::GW; ++gate) store_f(A.dWx + (bt * K::GW + gate) * ND + col, dx[gate]);
                    if (A.drs != nullptr)  // null where the cell's drs equals its dx (the host reads dWx)
#pragma unroll
                        for (int gate = 0; gate < K::GR; ++gate)
                            store_f(A.drs + (bt * K::GR + gate) * ND + col, drs[gate]);
                }
                cur[i][c] = nxt[i][c];
            }
        __syncthreads();
    }
}

}  // namespace fused_bw
}  // namespace flashrnn

// ---- The entry: one variant per set of -D defines -----------------------------------------------------------
//   FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_FAST_ACTIVATIONS, FLASHRNN_D: as the forward (fused_fw.cu).
// Launch: grid (N, ceil(B / 8)), block Tile::THREADS (= 2 D), dynamic shared memory Tile::SMEM_BYTES.
// Outputs: dWx [B,T,Gw,N,D], drs [B,T,Gr,N,D] (may be null: not written), dinit [S,B,1,N,D], all in the storage
// type; every element of rows b < B written. dstates ([SD,B,T,N,D]), dlast ([S,B,1,N,D]) and states0 may be null.
// lengths: [B] int32 (1 <= lengths[b] <= T) or null; past a sequence's end dWx and drs are 0 and the state
// gradient passes through to the step before (docs/architecture.md, "Variable lengths").
#ifndef FLASHRNN_CELL
#define FLASHRNN_CELL LstmCell
#endif
#ifndef FLASHRNN_STORAGE
#define FLASHRNN_STORAGE __nv_bfloat16
#endif
#ifndef FLASHRNN_D
#define FLASHRNN_D 64
#endif

using FlashrnnFusedBwTile = flashrnn::fused_bw::Tile<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D>;
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
                                                    B, T, N, SD, lengths};
    flashrnn::fused_bw::backward<FLASHRNN_CELL, FLASHRNN_STORAGE, FLASHRNN_D>(args);
}
