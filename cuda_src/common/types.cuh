// Storage types (float, __nv_bfloat16, __half) to and from the float32 the math runs in.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace flashrnn {

__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }

}  // namespace flashrnn

// ---- Memory accesses by address, for the persistent kernels' step loops -------------------------------------
// Shared memory by its 32-bit shared-window address (what mma::smem_u32 returns), global memory by a 64-bit
// address. A loop keeps one such base per thread (computed once, before the loop) and adds compile-time
// offsets, so every access is one instruction with an immediate offset. Through generic pointers and element
// indices ptxas rebuilt the lane-derived part of every address each step: ~60 of the ~290 instructions of a
// fused forward step at 12x64 (issue 5). Each asm is volatile with a "memory" clobber, so the compiler keeps
// them in program order with the kernel's other memory accesses (ptxas still schedules by address).
namespace flashrnn {

__device__ __forceinline__ void st_shared_b16(unsigned addr, unsigned short bits) {
    asm volatile("st.shared.b16 [%0], %1;" ::"r"(addr), "h"(bits) : "memory");
}
__device__ __forceinline__ unsigned short ld_shared_b16(unsigned addr) {
    unsigned short bits;
    asm volatile("ld.shared.b16 %0, [%1];" : "=h"(bits) : "r"(addr) : "memory");
    return bits;
}
__device__ __forceinline__ void st_shared_b32(unsigned addr, unsigned bits) {
    asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(bits) : "memory");
}
__device__ __forceinline__ unsigned ld_shared_b32(unsigned addr) {
    unsigned bits;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(bits) : "r"(addr) : "memory");
    return bits;
}
__device__ __forceinline__ uint4 ld_shared_v4(unsigned addr) {
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr)
                 : "memory");
    return v;
}
__device__ __forceinline__ void st_shared_v4(unsigned addr, const uint4& v) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}
__device__ __forceinline__ uint2 ld_shared_v2(unsigned addr) {
    uint2 v;
    asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ void st_shared_v2(unsigned addr, const uint2& v) {
    asm volatile("st.shared.v2.b32 [%0], {%1, %2};" ::"r"(addr), "r"(v.x), "r"(v.y) : "memory");
}
__device__ __forceinline__ void st_global_v4(unsigned long long addr, const uint4& v) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}
// 8 bytes in global memory that another block polls (relaxed, gpu scope: strong, so L2, never a stale L1 line; an
// aligned 8-byte access is single-copy atomic, so a word and the tag beside it arrive together).
__device__ __forceinline__ void st_relaxed_gpu_u64(unsigned long long* p, unsigned long long v) {
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ unsigned long long ld_relaxed_gpu_u64(const unsigned long long* p) {
    unsigned long long v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

// A storage value (float, bf16, fp16) in shared memory, converted from / to the float32 the math runs in.
template <class T> __device__ __forceinline__ void st_shared_f(unsigned addr, float v);
template <> __device__ __forceinline__ void st_shared_f<float>(unsigned addr, float v) {
    asm volatile("st.shared.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory");
}
template <> __device__ __forceinline__ void st_shared_f<__nv_bfloat16>(unsigned addr, float v) {
    st_shared_b16(addr, __bfloat16_as_ushort(__float2bfloat16_rn(v)));
}
template <> __device__ __forceinline__ void st_shared_f<__half>(unsigned addr, float v) {
    st_shared_b16(addr, __half_as_ushort(__float2half_rn(v)));
}
template <class T> __device__ __forceinline__ float ld_shared_f(unsigned addr);
template <> __device__ __forceinline__ float ld_shared_f<float>(unsigned addr) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
    return v;
}
template <> __device__ __forceinline__ float ld_shared_f<__nv_bfloat16>(unsigned addr) {
    return __bfloat162float(__ushort_as_bfloat16(ld_shared_b16(addr)));
}
template <> __device__ __forceinline__ float ld_shared_f<__half>(unsigned addr) {
    return __half2float(__ushort_as_half(ld_shared_b16(addr)));
}

// Two adjacent storage values (a at addr, b after it) in one access: 32 bits for bf16 and fp16, 64 for float.
template <class T> __device__ __forceinline__ void st_shared_f2(unsigned addr, float a, float b);
template <> __device__ __forceinline__ void st_shared_f2<float>(unsigned addr, float a, float b) {
    asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(a), "f"(b) : "memory");
}
template <> __device__ __forceinline__ void st_shared_f2<__nv_bfloat16>(unsigned addr, float a, float b) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    st_shared_b32(addr, *reinterpret_cast<const unsigned*>(&v));
}
template <> __device__ __forceinline__ void st_shared_f2<__half>(unsigned addr, float a, float b) {
    const __half2 v = __floats2half2_rn(a, b);
    st_shared_b32(addr, *reinterpret_cast<const unsigned*>(&v));
}
template <class T> __device__ __forceinline__ void ld_shared_f2(unsigned addr, float& a, float& b);
template <> __device__ __forceinline__ void ld_shared_f2<float>(unsigned addr, float& a, float& b) {
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(a), "=f"(b) : "r"(addr) : "memory");
}
template <> __device__ __forceinline__ void ld_shared_f2<__nv_bfloat16>(unsigned addr, float& a, float& b) {
    const unsigned v = ld_shared_b32(addr);
    a = __uint_as_float(v << 16);
    b = __uint_as_float(v & 0xffff0000u);
}
template <> __device__ __forceinline__ void ld_shared_f2<__half>(unsigned addr, float& a, float& b) {
    const unsigned v = ld_shared_b32(addr);
    const __half2 h = *reinterpret_cast<const __half2*>(&v);
    a = __low2float(h);
    b = __high2float(h);
}

}  // namespace flashrnn
