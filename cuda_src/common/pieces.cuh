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
    // Writes the staging buffer `buf_off` bytes past buffer 0, then moves on by one step. (Not read + write
    // below: with a local Held between them, ptxas spilled 8-16 B in the scatter backward at D=768 and the
    // forward at D=640, kernels at the 255-register cap.)
    __device__ __forceinline__ void flush(unsigned buf_off) {
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            if ((live >> j) & 1u) st_global_v4(dst[j], ld_shared_v4(src[j] + buf_off));
            dst[j] += stride[j];
        }
    }
    // flush in two halves, for a step whose warps issue in order: the shared-memory loads early, the global
    // stores (which would wait for them) later, with other work between. `held` is the caller's (a member
    // would stay live across the caller's loop).
    using Held = uint4[PER];
    __device__ __forceinline__ void read(unsigned buf_off, Held& held) const {
#pragma unroll
        for (int j = 0; j < PER; ++j)
            if ((live >> j) & 1u) held[j] = ld_shared_v4(src[j] + buf_off);
    }
    __device__ __forceinline__ void write(const Held& held) {
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            if ((live >> j) & 1u) st_global_v4(dst[j], held[j]);
            dst[j] += stride[j];
        }
    }
};

// Which of XG mbarrier groups counts the slice a block receives from the block `distance` ranks below it (1 ..
// CL - 1): about equal groups in the order the senders send (SliceSender: to rank + 1 first).
__device__ __forceinline__ constexpr int exchange_group(int distance, int XG, int CL) {
    return (distance - 1) * XG / (CL - 1);
}

// A block's own slice of a double-buffered exchange buffer (the forward's h, the backward's drs), sent each step
// to the other CL-1 blocks of its cluster as 16-byte st.async, counted by the receivers' mbarrier for that
// buffer (no cluster barrier a step: issue 5 measured a cluster.sync at 0.44-0.76 us). SENDERS threads share the
// sending (a whole block, or one warp sending the pieces it wrote itself); `me` is this thread's index among
// them. Every thread owns the same pieces every step, so it keeps their addresses in buffer 0 and the blocks they
// go to. CHUNKS: pieces of the slice (of the warp's part of it); piece_at(c): the shared address of piece c in
// buffer 0. The pieces go to rank + 1 first, then rank + 2, ... A receiver that keeps its columns rotated
// (SHIFT > 0, the forward's DMA warp) takes the slice of the block `distance` ranks below it SHIFT * distance
// bytes further than the sender keeps it, counted by the mbarrier of group exchange_group(distance, XG, CL) (8
// bytes apart).
template <int CHUNKS, int CL, int SENDERS, bool KEEP, int SHIFT = 0, int XG = 1> struct SliceSender {
    static constexpr int TOTAL = CHUNKS * (CL - 1), PER = (TOTAL + SENDERS - 1) / SENDERS;
    static constexpr bool ROTATED = SHIFT != 0 || XG > 1;
    unsigned src[PER > 0 ? PER : 1];     // shared address of the piece in buffer 0
    unsigned target[PER > 0 ? PER : 1];  // the block it goes to (PER = 0: one block a head, nothing to send)
    unsigned live;                       // bit j: this thread sends piece j (the last round may be partial)
    unsigned rank;                       // (ROTATED: the distance to a target, from which its column and mbarrier)

    template <class PieceAt>
    __device__ __forceinline__ SliceSender(unsigned my_rank, int me, PieceAt piece_at) : live(0u), rank(my_rank) {
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const int i = me + j * SENDERS;
            src[j] = keep<KEEP>(piece_at(i % CHUNKS));
            target[j] = keep<KEEP>((rank + unsigned(i / CHUNKS + 1)) % CL);
            if (i < TOTAL) live |= 1u << j;
        }
        if constexpr (TOTAL % SENDERS != 0) live = keep<KEEP>(live);
    }
    // Sends the buffer `buf_off` bytes past buffer 0, counted by the receivers' mbarrier `bar` (a local address;
    // ROTATED: the buffer's first group's).
    __device__ __forceinline__ void send(unsigned buf_off, unsigned bar) {
#pragma unroll
        for (int j = 0; j < PER; ++j)
            if (TOTAL % SENDERS == 0 || ((live >> j) & 1u)) {
                const unsigned from = src[j] + buf_off;
                if constexpr (ROTATED) {
                    const int distance = int((target[j] + CL - rank) % CL);
                    cluster::st_async_16(cluster::map(from + unsigned(SHIFT * distance), target[j]), ld_shared_v4(from),
                                         cluster::map(bar + unsigned(8 * exchange_group(distance, XG, CL)), target[j]));
                } else
                    cluster::st_async_16(cluster::map(from, target[j]), ld_shared_v4(from),
                                         cluster::map(bar, target[j]));
            }
    }
};

// The mbarriers (8 bytes each at `bars`) that count an exchange's bytes: `groups` for each of its `buffers` (two
// unless said; buffer b's group g at bars + 8 * (b * groups + g)), initialised by thread 0, each armed for its
// first phase (bytes_of(g) from the other blocks). A cluster barrier must follow before any block sends.
template <class BytesOf>
__device__ __forceinline__ void exchange_barriers_init(unsigned bars, int groups, BytesOf bytes_of, int buffers = 2) {
    if (threadIdx.x == 0)
        for (int i = 0; i < buffers * groups; ++i) cluster::mbarrier_init(bars + 8 * i, 1);
    // Without this, compute-sanitizer's racecheck reports thread 0's init and first arrival as a race (a
    // warning; it seems to count mbarrier operations against the whole warp). With it: 0 hazards
    // (bench/results/sanitizer/README.md).
    __syncwarp();
    if (threadIdx.x == 0)
        for (int i = 0; i < buffers * groups; ++i) cluster::mbarrier_expect(bars + 8 * i, bytes_of(i % groups));
}
// One mbarrier a buffer, counting all `recv_bytes`.
__device__ __forceinline__ void exchange_barriers_init(unsigned bars, unsigned recv_bytes, int buffers = 2) {
    exchange_barriers_init(bars, 1, [=](int) { return recv_bytes; }, buffers);
}

// At a cluster kernel's exit: no block leaves while another may still address its memory, and the mbarriers
// are invalidated before their memory serves the next block on this SM.
__device__ __forceinline__ void exchange_barriers_exit(unsigned bars, int groups = 1, int buffers = 2) {
    cluster::sync();
    if (threadIdx.x == 0)
        for (int i = 0; i < buffers * groups; ++i) cluster::mbarrier_inval(bars + 8 * i);
}

}  // namespace flashrnn
