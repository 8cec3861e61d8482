// dR after the fused backward kernel (flashrnn_core/backends/fused.py, where the kernel does not sum dR itself):
//
//   dR[g, n, i, j] = sum over b, t of drs[b, t, g, n, i] * h_prev[b, t, n, j],
//   h_prev[b, t] = states[0][b, t-1] for t > 0, h0[b] (the initial h, or zeros) for t = 0.
//
// Why a kernel of our own and not cuBLAS: the sum runs over all B*T (16384 rows at the reference shapes) into
// small outputs (G x N heads of D x D), which cuBLAS's batched GEMMs spread over too few blocks (lstm 12x64 bf16:
// 0.106 ms, 61 TFLOPS, on an H200), and h_prev is not an array: cuBLAS needed a copy of states with h0 in front
// (0.068 ms). Here each block owns one TILE x TILE tile of one (g, n) and a range of rows ("split": gridDim.y
// ranges); the host sums the splits' float32 partials in a fixed order (deterministic, no atomics), and the
// t = 0 rows read h0 (or zero-fill) where cuBLAS read the copy. Large single heads (N = 1, D = 768) stay on
// cuBLAS: one GEMM over every gate there runs at ~700 TFLOPS, more than mma.sync reaches.
//
// Inner loop: a stage is KROWS rows (bt) of the tile's drs columns (A^T: rows k, columns i) and h_prev columns
// (B: rows k, columns j), copied with cp.async STAGES-1 chunks ahead; ldmatrix.trans gives the m16n8k16
// fragments of both (they are stored k-major). Warp w owns tile rows [16w, 16w+16), every column.
// Rows are padded by 8 elements so that the 8 row addresses of an ldmatrix fall in distinct bank groups.
//
// float32 storage (SPLIT): each value is split as bf16 hi + lo (16 significant bits together) and each product is
// hi*hi + hi*lo + lo*hi, as the fused kernels do (fused_fw.cu): relative error ~1e-5, inside SPEC's 1e-4.
// cuBLAS's float32 GEMMs took 2.55 ms for lstm 12x64's dR (B=16, T=1024, H200: 12 output tiles a gate for
// 16384 rows), 74% of the backward. The float rows are staged as they are (cp.async) and each thread splits
// the pieces it copied into a bf16 hi and lo copy laid out as the 16-bit kernel's stage (double-buffered, so
// one barrier a chunk), which the same ldmatrix.trans path reads. Stages of 16 rows, 3 deep: 33 KB of float
// stages and 18 KB of split copies stay within 48 KB of static shared memory.
//
// Defines: FLASHRNN_STORAGE (__nv_bfloat16, __half, float), FLASHRNN_DR_TILE (16, 32, 64: divides D).
#include "common/mma.cuh"

#ifndef FLASHRNN_STORAGE
#error "define FLASHRNN_STORAGE (__nv_bfloat16, __half, float)"
#endif
#ifndef FLASHRNN_DR_TILE
#error "define FLASHRNN_DR_TILE (16, 32, 64)"
#endif

namespace flashrnn {
namespace dr_gemm {

template <class T> struct OperandOf { using type = T; };
template <> struct OperandOf<float> { using type = __nv_bfloat16; };

using In = FLASHRNN_STORAGE;                       // what drs, h and h0 hold
using Op = typename OperandOf<In>::type;           // what the tensor cores take
constexpr bool SPLIT = sizeof(In) == 4;            // float32: hi + lo, three products
constexpr int TILE = FLASHRNN_DR_TILE;
constexpr int WARPS = TILE / 16, THREADS = 32 * WARPS;
constexpr int KROWS = SPLIT ? 16 : 32, STAGES = SPLIT ? 3 : 4;
constexpr int ROW = TILE + 8;                      // Op elements a row of what ldmatrix reads (padded)
constexpr int OPERAND = KROWS * ROW;               // Op elements of one operand's rows
constexpr int IN_ROW = SPLIT ? TILE : ROW;         // In elements a staged row (float rows: read as float4, unpadded)
constexpr int IN_OPERAND = KROWS * IN_ROW;
constexpr int PIECE = 16 / int(sizeof(In));        // In elements a 16-byte piece
constexpr int PIECES_ROW = TILE / PIECE;           // 16-byte pieces of a row
constexpr int PIECES = 2 * KROWS * PIECES_ROW;     // both operands' pieces a stage
constexpr int PER_THREAD = PIECES / THREADS;
static_assert(TILE == 16 || TILE == 32 || TILE == 64, "FLASHRNN_DR_TILE: 16, 32 or 64");
static_assert(PIECES % THREADS == 0, "every thread copies the same number of pieces");

struct Args {
    const In* drs;   // [B, T, G, N, D]: gate g of row (b, t) at ((b*T + t)*G + g)*N*D
    const In* h;     // states[0]: [B, T, N, D]
    const In* h0;    // [B, N, D] (initial h) or null (zeros)
    float* out;      // [splits, G, N, D, D] float32 partial sums
    int B, T, N, D, G, rows_per_split;
};

// Piece p of a thread (the same ones in copy_stage and split_stage): operand, row, first column.
struct Piece {
    int operand, r, c;
    __device__ __forceinline__ explicit Piece(int p) {
        const int piece = threadIdx.x + p * THREADS;
        operand = piece / (KROWS * PIECES_ROW), r = piece / PIECES_ROW % KROWS, c = piece % PIECES_ROW * PIECE;
    }
};

// Copies rows [k0, k0 + KROWS) of both operands into stage `dst` (shared address); rows past `k_end` and the
// t = 0 rows without h0 are zero-filled.
__device__ __forceinline__ void copy_stage(const Args& A, unsigned dst, long long k0, long long k_end, int g, int n,
                                           int i0, int j0) {
    const long long ND = (long long)A.N * A.D;
#pragma unroll
    for (int p = 0; p < PER_THREAD; ++p) {
        const Piece q(p);
        const long long bt = k0 + q.r;
        bool valid = bt < k_end;
        const In* src = A.drs;
        if (q.operand == 0) {
            src = A.drs + (bt * A.G + g) * ND + (long long)n * A.D + i0 + q.c;
        } else {
            const long long b = bt / A.T;
            if (bt - b * A.T > 0) src = A.h + (bt - 1) * ND + (long long)n * A.D + j0 + q.c;
            else if (A.h0 != nullptr) src = A.h0 + b * ND + (long long)n * A.D + j0 + q.c;
            else valid = false;
        }
        mma::cp_async_16(dst + unsigned((q.operand * IN_OPERAND + q.r * IN_ROW + q.c) * sizeof(In)),
                         valid ? src : A.drs, valid);
    }
}

// float32 only: the pieces this thread copied into `stage`, split into the hi and lo copies (`hi`, then `lo` one
// 2 * OPERAND Op elements later), each laid out as a 16-bit stage. Only this thread copied these pieces, so its
// own cp.async wait is what orders the read.
__device__ __forceinline__ void split_stage(const float* stage, Op* hi) {
#pragma unroll
    for (int p = 0; p < PER_THREAD; ++p) {
        const Piece q(p);
        const float4 v = *reinterpret_cast<const float4*>(stage + q.operand * IN_OPERAND + q.r * IN_ROW + q.c);
        const float x[4] = {v.x, v.y, v.z, v.w};
        unsigned h[2], l[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const Op h0 = mma::to_op<Op>(x[2 * e]), h1 = mma::to_op<Op>(x[2 * e + 1]);
            h[e] = mma::pack2(h0, h1);
            l[e] = mma::pack2(mma::to_op<Op>(x[2 * e] - mma::op_to_float(h0)),
                              mma::to_op<Op>(x[2 * e + 1] - mma::op_to_float(h1)));
        }
        Op* at = hi + q.operand * OPERAND + q.r * ROW + q.c;
        *reinterpret_cast<uint2*>(at) = make_uint2(h[0], h[1]);
        *reinterpret_cast<uint2*>(at + 2 * OPERAND) = make_uint2(l[0], l[1]);
    }
}

// acc += the KROWS rows of one stage (16-bit: `stage`; float32: the hi and lo copies at `stage`, the lo one
// 2 * OPERAND Op elements later): A fragments of tile rows [16w, 16w+16), B of every column.
__device__ __forceinline__ void multiply(float (&acc)[TILE / 8][4], unsigned stage, unsigned a_lane, unsigned b_lane) {
    constexpr unsigned LO = 2 * OPERAND * 2;  // bytes from the hi copy to the lo one
#pragma unroll
    for (int kk = 0; kk < KROWS / 16; ++kk) {
        const unsigned k_off = unsigned(kk * 16 * ROW * 2);
        unsigned a[4], a_lo[4];
        mma::ldmatrix_x4_trans(a, stage + k_off + a_lane);
        if constexpr (SPLIT) mma::ldmatrix_x4_trans(a_lo, stage + LO + k_off + a_lane);
#pragma unroll
        for (int p = 0; p < TILE / 16; ++p) {
            const unsigned b_at = stage + k_off + b_lane + unsigned(p * 16 * 2);
            unsigned bf[4];
            mma::ldmatrix_x4_trans(bf, b_at);
            mma::Mma<Op>::run(acc[2 * p], a, bf[0], bf[1]);
            mma::Mma<Op>::run(acc[2 * p + 1], a, bf[2], bf[3]);
            if constexpr (SPLIT) {  // hi*lo + lo*hi (lo*lo, ~2^-16 relative, is left out)
                unsigned bl[4];
                mma::ldmatrix_x4_trans(bl, b_at + LO);
                mma::Mma<Op>::run(acc[2 * p], a, bl[0], bl[1]);
                mma::Mma<Op>::run(acc[2 * p + 1], a, bl[2], bl[3]);
                mma::Mma<Op>::run(acc[2 * p], a_lo, bf[0], bf[1]);
                mma::Mma<Op>::run(acc[2 * p + 1], a_lo, bf[2], bf[3]);
            }
        }
    }
}

}  // namespace dr_gemm
}  // namespace flashrnn

// Grid: x = G * N * (D/TILE)^2 tiles (g slowest, then n, then tile rows, tile columns), y = splits; rows
// [y * rows_per_split, ...) of the B*T rows. Block (x, y) writes out[y, g, n, tile] (every element of it).
extern "C" __global__ void __launch_bounds__(flashrnn::dr_gemm::THREADS)
    flashrnn_dr_gemm(const FLASHRNN_STORAGE* __restrict__ drs, const FLASHRNN_STORAGE* __restrict__ h,
                     const FLASHRNN_STORAGE* __restrict__ h0, float* __restrict__ out, int B, int T, int N, int D,
                     int G, int rows_per_split) {
    using namespace flashrnn;
    using namespace flashrnn::dr_gemm;
    __shared__ __align__(128) In stages[STAGES][2 * IN_OPERAND];
    // float32: the split copies, two chunks' (hi and lo each), so that one barrier a chunk orders them.
    __shared__ __align__(128) Op split[SPLIT ? 2 : 1][SPLIT ? 4 * OPERAND : 8];
    const Args A{drs, h, h0, out, B, T, N, D, G, rows_per_split};
    const int tiles_side = D / TILE, tiles_head = tiles_side * tiles_side;
    const int head = blockIdx.x / tiles_head, tile = blockIdx.x % tiles_head;
    const int g = head / N, n = head % N, i0 = tile / tiles_side * TILE, j0 = tile % tiles_side * TILE;
    const long long rows = (long long)B * T, k_begin = (long long)blockIdx.y * rows_per_split;
    const long long k_end = k_begin + rows_per_split < rows ? k_begin + rows_per_split : rows;
    const int chunks = int((k_end - k_begin + KROWS - 1) / KROWS);

    const unsigned base = mma::smem_u32(stages);
    constexpr unsigned STAGE_BYTES = 2 * IN_OPERAND * sizeof(In);
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < chunks) copy_stage(A, base + s * STAGE_BYTES, k_begin + s * KROWS, k_end, g, n, i0, j0);
        mma::cp_async_commit();
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // ldmatrix.x4.trans row addresses. A (rows k, columns i): matrices (i 0-7, k 0-7), (i 8-15, k 0-7),
    // (i 0-7, k 8-15), (i 8-15, k 8-15) = a0..a3. B (rows k, columns j): (k 0-7, j 0-7), (k 8-15, j 0-7),
    // (k 0-7, j 8-15), (k 8-15, j 8-15) = b0, b1 of n tile 2p and of n tile 2p+1.
    const int q = lane / 8, r8 = lane % 8;
    const unsigned a_lane = unsigned(((r8 + 8 * (q / 2)) * ROW + 16 * warp + 8 * (q % 2)) * 2);
    const unsigned b_lane = unsigned((OPERAND + (r8 + 8 * (q % 2)) * ROW + 8 * (q / 2)) * 2);
    float acc[TILE / 8][4] = {};
#pragma unroll 1
    for (int chunk = 0; chunk < chunks; ++chunk) {
        mma::cp_async_wait<STAGES - 2>();
        if constexpr (SPLIT) split_stage(reinterpret_cast<const float*>(stages[chunk % STAGES]), split[chunk % 2]);
        // 16-bit: the chunk has landed everywhere; every warp is done with the stage refilled below. float32:
        // every thread's split of the chunk is written; every warp is done with the copies of two chunks ago
        // (the stage refilled below was read only by the thread that refills it, in its split).
        __syncthreads();
        const int next = chunk + STAGES - 1;
        if (next < chunks)
            copy_stage(A, base + (next % STAGES) * STAGE_BYTES, k_begin + (long long)next * KROWS, k_end, g, n,
                       i0, j0);
        mma::cp_async_commit();
        if constexpr (SPLIT) multiply(acc, mma::smem_u32(split[chunk % 2]), a_lane, b_lane);
        else multiply(acc, base + (chunk % STAGES) * STAGE_BYTES, a_lane, b_lane);
    }
    mma::cp_async_wait<0>();
    // C fragment: acc[nt][0..1] = C[g8][2c..2c+1], acc[nt][2..3] = C[g8+8][2c..], rows i, columns j of n tile nt.
    const int g8 = lane / 4, c4 = lane % 4;
    float* o = out + (((long long)blockIdx.y * G + g) * N + n) * (long long)D * D + (long long)(i0 + 16 * warp + g8) * D
               + j0 + 2 * c4;
#pragma unroll
    for (int nt = 0; nt < TILE / 8; ++nt) {
        *reinterpret_cast<float2*>(o + 8 * nt) = make_float2(acc[nt][0], acc[nt][1]);
        *reinterpret_cast<float2*>(o + 8 * D + 8 * nt) = make_float2(acc[nt][2], acc[nt][3]);
    }
}
