// The per-step exchange of h alone (no product, no cells): what one step of a head split over GROUPS clusters of
// CL blocks would pay to move h, for bench/cluster_exchange.py. Not part of the library.
//
// Why: at 1x768 one 16-block cluster holds a head, and each SM reads ~147 KB of R's k-tiles from shared memory a
// step, the bound of the forward (bench/results/phases/2026-12-01-h200-matvec-bound.txt). Two clusters a head
// halve R a block (most of it then fits in registers) but need h from the other cluster every step, through
// global memory (distributed shared memory ends at the cluster). This kernel times that hand-off, against the
// in-cluster exchange the fused kernels use, with the payloads of the split:
// Defines CX_CL, CX_GROUPS, CX_SLICE, CX_LOCAL, CX_REMOTE, CX_SIGNAL (the constants below).
//   - LOCAL: each block sends its slice of h (SLICE 16-byte chunks) to the other CL-1 blocks of its cluster as
//     st.async, counted by the receiver's mbarrier (the fused forward's exchange, common/pieces.cuh).
//   - REMOTE: each block also publishes its slice in global memory for the other GROUPS-1 clusters of its head,
//     which wait for it and copy it into their h buffer. SIGNAL 0: then one counter a cluster (red.release.gpu
//     by each block, polled by one lane of the readers); 1: one flag a block (st.release.gpu of the step, polled
//     by a lane each); 2: no separate signal: 8-byte words of 4 data bytes and the step as a tag, stored and
//     polled in place (relaxed, gpu scope; an aligned 8-byte access is single-copy atomic; common/types.cuh), twice
//     the bytes (fused_fw.cu HeadHandoff's way).
// A step: spin `work` cycles (the product and cells that would sit there), write the own slice of h_t, barrier,
// send / publish it, wait for the others' slices, copy the remote ones in, barrier. `verify` checks every chunk
// of h_t against the value its sender wrote (errors[0]); a poll that gives up after POLL_LIMIT tries (clusters
// of a head not co-resident, or a lost signal) counts in errors[1] and ends the polls of every block.
// cycles[block] = clock64 cycles of the step loop (the host takes differences of two step counts).
// placement[block] = (SM, rank, start and end in %globaltimer ns): which blocks shared an SM, and when.
#include "common/pieces.cuh"

#ifndef CX_CL
#define CX_CL 16
#endif
#ifndef CX_GROUPS
#define CX_GROUPS 2
#endif
#ifndef CX_SLICE
#define CX_SLICE 24
#endif
#ifndef CX_LOCAL
#define CX_LOCAL 1
#endif
#ifndef CX_REMOTE
#define CX_REMOTE 1
#endif
#ifndef CX_SIGNAL
#define CX_SIGNAL 1
#endif
// CX_STAGGER=1 (--sync-repro): the mbarriers of cluster c at 16 (c % 64) bytes further, so that two blocks of one
// rank on one SM never share a cluster-window address (rank << 24 | offset).
#ifndef CX_STAGGER
#define CX_STAGGER 0
#endif

using namespace flashrnn;

constexpr int CL = CX_CL, GROUPS = CX_GROUPS, SLICE = CX_SLICE, SIGNAL = CX_SIGNAL;
constexpr bool LOCAL = CX_LOCAL != 0, REMOTE = CX_REMOTE != 0;

constexpr int THREADS = 256;
constexpr int H_CHUNKS = GROUPS * CL * SLICE;            // h of the whole head, in 16-byte chunks
constexpr unsigned H_BUF = unsigned(H_CHUNKS) * 16u;      // one of the two h buffers
constexpr unsigned RECV_BYTES = (CL - 1) * SLICE * 16u;   // what a block's mbarrier counts a step
constexpr int REMOTE_CHUNKS = (GROUPS - 1) * CL * SLICE;  // what a block copies in from global memory a step
constexpr int LL_WORDS = SLICE * 4;                       // SIGNAL 2: 8-byte words a block's slice takes
constexpr int LL_IN = (GROUPS - 1) * CL * LL_WORDS;        // ... of the other clusters' a block reads a step
constexpr int LL_PER = LL_IN > 0 ? (LL_IN + THREADS - 1) / THREADS : 1;  // ... a thread
constexpr int POLL_LIMIT = 1 << 20;

static_assert(!REMOTE || GROUPS > 1, "REMOTE needs another cluster in the head");
static_assert(LOCAL || REMOTE, "nothing to exchange");

__device__ __forceinline__ uint4 chunk_value(int t, int part, int rank, int j) {
    return make_uint4(unsigned(t + 1), unsigned(part), unsigned(rank), unsigned(j));
}

__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_gpu(unsigned* p, unsigned v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void red_release_gpu(unsigned* p, unsigned v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
// L2 only: the line of this buffer read two steps ago may still sit in L1.
__device__ __forceinline__ uint4 ld_global_cg_v4(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ unsigned long long globaltimer_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned smid() {
    unsigned s;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
    return s;
}

// Polls until ready() or the limit; a give-up is counted once and stops every later poll of the launch.
template <class Ready> __device__ __forceinline__ void poll(Ready ready, unsigned* errors) {
    for (int i = 0; !ready(); ++i)
        if ((i & 63) == 63 && (i >= POLL_LIMIT || *reinterpret_cast<volatile unsigned*>(errors + 1) != 0u)) {
            if (i >= POLL_LIMIT) atomicAdd(errors + 1, 1u);
            return;
        }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    cluster_exchange(int steps, int work, int verify, unsigned* signals, void* gbuf, unsigned* errors,
                     long long* cycles, unsigned long long* placement) {
    extern __shared__ __align__(16) unsigned char smem[];
    const unsigned long long start_ns = globaltimer_ns();  // resident from here
    const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
    const int rank = int(cluster::rank()), cid = int(blockIdx.x) / CL, head = cid / GROUPS, part = cid % GROUPS;
    const unsigned hb = mma::smem_u32(smem), bars = hb + 2 * H_BUF + (CX_STAGGER ? 16u * unsigned(cid % 64) : 0u);
    const int own = (part * CL + rank) * SLICE;  // this block's first chunk of h
    // Global slots: [head][part][rank][buffer][SLICE chunks] (SIGNAL 2: LL_WORDS 8-byte words instead).
    auto slot16 = [&](int p, int r, int buf) {
        return reinterpret_cast<uint4*>(gbuf) + (((head * GROUPS + p) * CL + r) * 2 + buf) * SLICE;
    };
    auto slot8 = [&](int p, int r, int buf) {
        return reinterpret_cast<unsigned long long*>(gbuf) + (((head * GROUPS + p) * CL + r) * 2 + buf) * LL_WORDS;
    };
    unsigned* const head_signals = signals + head * GROUPS * CL;  // SIGNAL 0: [part][0]; 1: [part][rank]

    if (LOCAL) exchange_barriers_init(bars, RECV_BYTES);
    cluster::sync();  // mbarriers initialised before any block sends
    const long long start = clock64();
#pragma unroll 1
    for (int t = 0; t < steps; ++t) {
        const int buf = t & 1;
        const unsigned hbuf = hb + unsigned(buf) * H_BUF, bar = bars + 8u * unsigned(buf);
        auto chunk = [&](int i) { return hbuf + 16u * unsigned(i); };  // chunk i of h_t (own slice: own + j)
        if (work > 0) {
            const long long s = clock64();
            while (clock64() - s < work) {
            }
        }
        for (int j = tid; j < SLICE; j += THREADS) st_shared_v4(chunk(own + j), chunk_value(t, part, rank, j));
        __syncthreads();  // the own slice of h_t complete
        if (LOCAL) {      // to rank + 1 first, as SliceSender does
            for (int i = tid; i < SLICE * (CL - 1); i += THREADS) {
                const unsigned from = chunk(own + i % SLICE), target = unsigned(rank + 1 + i / SLICE) % CL;
                cluster::st_async_16(cluster::map(from, target), ld_shared_v4(from), cluster::map(bar, target));
            }
        }
        if constexpr (REMOTE) {
            if constexpr (SIGNAL == 2) {
                for (int w = tid; w < LL_WORDS; w += THREADS) {
                    const unsigned data = ld_shared_b32(chunk(own) + 4u * unsigned(w));
                    st_relaxed_gpu_u64(slot8(part, rank, buf) + w, (1ull * unsigned(t + 1)) << 32 | data);
                }
            } else if (warp == 0) {
                const auto to = reinterpret_cast<unsigned long long>(slot16(part, rank, buf));
                for (int j = lane; j < SLICE; j += 32)
                    st_global_v4(to + 16u * unsigned(j), ld_shared_v4(chunk(own + j)));
                __syncwarp();  // the warp's stores before lane 0's release (ordered by the warp barrier)
                if (lane == 0) {
                    if (SIGNAL == 0)
                        red_release_gpu(head_signals + part * CL, 1u);
                    else
                        st_release_gpu(head_signals + part * CL + rank, unsigned(t + 1));
                }
            }
        }
        if (LOCAL) {
            cluster::mbarrier_wait(bar, unsigned(t >> 1) & 1u);
            if (tid == 0 && t + 2 < steps) cluster::mbarrier_expect(bar, RECV_BYTES);  // its next use
        }
        if constexpr (REMOTE) {
            if constexpr (SIGNAL == 2) {  // each thread polls its words, all of the old ones at once a round
                const unsigned long long* at[LL_PER];
                unsigned long long v[LL_PER];
#pragma unroll
                for (int j = 0; j < LL_PER; ++j) {
                    const int w = tid + j * THREADS, p = (part + 1 + w / (CL * LL_WORDS)) % GROUPS;
                    at[j] = slot8(p, (w / LL_WORDS) % CL, buf) + w % LL_WORDS;
                    if (w < LL_IN) v[j] = ld_relaxed_gpu_u64(at[j]);
                }
                auto old = [&](int j) { return tid + j * THREADS < LL_IN && unsigned(v[j] >> 32) != unsigned(t + 1); };
                poll([&] {
                    bool any = false;
#pragma unroll
                    for (int j = 0; j < LL_PER; ++j) any |= old(j);
                    if (any) {
#pragma unroll
                        for (int j = 0; j < LL_PER; ++j)
                            if (old(j)) v[j] = ld_relaxed_gpu_u64(at[j]);
                    }
                    return !any;
                }, errors);
#pragma unroll
                for (int j = 0; j < LL_PER; ++j) {
                    const int w = tid + j * THREADS, p = (part + 1 + w / (CL * LL_WORDS)) % GROUPS;
                    const unsigned to = chunk((p * CL + (w / LL_WORDS) % CL) * SLICE) + 4u * unsigned(w % LL_WORDS);
                    if (w < LL_IN) st_shared_b32(to, unsigned(v[j]));
                }
            } else {
                if (warp == 0) {
                    if (SIGNAL == 0) {
                        if (lane < GROUPS - 1) {
                            const unsigned* c = head_signals + ((part + 1 + lane) % GROUPS) * CL;
                            poll([&] { return ld_acquire_gpu(c) >= unsigned(CL * (t + 1)); }, errors);
                        }
                    } else {
                        for (int i = lane; i < (GROUPS - 1) * CL; i += 32) {
                            const unsigned* f = head_signals + ((part + 1 + i / CL) % GROUPS) * CL + i % CL;
                            poll([&] { return ld_acquire_gpu(f) >= unsigned(t + 1); }, errors);
                        }
                    }
                }
                __syncthreads();  // the signals seen (acquire by warp 0, then the block barrier)
                for (int i = tid; i < REMOTE_CHUNKS; i += THREADS) {
                    const int p = (part + 1 + i / (CL * SLICE)) % GROUPS, r = (i / SLICE) % CL, j = i % SLICE;
                    st_shared_v4(chunk((p * CL + r) * SLICE + j), ld_global_cg_v4(slot16(p, r, buf) + j));
                }
            }
            __syncthreads();  // the remote slices in h_t
        }
        if (verify) {
            for (int i = tid; i < H_CHUNKS; i += THREADS) {
                const int p = i / (CL * SLICE), r = (i / SLICE) % CL, j = i % SLICE;
                if ((p == part && r != rank && !LOCAL) || (p != part && !REMOTE)) continue;  // not exchanged
                const uint4 got = ld_shared_v4(chunk(i)), want = chunk_value(t, p, r, j);
                if (got.x != want.x || got.y != want.y || got.z != want.z || got.w != want.w) atomicAdd(errors, 1u);
            }
        }
    }
    if (tid == 0) {
        cycles[blockIdx.x] = clock64() - start;
        unsigned long long* at = placement + 4 * blockIdx.x;
        at[0] = smid(), at[1] = unsigned(rank), at[2] = start_ns, at[3] = globaltimer_ns();
    }
    if (LOCAL)
        exchange_barriers_exit(bars);
    else
        cluster::sync();
}
