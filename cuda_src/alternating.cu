// The `cuda` backend's pointwise kernels (flashrnn_core/backends/alternating.py): one launch per time step,
// between the batched cuBLAS matmuls that the host (or a CUDA graph of the whole loop) issues.
//
//   forward step t:  Rs = R h_{t-1} (cuBLAS) -> flashrnn_alt_fw: states[:, :, t], saved[:, t], h_t for the next GEMM
//   backward step t: flashrnn_alt_bw: dWx[:, t], drs_t, carried gradients -> dh = R^T drs_t (cuBLAS) for step t-1
//
// One thread per (b, n, d) element; the cell's equations come from cuda_src/cells/ (FLASHRNN_CELL names the
// struct, FLASHRNN_STORAGE the storage type, FLASHRNN_FAST_ACTIVATIONS the activation path).
//
// Why the arrays that change from call to call (Wx, states, saved, dWx, ...) arrive through a small pointer table
// in device memory rather than as kernel arguments: the backend replays the whole time loop as one CUDA graph,
// whose kernel arguments are frozen at capture. Rewriting the table (a 64-byte copy) before each replay points
// the same graph at the caller's arrays. Buffers the graph owns (Rs, the float32 carries) are plain arguments.
#include "cells/cells.cuh"
#include "common/types.cuh"

#ifndef FLASHRNN_CELL
#error "define FLASHRNN_CELL (LstmCell, SlstmCell, GruCell, ElmanCell)"
#endif
#ifndef FLASHRNN_STORAGE
#error "define FLASHRNN_STORAGE (float, __nv_bfloat16, __half)"
#endif

using Cell = FLASHRNN_CELL;
using T_ = FLASHRNN_STORAGE;
using flashrnn::load_f;
using flashrnn::store_f;
using idx_t = long long;  // B*T*G*N*D passes 2^31 for long sequences

// Pointer tables, written by the host before each call (layout mirrored in alternating.py: 8-byte slots).
// lengths ([B] int32, or null: every sequence runs all T steps) travels in the table too: it is a caller's array.
struct FwTable {
    const T_* wx;         // [B, T, GW, N, D]
    T_* states;           // [S, B, T, N, D]
    T_* saved;            // [B, T, NSAVED, N, D], or null: an inference forward (nothing runs backward)
    const int* lengths;   // [B] or null
};

struct BwTable {
    const T_* dstates;  // [ds_rows, B, T, N, D] or null
    const T_* states;   // [S, B, T, N, D], the forward's
    const T_* saved;    // [B, T, NSAVED, N, D]
    T_* dwx;            // [B, T, GW, N, D]
    T_* hprev;          // [T, B, N, D]: h_{t-1} of every step, for the dR GEMM after the loop
    long long ds_rows;  // rows of dstates: S, 1 (h only) or 0
    const int* lengths; // [B] or null
};

// Whether step t of sequence b runs (t < lengths[b]; always without lengths).
__device__ __forceinline__ bool running(const int* lengths, idx_t b, int t) {
    return lengths == nullptr || t < lengths[b];
}

// Forward of step t. rs: [B, N, GR, D] float32 from the GEMM; bias: [GB, N, D] float32; carry: [S, B, N, D]
// float32, s_{t-1} in and s_t out (each thread owns its elements, so in place); hnext: [B, N, D], h_t in storage
// precision, the B operand of the next step's GEMM.
extern "C" __global__ void flashrnn_alt_fw(const FwTable* __restrict__ table, const float* __restrict__ rs,
                                           const float* __restrict__ bias, float* __restrict__ carry,
                                           T_* __restrict__ hnext, int B, int T, int N, int D, int t) {
    const idx_t ND = (idx_t)N * D, BND = B * ND;
    const idx_t e = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= BND) return;
    const idx_t b = e / ND, nd = e - b * ND, n = nd / D, d = nd - n * D;
    const FwTable tab = *table;

    float x[Cell::GW], r[Cell::GR], bb[Cell::GB], s_prev[Cell::S], s[Cell::S], saved[Cell::NSAVED];
    const T_* wx = tab.wx + (b * T + t) * Cell::GW * ND + nd;
#pragma unroll
    for (int g = 0; g < Cell::GW; ++g) x[g] = load_f(wx + g * ND);
#pragma unroll
    for (int g = 0; g < Cell::GR; ++g) r[g] = rs[(b * N + n) * Cell::GR * D + g * D + d];
#pragma unroll
    for (int g = 0; g < Cell::GB; ++g) bb[g] = bias[g * ND + nd];
#pragma unroll
    for (int k = 0; k < Cell::S; ++k) s_prev[k] = carry[k * BND + e];

    Cell::forward(x, r, bb, s_prev, s, saved);
    // Past the sequence's end the states stay (a select: states[:, b, t] is a bitwise copy of the last valid
    // one); saved keeps the step's values, which no backward reads there.
    const bool run = running(tab.lengths, b, t);
#pragma unroll
    for (int k = 0; k < Cell::S; ++k) s[k] = run ? s[k] : s_prev[k];

#pragma unroll
    for (int k = 0; k < Cell::S; ++k) {
        carry[k * BND + e] = s[k];
        store_f(tab.states + ((k * B + b) * T + t) * ND + nd, s[k]);
    }
    if (tab.saved != nullptr) {  // the same for every thread of a call
        T_* sv = tab.saved + (b * T + t) * Cell::NSAVED * ND + nd;
#pragma unroll
        for (int k = 0; k < Cell::NSAVED; ++k) store_f(sv + k * ND, saved[k]);
    }
    store_f(hnext + e, s[0]);
}

// Backward of step t (run for t = T-1 down to 0).
//   dcarry [S, B, N, D] float32: in, the direct gradient on s_t from step t+1 (and dlast, added by the host
//     before the loop); out, the direct gradient on s_{t-1}.
//   dh [B, N, D] float32: sum_g R_g^T drs_{t+1}, the gradient on h_t through R (zeros before the first step).
//   init [S, B, N, D] float32: s_{-1} (the initial states, or zeros).
//   drs [B, N, GR, D]: this step's gradient on R h_{t-1}, the operand of the R^T GEMM and of the dR GEMM.
//   dbias [GB, B, N, D] float32: the bias gradient summed over time per sequence (summed over B after the
//     loop): the cell's own db, so no backend needs to know which gate feeds which bias row.
extern "C" __global__ void flashrnn_alt_bw(const BwTable* __restrict__ table, float* __restrict__ dcarry,
                                           const float* __restrict__ dh, const float* __restrict__ init,
                                           T_* __restrict__ drs, float* __restrict__ dbias, int B, int T, int N,
                                           int D, int t) {
    const idx_t ND = (idx_t)N * D, BND = B * ND;
    const idx_t e = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= BND) return;
    const idx_t b = e / ND, nd = e - b * ND, n = nd / D, d = nd - n * D;
    const BwTable tab = *table;

    float ds[Cell::S], s_prev[Cell::S], saved[Cell::NSAVED];
    float dx[Cell::GW], dr[Cell::GR], db[Cell::GB], ds_prev[Cell::S];
#pragma unroll
    for (int k = 0; k < Cell::S; ++k) {
        ds[k] = dcarry[k * BND + e];
        if (k < tab.ds_rows) ds[k] += load_f(tab.dstates + ((k * B + b) * T + t) * ND + nd);
        s_prev[k] = t > 0 ? load_f(tab.states + ((k * B + b) * T + t - 1) * ND + nd) : init[k * BND + e];
    }
    ds[0] += dh[e];
    const T_* sv = tab.saved + (b * T + t) * Cell::NSAVED * ND + nd;
#pragma unroll
    for (int k = 0; k < Cell::NSAVED; ++k) saved[k] = load_f(sv + k * ND);

    Cell::backward(ds, s_prev, saved, dx, dr, db, ds_prev);
    // Past the sequence's end (saved there may hold anything, even NaN: selects, never products with a mask):
    // no gate gradient, so drs = 0 and the R^T GEMM gives this row dh = 0 for step t-1, and the whole state
    // gradient of the step (ds, with dh already in ds[0]) carries on as the direct gradient of s_{t-1}.
    const bool run = running(tab.lengths, b, t);
#pragma unroll
    for (int g = 0; g < Cell::GW; ++g) dx[g] = run ? dx[g] : 0.f;
#pragma unroll
    for (int g = 0; g < Cell::GR; ++g) dr[g] = run ? dr[g] : 0.f;
#pragma unroll
    for (int g = 0; g < Cell::GB; ++g) db[g] = run ? db[g] : 0.f;
#pragma unroll
    for (int k = 0; k < Cell::S; ++k) ds_prev[k] = run ? ds_prev[k] : ds[k];

    T_* dwx = tab.dwx + (b * T + t) * Cell::GW * ND + nd;
#pragma unroll
    for (int g = 0; g < Cell::GW; ++g) store_f(dwx + g * ND, dx[g]);
#pragma unroll
    for (int g = 0; g < Cell::GR; ++g) store_f(drs + (b * N + n) * Cell::GR * D + g * D + d, dr[g]);
#pragma unroll
    for (int g = 0; g < Cell::GB; ++g) dbias[g * BND + e] += db[g];
#pragma unroll
    for (int k = 0; k < Cell::S; ++k) dcarry[k * BND + e] = ds_prev[k];
    store_f(tab.hprev + t * BND + e, s_prev[0]);
}
