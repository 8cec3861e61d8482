// Elman (SPEC.md): h = tanh(x + Rs + b). State (h); saved: the pre-activation.
#pragma once
#include "common/activations.cuh"

namespace flashrnn {

struct ElmanCell {
    static constexpr int GW = 1, GR = 1, GB = 1, S = 1, NSAVED = 1;
    // What backward reads (the fused backward stages only these): no previous state, ds[0].
    static constexpr unsigned PREV_READ = 0u, DS_READ = 0b1u;
    static constexpr bool STEADY_FORM = false;  // no cheaper forward for states of its own steps

    __device__ __forceinline__ static void forward(const float (&x)[GW], const float (&rs)[GR], const float (&b)[GB],
                                                   const float (&s_prev)[S], float (&s)[S], float (&saved)[NSAVED]) {
        saved[0] = rs[0] + (x[0] + b[0]);  // x + b is ready before rs (the mma's output): one add after it
        s[0] = act_tanh(saved[0]);
    }

    __device__ __forceinline__ static void backward(const float (&ds)[S], const float (&s_prev)[S],
                                                    const float (&saved)[NSAVED], float (&dx)[GW], float (&drs)[GR],
                                                    float (&db)[GB], float (&ds_prev)[S]) {
        const float h = act_tanh(saved[0]);
        dx[0] = drs[0] = db[0] = ds[0] * (1.f - h * h);
        ds_prev[0] = 0.f;  // h_prev reaches the step only through R
    }
};

}  // namespace flashrnn
