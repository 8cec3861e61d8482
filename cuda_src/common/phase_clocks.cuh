// Measurement knob FLASHRNN_PHASE_CLOCKS (wrong results; bench/phase_clocks.py): lane 0 of every warp sums
// clock64() deltas of the step's phases over the run and writes them, as unsigned 64-bit [block][32 warps][8], to
// `out` (over an output: the start of the forward's `saved`, the end of the backward's dWx, the rows each kernel
// writes first). PHASE(k, v) ends phase k once the value v has been computed. Both fused kernels include this;
// without the knob the macros are empty. The sums and the mark are 32-bit (registers: the backward's scatter kernel
// spilled with 64-bit ones), so a run may take up to 2^32 cycles a phase and warp (T = 65536 at ~65000 a step).
#pragma once
#ifdef FLASHRNN_PHASE_CLOCKS
#define PHASE_CLOCKS_DECLARE unsigned phase_sum[8] = {}, phase_mark = unsigned(clock64());
#define PHASE(k, v)                                                                      \
    {                                                                                    \
        unsigned dep_;                                                                   \
        asm volatile("mov.b32 %0, %1;" : "=r"(dep_) : "r"(__float_as_uint(float(v)))); \
        const unsigned now_ = unsigned(clock64()) + (dep_ & 0u);                         \
        phase_sum[k] += now_ - phase_mark; /* (modulo 2^32: a wrap of the clock is fine) */ \
        phase_mark = now_;                                                               \
    }
#define PHASE_CLOCKS_WRITE(out)                                                                    \
    if (threadIdx.x % 32 == 0) {                                                                   \
        unsigned long long* out_ =                                                                 \
            (out) + ((size_t(blockIdx.y) * gridDim.x + blockIdx.x) * 32 + threadIdx.x / 32) * 8;  \
        for (int k_ = 0; k_ < 8; ++k_) out_[k_] = phase_sum[k_];                                   \
    }
#else
#define PHASE_CLOCKS_DECLARE
#define PHASE(k, v)
#define PHASE_CLOCKS_WRITE(out)
#endif
