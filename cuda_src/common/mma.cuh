// Tensor-core and asynchronous-copy helpers in inline PTX (NVRTC from the pip wheels cannot compile <mma.h>).
//
// Fragment layouts of mma.sync.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), with
// g = lane / 4 and c = lane % 4:
//   A (16x16, row-major): reg0 = A[g][2c..2c+1], reg1 = A[g+8][2c..], reg2 = A[g][2c+8..], reg3 = A[g+8][2c+8..]
//   B (16x8, "col"):      reg0 = B[2c..2c+1][g], reg1 = B[2c+8..2c+9][g]
//   C (16x8, float):      c0,c1 = C[g][2c..2c+1], c2,c3 = C[g+8][2c..2c+1]
// Two 16-bit elements share a register, the lower index in the lower half.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace flashrnn {
namespace mma {

// 32-bit shared-memory address of a generic pointer into shared memory (what ldmatrix/cp.async take).
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned addr;
    asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(p));
    return addr;
}

// Two 8x8 matrices of 16-bit elements; lanes 0-15 give the row addresses (16 bytes each).
__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

// Four 8x8 matrices; lanes 8j..8j+7 give the row addresses of matrix j.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// The transposed forms: lane l's row address points at a row of the matrix as stored, and each thread receives
// elements of the transpose (what an A or B fragment needs when the operand is stored the other way round).
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned& r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];" : "=r"(r) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// d += A * B on one m16n8k16 tile (run) or m16n8k8 tile (run_k8), float32 accumulate. Op is the 16-bit
// operand type.
template <class Op> struct Mma;

template <> struct Mma<__nv_bfloat16> {
    __device__ __forceinline__ static void run(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ __forceinline__ static void run_k8(float (&d)[4], const unsigned (&a)[2], unsigned b0) {
        asm("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(b0));
    }
};

template <> struct Mma<__half> {
    __device__ __forceinline__ static void run(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ __forceinline__ static void run_k8(float (&d)[4], const unsigned (&a)[2], unsigned b0) {
        asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(b0));
    }
};

// Round a float to the 16-bit operand type and back (the operand's value as the tensor core sees it).
template <class Op> __device__ __forceinline__ Op to_op(float v);
template <> __device__ __forceinline__ __nv_bfloat16 to_op<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half to_op<__half>(float v) { return __float2half_rn(v); }
__device__ __forceinline__ float op_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float op_to_float(__half v) { return __half2float(v); }

// The bits of a 16-bit operand, and two of them in one register, `lo` (the lower index) in the lower half.
__device__ __forceinline__ unsigned op_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ unsigned op_bits(__half v) { return __half_as_ushort(v); }
template <class Op> __device__ __forceinline__ unsigned pack2(Op lo, Op hi) {
    return op_bits(lo) | (op_bits(hi) << 16);
}

}  // namespace mma

// How a storage type reaches the tensor cores: the 16-bit operand type, and how many operands (hi, lo) represent
// one value. float32 storage takes bf16 hi + lo (16 significant bits together, each product hi*hi + hi*lo + lo*hi:
// relative error about 1e-5, inside SPEC's 1e-4); or, where the solver found no launch that holds R twice over
// (FLASHRNN_F32_HALF=1: float32 lstm, slstm and gru D = 768, ...: constrint.problems.KernelModel.f32_half_operands),
// one fp16 operand, as many bits as TF32's (relative error about 1e-4, inside SPEC's 1e-3 for TF32 matrix units) in
// half the registers of TF32's 32-bit operands, at the 16-bit mma's rate. fp16's range is narrower than TF32's:
// values beyond it saturate to +-65504 (split), never inf.
#ifndef FLASHRNN_F32_HALF
#define FLASHRNN_F32_HALF 0
#endif
template <class T> struct OperandOf;
template <> struct OperandOf<__nv_bfloat16> { using Op = __nv_bfloat16; static constexpr int SPLIT = 1; };
template <> struct OperandOf<__half> { using Op = __half; static constexpr int SPLIT = 1; };
#if FLASHRNN_F32_HALF
template <> struct OperandOf<float> { using Op = __half; static constexpr int SPLIT = 1; };
#else
template <> struct OperandOf<float> { using Op = __nv_bfloat16; static constexpr int SPLIT = 2; };
#endif

// max and min that return NaN where either argument is one (fmaxf and fminf return the other).
__device__ __forceinline__ float max_nan(float a, float b) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float min_nan(float a, float b) {
    float r;
    asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

// v ~ out[0] + out[1] + ...: the first operand is v rounded, each further one the rounded remainder. In a float32
// kernel with fp16 operands v first saturates to fp16's finite range; min/max.NaN keep a NaN a NaN (fminf would
// turn it into the bound). 16-bit storage needs no clamp: its values are operands already, and h is a cell's
// output within [-1, 1].
template <class Op, int SPLIT> __device__ __forceinline__ void split(float v, Op (&out)[SPLIT]) {
    if constexpr (FLASHRNN_F32_HALF != 0 && SPLIT == 1) v = min_nan(max_nan(v, -65504.f), 65504.f);
    out[0] = mma::to_op<Op>(v);
    if constexpr (SPLIT == 2) out[1] = mma::to_op<Op>(v - mma::op_to_float(out[0]));
}

namespace mma {

// 16-byte asynchronous copy global -> shared, bypassing L1; when `valid` is false nothing is read and the
// 16 destination bytes are zero-filled (src-size 0), so padded rows never hold stale data.
__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

}  // namespace mma
}  // namespace flashrnn

// ---- Thread-block clusters (sm_90): distributed shared memory, mbarriers, cluster barrier -----------------
// On older targets these compile to a trap: the backend never launches a cluster variant there.
namespace flashrnn {
namespace cluster {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FLASHRNN_SM90(...) __VA_ARGS__
#else
#define FLASHRNN_SM90(...) __trap();
#endif

__device__ __forceinline__ unsigned rank() {
    unsigned r = 0;
    FLASHRNN_SM90(asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));)
    return r;
}

// The shared::cluster address of the same variable in block `target` of this cluster.
__device__ __forceinline__ unsigned map(unsigned local_addr, unsigned target) {
    unsigned r = 0;
    FLASHRNN_SM90(asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(local_addr), "r"(target));)
    return r;
}

// All threads of the cluster: release what this thread wrote, acquire what the others wrote (full cost;
// used only at start and exit).
__device__ __forceinline__ void sync() {
    FLASHRNN_SM90(asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");)
}

// The same barrier without the memory fences (what orders memory is the caller's to say): every thread of the
// cluster arrives, then waits for all of them; between the two a thread may run on.
__device__ __forceinline__ void arrive_relaxed() {
    FLASHRNN_SM90(asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");)
}
__device__ __forceinline__ void wait() {
    FLASHRNN_SM90(asm volatile("barrier.cluster.wait.aligned;" ::: "memory");)
}

__device__ __forceinline__ void mbarrier_init(unsigned bar, unsigned count) {
    FLASHRNN_SM90(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
                  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");)
}

// The barrier is done with: its shared memory may be reused (by the next block on this SM; PTX wants an
// mbarrier invalidated before its memory serves anything else).
__device__ __forceinline__ void mbarrier_inval(unsigned bar) {
    FLASHRNN_SM90(asm volatile("mbarrier.inval.shared::cta.b64 [%0];" ::"r"(bar) : "memory");)
}

// One arrival that also announces `bytes` of transactions for the barrier's current phase.
__device__ __forceinline__ void mbarrier_expect(unsigned bar, unsigned bytes) {
    FLASHRNN_SM90(asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");)
}

// One arrival (release at CTA scope: what this thread wrote before is visible to the threads the phase releases).
__device__ __forceinline__ void mbarrier_arrive(unsigned bar) {
    FLASHRNN_SM90(asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");)
}

// Wait for the phase of `bar` with this parity to complete; acquire at cluster scope, so the bytes that other
// blocks' st.async delivered are visible.
__device__ __forceinline__ void mbarrier_wait(unsigned bar, unsigned parity) {
    FLASHRNN_SM90(asm volatile(
        "{\n\t.reg .pred done;\n"
        "WAIT_%=:\n\t"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra WAIT_%=;\n}" ::"r"(bar), "r"(parity) : "memory");)
}

// 16 bytes into another block's shared memory; the bytes count towards that block's mbarrier `remote_bar`.
__device__ __forceinline__ void st_async_16(unsigned remote_addr, const uint4& v, unsigned remote_bar) {
    FLASHRNN_SM90(asm volatile(
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];"
        ::"r"(remote_addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(remote_bar) : "memory");)
}

// 8 bytes, likewise.
__device__ __forceinline__ void st_async_8(unsigned remote_addr, const uint2& v, unsigned remote_bar) {
    FLASHRNN_SM90(asm volatile(
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.b32 [%0], {%1, %2}, [%3];"
        ::"r"(remote_addr), "r"(v.x), "r"(v.y), "r"(remote_bar) : "memory");)
}

#undef FLASHRNN_SM90

}  // namespace cluster
}  // namespace flashrnn
