// sLSTM (SPEC.md): exponential input gate with stabilizer m and normalizer n. States (h, c, n, m).
//   lf = log sigma(f_raw) + m_prev;  m = i_raw where n_prev == 0, else max(i_raw, lf)
//   i = exp(i_raw - m);  f = exp(lf - m);  c = f c_prev + i tanh(z_raw);  n = max(f n_prev + i, 1)
//   h = sigma(o_raw) c / n
// Gradient conventions: m is a constant (no gradient from it or on it), max(., 1) passes its gradient straight
// through; m_prev still feeds lf, so ds_prev[3] carries d lf (it survives only as dstates_initial's m row).
#pragma once
#include "common/activations.cuh"

namespace flashrnn {

struct SlstmCell {
    static constexpr int GW = 4, GR = 4, GB = 4, S = 4, NSAVED = 4;
    // What backward reads (the fused backward stages only these): s_prev[1..3] (c, n, m), ds[0..2]. ds[3] (on m)
    // reaches nothing: ds_prev[3] is d lf whatever it is.
    static constexpr unsigned PREV_READ = 0b1110u, DS_READ = 0b0111u;

    // (i, f, m) from the raw gates and the previous states. One of i, f is exp(0) = 1 (m is i_raw or lf), so
    // one exponential gives both: with d = lf - i_raw, m = i_raw gives (1, exp(d)) and m = lf gives (exp(-d), 1).
    // (The step is issue-bound: issue 5 measured sLSTM 30-40% over LSTM; this saves a MUFU and 3 FP ops.)
    __device__ __forceinline__ static void gates(const float (&s_prev)[S], float i_raw, float f_raw, float& i,
                                                 float& f, float& m) {
        const float lf = act_log_sigmoid(f_raw) + s_prev[3];
        const float d = lf - i_raw;
        const bool m_is_i = s_prev[2] == 0.f || d <= 0.f;
        const float e = act_exp(m_is_i ? d : -d);
        m = m_is_i ? i_raw : lf;
        i = m_is_i ? 1.f : e;
        f = m_is_i ? e : 1.f;
    }

    __device__ __forceinline__ static void forward(const float (&x)[GW], const float (&rs)[GR], const float (&b)[GB],
                                                   const float (&s_prev)[S], float (&s)[S], float (&saved)[NSAVED]) {
#pragma unroll
        for (int g = 0; g < 4; ++g) saved[g] = x[g] + rs[g] + b[g];
        float i, f, m;
        gates(s_prev, saved[0], saved[1], i, f, m);
        s[1] = fmaf(f, s_prev[1], i * act_tanh(saved[2]));
        s[2] = fmaxf(fmaf(f, s_prev[2], i), 1.f);
        s[3] = m;
        s[0] = act_sigmoid(saved[3]) * s[1] * act_rcp(s[2]);
    }

    __device__ __forceinline__ static void backward(const float (&ds)[S], const float (&s_prev)[S],
                                                    const float (&saved)[NSAVED], float (&dx)[GW], float (&drs)[GR],
                                                    float (&db)[GB], float (&ds_prev)[S]) {
        float i, f, m;
        gates(s_prev, saved[0], saved[1], i, f, m);
        const float z = act_tanh(saved[2]), o = act_sigmoid(saved[3]);
        const float c = fmaf(f, s_prev[1], i * z);
        const float n = fmaxf(fmaf(f, s_prev[2], i), 1.f);
        const float rn = act_rcp(n);
        const float dh = ds[0];
        const float dc = ds[1] + dh * o * rn;
        const float dn = ds[2] - dh * o * c * rn * rn;
        const float dlf = (dc * s_prev[1] + dn * s_prev[2]) * f;
        const float d[4] = {(dc * z + dn) * i, dlf * act_sigmoid(-saved[1]), dc * i * (1.f - z * z),
                            dh * c * rn * o * (1.f - o)};
#pragma unroll
        for (int g = 0; g < 4; ++g) dx[g] = drs[g] = db[g] = d[g];
        ds_prev[0] = 0.f;
        ds_prev[1] = dc * f;
        ds_prev[2] = dn * f;
        ds_prev[3] = dlf;
    }
};

}  // namespace flashrnn
