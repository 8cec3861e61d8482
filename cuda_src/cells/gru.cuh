// GRU with the reset gate after the matmul (SPEC.md; cuDNN's and torch.nn.GRU's form). State (h).
//   g = Rs_g + b_g;  r = sigma(x_r + Rs_r + b_r);  z = sigma(x_z + Rs_z + b_z)
//   h = z h_prev + (1 - z) tanh(x_n + b_n + r g)
// Wx gates (r, z, n), R gates (g, r, z), biases (g, r, z, n). Saved: g, r_raw, z_raw, x_n + b_n.
#pragma once
#include "common/activations.cuh"

namespace flashrnn {

struct GruCell {
    static constexpr int GW = 3, GR = 3, GB = 4, S = 1, NSAVED = 4;
    // What backward reads (the fused backward stages only these): s_prev[0] and ds[0].
    static constexpr unsigned PREV_READ = 0b1u, DS_READ = 0b1u;
    static constexpr bool STEADY_FORM = false;  // no cheaper forward for states of its own steps

    __device__ __forceinline__ static void forward(const float (&x)[GW], const float (&rs)[GR], const float (&b)[GB],
                                                   const float (&s_prev)[S], float (&s)[S], float (&saved)[NSAVED]) {
        // As LstmCell: x + b is ready before rs (the mma's output), so the sigmoids' arguments are one fma after
        // rs, r g + x_n + b_n is one fma after r's tanh (act_sigmoid_sum_fma), and h one fma after n's tanh, with
        // 1 - z and z h_prev computed while n's chain runs. Measured (as LstmCell's, inference forward): 12x64
        // 0.300 -> 0.299 ms, 3x256 0.585 -> 0.581, 48x16 0.177 -> 0.180.
        const float xb_r = x[0] + b[1], xb_z = x[1] + b[2];
        saved[0] = rs[0] + b[0];
        saved[1] = rs[1] + xb_r;
        saved[2] = rs[2] + xb_z;
        saved[3] = x[2] + b[3];
        const float z = act_sigmoid_sum(rs[2], xb_z);
        const float n = act_tanh(act_sigmoid_sum_fma(rs[1], xb_r, saved[0], saved[3]));
        s[0] = fmaf(n, 1.f - z, z * s_prev[0]);  // z h_prev + (1 - z) n
    }

    __device__ __forceinline__ static void backward(const float (&ds)[S], const float (&s_prev)[S],
                                                    const float (&saved)[NSAVED], float (&dx)[GW], float (&drs)[GR],
                                                    float (&db)[GB], float (&ds_prev)[S]) {
        const float g = saved[0], r = act_sigmoid(saved[1]), z = act_sigmoid(saved[2]);
        const float n = act_tanh(fmaf(r, g, saved[3]));
        const float dh = ds[0];
        const float dn = dh * (1.f - z) * (1.f - n * n);  // on x_n + b_n + r g
        const float dr = dn * g * r * (1.f - r);
        const float dz = dh * (s_prev[0] - n) * z * (1.f - z);
        const float dg = dn * r;
        dx[0] = dr, dx[1] = dz, dx[2] = dn;
        drs[0] = dg, drs[1] = dr, drs[2] = dz;
        db[0] = dg, db[1] = dr, db[2] = dz, db[3] = dn;
        ds_prev[0] = dh * z;
    }
};

}  // namespace flashrnn
