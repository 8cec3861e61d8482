// LSTM (SPEC.md): i, f, z, o = x + Rs + b;  c = sigma(f) c_prev + sigma(i) tanh(z);  h = sigma(o) tanh(c).
// States (h, c). Saved: the four pre-activations (docs/architecture.md, "Saved tensors").
#pragma once
#include "common/activations.cuh"

namespace flashrnn {

struct LstmCell {
    static constexpr int GW = 4, GR = 4, GB = 4, S = 2, NSAVED = 4;
    // What backward reads (the fused backward stages only these): s_prev[1] (c), and ds[0], ds[1].
    static constexpr unsigned PREV_READ = 0b10u, DS_READ = 0b11u;
    static constexpr bool STEADY_FORM = false;  // no cheaper forward for states of its own steps

    __device__ __forceinline__ static void forward(const float (&x)[GW], const float (&rs)[GR], const float (&b)[GB],
                                                   const float (&s_prev)[S], float (&s)[S], float (&saved)[NSAVED]) {
        // The step's chain starts at rs (the mma's output); x + b and c_prev / 2 are ready before it. So the
        // pre-activations are rs + (x + b), each gate's tanh one fma after rs (act_sigmoid_sum), and c = i z +
        // f c_prev two ops after the gates' tanh (f c_prev is one fma of tanh's output: act_sigmoid_sum_fma; adding
        // -0 changes nothing, so the compiler drops it, where + 0 would be an add: -0 + 0 is +0). Estimated before
        // measuring: 4 dependent ops fewer (x + rs + b as two adds, sigma's halving, i's fma and i z), ~16 cycles of
        // a ~400-cycle 48x16 step. Measured (H200 bf16 B=16 T=1024, inference forward, the cell before -> this one,
        // bench/results/phases/2026-12-01-h200-cell-chains.txt): 12x64 0.347 -> 0.343 ms, 3x256 0.628 -> 0.619, but
        // 48x16 0.181 -> 0.184 (the SASS chain is 4 ops shorter; the schedule around it is not; not explained).
        float xb[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) xb[g] = x[g] + b[g], saved[g] = rs[g] + xb[g];
        const float i = act_sigmoid_sum(rs[0], xb[0]), fc = act_sigmoid_sum_fma(rs[1], xb[1], s_prev[1], -0.f);
        const float z = act_tanh(saved[2]), o = act_sigmoid_sum(rs[3], xb[3]);
        s[1] = fmaf(i, z, fc);
        s[0] = o * act_tanh(s[1]);
    }

    // Activations recomputed from the saved pre-activations; their derivatives taken from the outputs.
    __device__ __forceinline__ static void backward(const float (&ds)[S], const float (&s_prev)[S],
                                                    const float (&saved)[NSAVED], float (&dx)[GW], float (&drs)[GR],
                                                    float (&db)[GB], float (&ds_prev)[S]) {
        const float i = act_sigmoid(saved[0]), f = act_sigmoid(saved[1]);
        const float z = act_tanh(saved[2]), o = act_sigmoid(saved[3]);
        const float tc = act_tanh(fmaf(f, s_prev[1], i * z));
        const float dh = ds[0];
        // dh (R^T dg's sum, the end of the backward step's chain) arrives last, so it multiplies coefficients computed
        // before it (products are not reassociated by the compiler): each gradient is at most two ops after dh.
        // Measured (H200 bf16 B=16 T=1024, phase_clocks A/B of the backward kernel,
        // bench/results/phases/2026-12-01-h200-cell-chains-2.txt): 12x64 0.944 -> 0.930 ms. The same form lost in
        // sLSTM's backward (12x64 1.116 -> 1.158 ms, 48x16 0.504 -> 0.512) and GRU's (12x64 0.862 -> 0.869),
        // issue-bound steps where it adds products: they keep dh's products in source order.
        const float dc = fmaf(dh, o * (1.f - tc * tc), ds[1]);
        const float d[4] = {dc * (z * i * (1.f - i)), dc * (s_prev[1] * f * (1.f - f)), dc * (i * (1.f - z * z)),
                            dh * (tc * o * (1.f - o))};
#pragma unroll
        for (int g = 0; g < 4; ++g) dx[g] = drs[g] = db[g] = d[g];
        ds_prev[0] = 0.f;  // h_prev reaches the step only through R: the caller adds R^T drs
        ds_prev[1] = dc * f;
    }
};

}  // namespace flashrnn
