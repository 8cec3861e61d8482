// The matrix-vector product of one block's step at 1x768 (lstm: 192 gate rows x 768 = 48 k-tiles, 8 sequences),
// alone, to measure what bounds it: bench/matvec_bound.py. Not part of the library.
//
// KIND 0: mma.sync m16n8k16, WARPS warps of 12 / WARPS m16 tiles each (the fused forward's path): of a warp's 48
//         k-tiles, A_SMEM are ldmatrix'd from shared memory, the rest from registers; h's B fragments ldmatrix'd
//         from shared memory every step (H_SMEM=1) or kept in registers (H_SMEM=0, to isolate the tensor core).
// KIND 1: wgmma m64n8k16 (sm_90a), 3 warpgroups of 64 rows: A from registers (the same fragments) or, for the
//         last A_SMEM k-tiles, from shared memory through a descriptor; B (h) always from shared memory.
// KIND 2: entry matvec_split, R's register fragments real and the warps' roles as the fused forward's (below).
// In KIND 0 and 1 register A fragments cycle through 8 distinct ones (the tensor core's time does not depend
// on the values).
// CHAINS independent accumulators a tile (k-tiles alternate between them).
// Also `wgmma_check`: one m64n8k16 product with A from registers or shared memory, for the layouts' test.
#include <cuda_bf16.h>

#ifndef KIND
#define KIND 0
#endif
#ifndef A_SMEM
#define A_SMEM 29
#endif
#ifndef H_SMEM
#define H_SMEM 1
#endif
#ifndef WARPS
#define WARPS 6
#endif
#ifndef CHAINS
#define CHAINS 1
#endif

constexpr int KT = 48, ROWS = 192, MT_ALL = ROWS / 16;

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared-memory matrix descriptor, no swizzle (PTX ISA "Matrix Descriptor Format"): start, leading byte offset
// (between the two 8-element K chunks of a core-matrix column), stride byte offset (between 8-row groups).
__device__ __forceinline__ unsigned long long desc(unsigned addr, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }

__device__ __forceinline__ void wgmma_rs(float (&d)[4], const unsigned (&a)[4], unsigned long long b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, 1, 1, 1, 0;"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
__device__ __forceinline__ void wgmma_ss(float (&d)[4], unsigned long long a, unsigned long long b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, %4, %5, 1, 1, 1, 0, 0;"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "l"(a), "l"(b));
}

// h: 48 k-tiles x [2 chunks][8 n][8 k] bf16 = 12 KB (core-matrix order: both the ldmatrix and wgmma layouts).
// R in shared memory: mma.sync: [kt][m16 tile][4 matrices][8 rows][16 B]; wgmma: [kt][warpgroup][8 groups][2
// chunks][8 rows][16 B] (LBO 128, SBO 256).
extern "C" __global__ void __launch_bounds__(384, 1) matvec_bound(int steps, float* sink, long long* cycles) {
    extern __shared__ __align__(1024) unsigned char smem[];
    unsigned char* h = smem;
    unsigned char* r = smem + KT * 256;
    const int warp = threadIdx.x / 32;
    for (int i = threadIdx.x; i < (KT * 256 + A_SMEM * ROWS * 32) / 4; i += blockDim.x)
        reinterpret_cast<unsigned*>(smem)[i] = 0x3c003c00u ^ (i * 2654435761u & 0x00ff00ffu);
    unsigned areg[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) areg[i][j] = 0x3c003c00u + (threadIdx.x * 7 + i * 3 + j);
    __syncthreads();
    long long start = clock64();
    float acc[CHAINS][MT_ALL][4] = {};
#if KIND == 0
    constexpr int MT = MT_ALL / WARPS, A_TILE_BYTES = 512;  // an m16k16 tile: 4 8x8 matrices, 128 B each
    const int lane = threadIdx.x % 32;
    if (warp < WARPS) {
        const unsigned hbase = smem_u32(h) + lane * 16;  // x4: matrices = (kt, chunk 0), (kt, 1), (kt+1, 0), (kt+1, 1)
        const unsigned rbase = smem_u32(r) + (warp * MT) * A_TILE_BYTES + lane * 16;
        unsigned hreg[KT][2];
#if !H_SMEM
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) hreg[kt][0] = hreg[kt][1] = 0x3c003c00u + kt;
#endif
        for (int s = 0; s < steps; ++s) {
#pragma unroll
            for (int kt = 0; kt < KT; kt += 2) {
#if H_SMEM
                unsigned b[4];
                ldsm_x4(b, hbase + kt * 256);
                hreg[kt][0] = b[0]; hreg[kt][1] = b[1]; hreg[kt + 1][0] = b[2]; hreg[kt + 1][1] = b[3];
#endif
#pragma unroll
                for (int k = kt; k < kt + 2; ++k)
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        unsigned a[4];
                        if (k >= KT - A_SMEM) {
                            ldsm_x4(a, rbase + ((k - (KT - A_SMEM)) * MT_ALL + m) * A_TILE_BYTES);
                        } else {
#pragma unroll
                            for (int j = 0; j < 4; ++j) a[j] = areg[(k * MT + m) % 8][j];
                        }
                        mma16816(acc[k % CHAINS][m], a, hreg[k][0], hreg[k][1]);
                    }
            }
            __syncthreads();
        }
    } else {
        for (int s = 0; s < steps; ++s) __syncthreads();
    }
#else
    const int wg = warp / 4;
    const unsigned hbase = smem_u32(h);
    const unsigned rbase = smem_u32(r) + wg * 2048;
    for (int s = 0; s < steps; ++s) {
        wg_fence();
#pragma unroll
        for (int k = 0; k < KT; ++k) {
            const unsigned long long b = desc(hbase + k * 256, 128, 256);
            if (k >= KT - A_SMEM) {
                wgmma_ss(acc[k % CHAINS][0], desc(rbase + (k - (KT - A_SMEM)) * 3 * 2048, 128, 256), b);
            } else {
                wgmma_rs(acc[k % CHAINS][0], areg[k % 8], b);
            }
        }
        wg_commit();
        wg_wait0();
        __syncthreads();
    }
#endif
    long long stop = clock64();
    float total = 0.f;
#pragma unroll
    for (int c = 0; c < CHAINS; ++c)
#pragma unroll
        for (int m = 0; m < MT_ALL; ++m)
#pragma unroll
            for (int j = 0; j < 4; ++j) total += acc[c][m][j];
    sink[blockIdx.x * blockDim.x + threadIdx.x] = total;
    if (threadIdx.x == 0) cycles[blockIdx.x] = stop - start;
}

// KIND 2 (entry matvec_split): the product as the 1x768 kernels split it, with R's register fragments real (loaded
// once, distinct, so ptxas must keep them: its report says whether a split fits) and an optional producer
// warpgroup whose registers go to the compute warps (setmaxnreg, sm_90a). IDLE_WARPS warps first (they only meet
// the step's barrier, as DMA warps would), then M_WARPS x K_WARPS compute warps: warp (mg, kg) multiplies
// MT_ALL / M_WARPS m-tiles by its KT / K_WARPS k-tiles, the last A_SMEM of them read from shared memory with one
// 16-byte load a lane (fused_fw.cu Tile::RS), h's fragments by ldmatrix. The partial sums are not combined.
// REGS: 0 keeps the launch's registers; else the compute warpgroups raise theirs to REGS and the producer
// warpgroup (IDLE_WARPS == 4) lowers its to IDLE_REGS.
#if KIND == 2
#ifndef M_WARPS
#define M_WARPS 3
#endif
#ifndef K_WARPS
#define K_WARPS 2
#endif
#ifndef IDLE_WARPS
#define IDLE_WARPS 2
#endif
#ifndef REGS
#define REGS 0
#endif
#ifndef IDLE_REGS
#define IDLE_REGS 40
#endif

namespace split {
constexpr int CW = M_WARPS * K_WARPS, THREADS = 32 * (CW + IDLE_WARPS);
constexpr int MTW = MT_ALL / M_WARPS, KTW = KT / K_WARPS, AREG = KTW - A_SMEM;
constexpr int R_TILES = (A_SMEM > 0 ? A_SMEM : 1) * K_WARPS * MT_ALL;  // m16k16 tiles of R in shared memory
static_assert(MT_ALL % M_WARPS == 0 && KT % K_WARPS == 0 && KTW % 2 == 0 && A_SMEM <= KTW, "split");
static_assert(REGS == 0 || (IDLE_WARPS == 4 && CW % 4 == 0), "setmaxnreg works on whole warpgroups");
}  // namespace split

__device__ __forceinline__ void lds_v4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

extern "C" __global__ void __launch_bounds__(split::THREADS, 1) matvec_split(int steps, float* sink,
                                                                             long long* cycles) {
    using namespace split;
    extern __shared__ __align__(1024) unsigned char smem[];
    const unsigned h = smem_u32(smem), r = h + KT * 256;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = threadIdx.x; i < (KT * 256 + R_TILES * 512) / 4; i += blockDim.x)
        reinterpret_cast<unsigned*>(smem)[i] = 0x3c003c00u ^ (i * 2654435761u & 0x00ff00ffu);
    __syncthreads();
    long long start = clock64();
    float acc[MTW][4] = {};
    if (warp >= IDLE_WARPS) {
        // (inside the branch: ptxas budgets the code that the setmaxnreg dominates by its count)
#if REGS
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGS));
#endif
        const int c = warp - IDLE_WARPS, mg = c % M_WARPS, kg = c / M_WARPS;
        const unsigned hbase = h + kg * KTW * 256 + lane * 16;
        const unsigned rbase = r + (kg * MT_ALL + mg * MTW) * 512 + lane * 16;
        unsigned areg[AREG > 0 ? AREG : 1][MTW][4];
#pragma unroll
        for (int k = 0; k < AREG; ++k)
#pragma unroll
            for (int m = 0; m < MTW; ++m)
                lds_v4(areg[k][m], r + ((k * MTW + m + c * 7) % R_TILES) * 512 + lane * 16);
        for (int s = 0; s < steps; ++s) {
#pragma unroll
            for (int kt = 0; kt < KTW; kt += 2) {
                unsigned b[4];
                ldsm_x4(b, hbase + kt * 256);
#pragma unroll
                for (int k = kt; k < kt + 2; ++k)
#pragma unroll
                    for (int m = 0; m < MTW; ++m) {
                        if (k >= AREG) {
                            unsigned a[4];
                            lds_v4(a, rbase + ((k - AREG) * K_WARPS * MT_ALL + m) * 512);
                            mma16816(acc[m], a, b[2 * (k - kt)], b[2 * (k - kt) + 1]);
                        } else {
                            mma16816(acc[m], areg[k][m], b[2 * (k - kt)], b[2 * (k - kt) + 1]);
                        }
                    }
            }
            __syncthreads();
        }
    } else {
#if REGS
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(IDLE_REGS));
#endif
        for (int s = 0; s < steps; ++s) __syncthreads();
    }
    long long stop = clock64();
    float total = 0.f;
#pragma unroll
    for (int m = 0; m < MTW; ++m)
#pragma unroll
        for (int j = 0; j < 4; ++j) total += acc[m][j];
    sink[blockIdx.x * blockDim.x + threadIdx.x] = total;
    if (threadIdx.x == 0) cycles[blockIdx.x] = stop - start;
}
#endif  // KIND == 2

// D[64][8] = A[64][16] B[16][8], A row-major (from registers when A_FROM_SMEM is 0, else from shared memory in
// the descriptor layout above), B given as Bt[8][16] (K-major). One warpgroup.
extern "C" __global__ void __launch_bounds__(128, 1) wgmma_check(const __nv_bfloat16* A, const __nv_bfloat16* Bt,
                                                                  float* D, int a_from_smem) {
    __shared__ __align__(128) __nv_bfloat16 sa[64 * 16];
    __shared__ __align__(128) __nv_bfloat16 sb[8 * 16];
    const int t = threadIdx.x, warp = t / 32, lane = t % 32, g = lane / 4, c = lane % 4;
    // Core-matrix order: element (row, k) at chunk k / 8, row group row / 8: group * 256 + chunk * 128 +
    // (row % 8) * 16 + (k % 8) * 2 bytes.
    for (int i = t; i < 64 * 16; i += 128) {
        const int row = i / 16, k = i % 16;
        sa[((row / 8) * 256 + (k / 8) * 128 + (row % 8) * 16 + (k % 8) * 2) / 2] = A[i];
    }
    for (int i = t; i < 8 * 16; i += 128) {
        const int n = i / 16, k = i % 16;
        sb[((k / 8) * 128 + n * 16 + (k % 8) * 2) / 2] = Bt[i];
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    auto pair = [&](int row, int k) {
        return (unsigned)__bfloat16_as_ushort(A[row * 16 + k]) |
               ((unsigned)__bfloat16_as_ushort(A[row * 16 + k + 1]) << 16);
    };
    const int r0 = 16 * warp + g;
    unsigned a[4] = {pair(r0, 2 * c), pair(r0 + 8, 2 * c), pair(r0, 2 * c + 8), pair(r0 + 8, 2 * c + 8)};
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    const unsigned long long b = desc(smem_u32(sb), 128, 256);
    wg_fence();
    if (a_from_smem) {
        wgmma_ss(d, desc(smem_u32(sa), 128, 256), b);
    } else {
        wgmma_rs(d, a, b);
    }
    wg_commit();
    wg_wait0();
    D[r0 * 8 + 2 * c] = d[0];
    D[r0 * 8 + 2 * c + 1] = d[1];
    D[(r0 + 8) * 8 + 2 * c] = d[2];
    D[(r0 + 8) * 8 + 2 * c + 1] = d[3];
}
