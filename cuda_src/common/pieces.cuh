// 16-byte pieces that every thread of a persistent kernel moves each step: the same pieces every step, at
// addresses that move by a fixed stride a step. A thread keeps each piece's addresses and advances them by the
// stride after each call, so a step's copy costs no index arithmetic (issue 5: rebuilt from element indices every
// step, the copies took ~70 of the ~290 instructions of a fused forward step at 12x64).
#pragma once

#include "common/mma.cuh"
#include "common/types.cuh"

namespace flashrnn {

// A per-thread constant the compiler must keep in a register (where KEEP). Values derived from threadIdx are
// otherwise rebuilt inside the step loop (the special-register read counts as free to the compiler, not to the
// hardware: ncu put 16% of a 12x64 forward's stall samples on one such S2R + compare, 7.5% of the backward's).
// Kernels pass KEEP = false where registers are the limit (float32 storage, R split in two): a value kept
// there made a gru backward spill, and rebuilding it is cheaper than a spill.
template <bool KEEP = true> __device__ __forceinline__ unsigned keep(unsigned v) {
    if constexpr (KEEP) asm volatile("" : "+r"(v));
    return v;
}
template <bool KEEP = true> __device__ __forceinline__ unsigned long long keep(unsigned long long v) {
    if constexpr (KEEP) asm volatile("" : "+l"(v));
    return v;
}
template <bool KEEP = true> __device__ __forceinline__ long long keep(long long v) {
    if constexpr (KEEP) asm volatile("" : "+l"(v));
    return v;
}

// Global memory -> shared memory with cp.async (a step's inputs, into one of several stages).
template <int PER, bool KEEP = true> struct LoadPieces {
    unsigned long long src[PER];  // global address of piece j for the next call
    long long stride[PER];        // bytes added to src after each call (negative: backwards in time)
    unsigned dst[PER];            // shared address of piece j in stage 0
    unsigned valid;               // bit j: read piece j (else its 16 bytes are zero-filled, nothing is read)
    unsigned exists;              // bit j: the thread has a piece j at all

    __device__ __forceinline__ void set(int j, unsigned dst_addr, const void* src_ptr, long long stride_bytes,
                                        bool is_valid, bool has) {
        if (j == 0) valid = exists = 0u;
        dst[j] = keep<KEEP>(dst_addr);
        src[j] = keep<KEEP>(reinterpret_cast<unsigned long long>(src_ptr));
        stride[j] = keep<KEEP>(stride_bytes);
        if (is_valid) valid |= 1u << j;
        if (has) exists |= 1u << j;
        if (j == PER - 1) valid = keep<KEEP>(valid), exists = keep<KEEP>(exists);
    }
    // Copies every piece into the stage `stage_off` bytes past stage 0, then moves on by one step.
    __device__ __forceinline__ void issue(unsigned stage_off) {
#pragma unroll
        for (int j = 0; j < PER; ++j)
            if ((exists >> j) & 1u) {
                mma::cp_async_16(dst[j] + stage_off, reinterpret_cast<const void*>(src[j]), (valid >> j) & 1u);
                src[j] += stride[j];
            }
    }
};

// Shared memory -> global memory (a step's staged outputs, from one of two staging buffers).
template <int PER, bool KEEP = true> struct StorePieces {
    unsigned long long dst[PER];  // global address of piece j for the next call
    long long stride[PER];        // bytes added to dst after each call (negative: backwards in time)
    unsigned src[PER];            // shared address of piece j in staging buffer 0
    unsigned live;                // bit j: write piece j (else none: no piece, or a row past B)

    __device__ __forceinline__ void set(int j, unsigned src_addr, const void* dst_ptr, long long stride_bytes,
                                        bool is_live) {
        if (j == 0) live = 0u;
        src[j] = keep<KEEP>(src_addr);
        dst[j] = keep<KEEP>(reinterpret_cast<unsigned long long>(dst_ptr));
        stride[j] = keep<KEEP>(stride_bytes);
        if (is_live) live |= 1u << j;
        if (j == PER - 1) live = keep<KEEP>(live);
    }
    // Writes the staging buffer `buf_off` bytes past buffer 0, then moves on by one step.
    __device__ __forceinline__ void flush(unsigned buf_off) {
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            if ((live >> j) & 1u) st_global_v4(dst[j], ld_shared_v4(src[j] + buf_off));
            dst[j] += stride[j];
        }
    }
};

}  // namespace flashrnn
