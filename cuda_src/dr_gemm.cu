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
// Defines: FLASHRNN_STORAGE (__nv_bfloat16, __half), FLASHRNN_DR_TILE (16, 32, 64: divides D).
#include "common/mma.cuh"

#ifndef FLASHRNN_STORAGE
#error "define FLASHRNN_STORAGE (__nv_bfloat16, __half)"
#endif
#ifndef FLASHRNN_DR_TILE
#error "define FLASHRNN_DR_TILE (16, 32, 64)"
#endif

namespace flashrnn {
namespace dr_gemm {

using Op = FLASHRNN_STORAGE;
constexpr int TILE = FLASHRNN_DR_TILE;
constexpr int WARPS = TILE / 16, THREADS = 32 * WARPS;
constexpr int KROWS = 32, STAGES = 4;
constexpr int ROW = TILE + 8;                      // elements a staged row (padded)
constexpr int OPERAND = KROWS * ROW;               // elements of one operand's stage
constexpr int PIECES_ROW = TILE / 8;               // 16-byte pieces of a row
constexpr int PIECES = 2 * KROWS * PIECES_ROW;     // both operands' pieces a stage
constexpr int PER_THREAD = PIECES / THREADS;
static_assert(TILE == 16 || TILE == 32 || TILE == 64, "FLASHRNN_DR_TILE: 16, 32 or 64");
static_assert(PIECES % THREADS == 0, "every thread copies the same number of pieces");

struct Args {
    const Op* drs;   // [B, T, G, N, D]: gate g of row (b, t) at ((b*T + t)*G + g)*N*D
    const Op* h;     // states[0]: [B, T, N, D]
    const Op* h0;    // [B, N, D] (initial h) or null (zeros)
    float* out;      // [splits, G, N, D, D] float32 partial sums
    int B, T, N, D, G, rows_per_split;
};

// Copies rows [k0, k0 + KROWS) of both operands into stage `dst` (shared address); rows past `k_end` and the
// t = 0 rows without h0 are zero-filled.
__device__ __forceinline__ void copy_stage(const Args& A, unsigned dst, long long k0, long long k_end, int g, int n,
                                           int i0, int j0) {
    const long long ND = (long long)A.N * A.D;
#pragma unroll
    for (int p = 0; p < PER_THREAD; ++p) {
        const int piece = threadIdx.x + p * THREADS;
        const int operand = piece / (KROWS * PIECES_ROW), r = piece / PIECES_ROW % KROWS;
        const int c = piece % PIECES_ROW * 8;
        const long long bt = k0 + r;
        bool valid = bt < k_end;
        const Op* src = A.drs;
        if (operand == 0) {
            src = A.drs + (bt * A.G + g) * ND + (long long)n * A.D + i0 + c;
        } else {
            const long long b = bt / A.T;
            if (bt - b * A.T > 0) src = A.h + (bt - 1) * ND + (long long)n * A.D + j0 + c;
            else if (A.h0 != nullptr) src = A.h0 + b * ND + (long long)n * A.D + j0 + c;
            else valid = false;
        }
        mma::cp_async_16(dst + unsigned((operand * OPERAND + r * ROW + c) * 2), valid ? src : A.drs, valid);
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
    __shared__ __align__(128) Op stages[STAGES][2 * OPERAND];
    const Args A{drs, h, h0, out, B, T, N, D, G, rows_per_split};
    const int tiles_side = D / TILE, tiles_head = tiles_side * tiles_side;
    const int head = blockIdx.x / tiles_head, tile = blockIdx.x % tiles_head;
    const int g = head / N, n = head % N, i0 = tile / tiles_side * TILE, j0 = tile % tiles_side * TILE;
    const long long rows = (long long)B * T, k_begin = (long long)blockIdx.y * rows_per_split;
    const long long k_end = k_begin + rows_per_split < rows ? k_begin + rows_per_split : rows;
    const int chunks = int((k_end - k_begin + KROWS - 1) / KROWS);

    const unsigned base = mma::smem_u32(stages);
    constexpr unsigned STAGE_BYTES = 2 * OPERAND * 2;
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
        __syncthreads();  // the chunk has landed everywhere; every warp is done with the stage refilled below
        const int next = chunk + STAGES - 1;
        if (next < chunks)
            copy_stage(A, base + (next % STAGES) * STAGE_BYTES, k_begin + (long long)next * KROWS, k_end, g, n,
                       i0, j0);
        mma::cp_async_commit();
        const unsigned stage = base + (chunk % STAGES) * STAGE_BYTES;
#pragma unroll
        for (int kk = 0; kk < KROWS / 16; ++kk) {
            const unsigned k_off = unsigned(kk * 16 * ROW * 2);
            unsigned a[4];
            mma::ldmatrix_x4_trans(a, stage + k_off + a_lane);
#pragma unroll
            for (int p = 0; p < TILE / 16; ++p) {
                unsigned bf[4];
                mma::ldmatrix_x4_trans(bf, stage + k_off + b_lane + unsigned(p * 16 * 2));
                mma::Mma<Op>::run(acc[2 * p], a, bf[0], bf[1]);
                mma::Mma<Op>::run(acc[2 * p + 1], a, bf[2], bf[3]);
            }
        }
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
