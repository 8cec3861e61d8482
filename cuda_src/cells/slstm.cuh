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

    // The two exponential gates share a scale. With u = exp(-|f_raw|), U = 1 + u (so sigma(f_raw) =
    // exp(min(f_raw, 0)) / U) and E = exp(a), a = min(f_raw, 0) + m_prev - i_raw:
    //   exp(i_raw) : exp(lf) = U : E, so i = U / scale and f = E / scale, scale = exp(m - i_raw) * U,
    //   m = i_raw (a fresh state, or lf <= i_raw, which is E <= U): scale = U;  m = lf: scale = E.
    // Then c = num / scale and n = den / scale with num = E c_prev + U tanh(z_raw), den = max(E n_prev + U, scale),
    // and h = sigma(o_raw) num / den. u and E are independent, so h is two MUFU ops deep (u and E, then 1/den)
    // where the stabilized formula is four (exp, log, exp, 1/n): the step's latency chain (issue 5 measured
    // sLSTM's forward 9% over LSTM's at 12x64, its backward 18%). log U is needed only for the state m, off the
    // chain. E is capped at exp(A_MAX) when m = lf (then i = U / E: below float32's resolution against f = 1 long
    // before the cap), so that E c_prev and E n_prev stay finite; at a fresh state it is not, as in SPEC's formula.
    // Estimated before measuring (stop 20): two MUFU latencies and their FP ops off a latency-bound step, ~50-70
    // cycles: forward 12x64 ~870 -> ~810 cycles a step (0.484 -> ~0.45 ms at T=1024), the backward's ~2000 by
    // as much (forward+backward 1.59 -> ~1.52 ms); at 1x768, where the cells overlap the exchange, about nothing
    // (the forward does one MUFU op more: log U and 1/scale against the backward's shared exp).
    static constexpr float A_MAX = 40.f;
    struct Scaled {
        float U, E, scale;
        bool m_is_i;
    };
    __device__ __forceinline__ static Scaled scaled_gates(const float (&s_prev)[S], float i_raw, float f_raw) {
        const bool fresh = s_prev[2] == 0.f;
        const float a = fminf(f_raw, 0.f) + s_prev[3] - i_raw;
        const float E = act_exp(fresh ? a : fminf(a, A_MAX)), U = 1.f + act_exp(-fabsf(f_raw));
        const bool m_is_i = fresh || E <= U;
        return {U, E, m_is_i ? U : E, m_is_i};
    }
    // num and den above (c and n times the scale).
    __device__ __forceinline__ static void scaled_states(const Scaled& sc, const float (&s_prev)[S], float z,
                                                         float& num, float& den) {
        num = fmaf(sc.E, s_prev[1], sc.U * z);
        den = fmaxf(fmaf(sc.E, s_prev[2], sc.U), sc.scale);
    }

    __device__ __forceinline__ static void forward(const float (&x)[GW], const float (&rs)[GR], const float (&b)[GB],
                                                   const float (&s_prev)[S], float (&s)[S], float (&saved)[NSAVED]) {
#pragma unroll
        for (int g = 0; g < 4; ++g) saved[g] = x[g] + rs[g] + b[g];
        const Scaled sc = scaled_gates(s_prev, saved[0], saved[1]);
        float num, den;
        scaled_states(sc, s_prev, act_tanh(saved[2]), num, den);
        s[0] = act_sigmoid(saved[3]) * num * act_rcp(den);
        const float r_scale = act_rcp(sc.scale);
        s[1] = num * r_scale;
        s[2] = den * r_scale;
        s[3] = sc.m_is_i ? saved[0] : fminf(saved[1], 0.f) - act_log(sc.U) + s_prev[3];  // lf = log sigma(f) + m_prev
    }

    __device__ __forceinline__ static void backward(const float (&ds)[S], const float (&s_prev)[S],
                                                    const float (&saved)[NSAVED], float (&dx)[GW], float (&drs)[GR],
                                                    float (&db)[GB], float (&ds_prev)[S]) {
        const Scaled sc = scaled_gates(s_prev, saved[0], saved[1]);
        const float z = act_tanh(saved[2]), o = act_sigmoid(saved[3]);
        float num, den;
        scaled_states(sc, s_prev, z, num, den);
        const float r_scale = act_rcp(sc.scale), r_den = act_rcp(den);
        const float i = sc.U * r_scale, f = sc.E * r_scale;
        const float rn = sc.scale * r_den, cn = num * r_den;  // 1/n and c/n
        const float dh = ds[0];
        const float dc = ds[1] + dh * o * rn;
        const float dn = ds[2] - dh * o * cn * rn;
        const float dlf = (dc * s_prev[1] + dn * s_prev[2]) * f;
        const float d[4] = {(dc * z + dn) * i, dlf * act_sigmoid(-saved[1]), dc * i * (1.f - z * z),
                            dh * cn * o * (1.f - o)};
#pragma unroll
        for (int g = 0; g < 4; ++g) dx[g] = drs[g] = db[g] = d[g];
        ds_prev[0] = 0.f;
        ds_prev[1] = dc * f;
        ds_prev[2] = dn * f;
        ds_prev[3] = dlf;
    }
};

}  // namespace flashrnn
