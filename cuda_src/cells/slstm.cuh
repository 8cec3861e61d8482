// sLSTM (SPEC.md): exponential input gate with stabilizer m and normalizer n. States (h, c, n, m).
//   lf = log sigma(f_raw) + m_prev;  m = i_raw where n_prev == 0, else max(i_raw, lf)
//   i = exp(i_raw - m);  f = exp(lf - m);  c = f c_prev + i tanh(z_raw);  n = max(f n_prev + i, 1)
//   h = sigma(o_raw) c / n
// Gradient conventions: m is a constant (no gradient from it or on it), max(., 1) passes its gradient straight
// through; m_prev still feeds lf, so ds_prev[3] carries d lf (it survives only as dstates_initial's m row).
// Saved (flashrnn_core/cells/slstm.py says why): v (f where m = i_raw, so i = 1; else -i, f = 1; the sign bit
// says which), sigma(-f_raw), z_raw, o_raw.
#pragma once
#include "common/activations.cuh"

// The reciprocals: 1 (default) one of den scale U for all three; 2 h's own 1/den, and 1/scale and 1/U from one of
// scale U (two MUFU ops), which the fused forward's 16-bit inference and DMA-warp kernels take
// (FusedParams.slstm_own_h_reciprocal says why); 0, a measurement knob, a reciprocal each.
#ifndef FLASHRNN_SLSTM_SHARED_RCP
#define FLASHRNN_SLSTM_SHARED_RCP 1
#endif

namespace flashrnn {

struct SlstmCell {
    static constexpr int GW = 4, GR = 4, GB = 4, S = 4, NSAVED = 4;
    // What backward reads (the fused backward stages only these): s_prev[1..2] (c, n), ds[0..2]. ds[3] (on m)
    // reaches nothing: ds_prev[3] is d lf whatever it is; m_prev is not needed (the saved v holds i and f).
    static constexpr unsigned PREV_READ = 0b0110u, DS_READ = 0b0111u;
    static constexpr bool STEADY_FORM = true;  // forward<true> (below)

    // Forward: the two exponential gates share a scale. With u = exp(-|f_raw|), U = 1 + u (so sigma(f_raw) =
    // exp(min(f_raw, 0)) / U) and E = exp(a), a = min(f_raw, 0) + m_prev - i_raw:
    //   exp(i_raw) : exp(lf) = U : E, so i = U / scale and f = E / scale, scale = exp(m - i_raw) * U,
    //   m = i_raw (a fresh state, or lf <= i_raw, which is E <= U): scale = U;  m = lf: scale = E.
    // Then c = num / scale and n = den / scale with num = E c_prev + U tanh(z_raw), den = max(E n_prev + U, scale),
    // and h = sigma(o_raw) num / den. u and E are independent, so h is two MUFU ops deep (u and E, then 1/den)
    // where the gates' own formula makes it four (exp, log, exp, 1/n). log U is needed only for the state m, off h's chain.
    // E is capped at exp(A_MAX) when m = lf (then i = U / E: below float32's resolution against f = 1 long before
    // the cap), so that E c_prev and E n_prev stay finite; at a fresh state it is not, as in SPEC's formula. 30 (not
    // the 40 it was): den scale U, one reciprocal's argument, must stay normal (below). The cap's i, U / E <= 2e-13
    // where the true one is smaller, moves c / n by at most that a step (1.3e-8 over 65536 steps).
    // Estimated before measuring (stop 20): two MUFU latencies and their FP ops off a latency-bound step, ~50-70
    // cycles: 12x64 ~870 -> ~810 cycles a step (0.484 -> ~0.45 ms at T=1024); the backward's ~2000 by as much;
    // at 1x768, where the cells overlap the exchange, about nothing (one MUFU op more: log U and 1/scale against
    // the shared exp). Measured (H200, B=16, T=1024, bench/results/2026-12-01-h200-reference-51a4b8d.json):
    //   forward 12x64 0.484 -> 0.472 ms, 3x256 0.928 -> 0.921, 48x16 and 1x768 unchanged: a fifth of the
    //   estimate, so the cell's MUFU chain is a smaller part of the step than its latency sum says (not profiled).
    //   The same form in the backward (with 1/scale and 1/den for 1/n; ...-reference-slstm-scaled-019fb21.json)
    //   took the 12x64 backward from 1.11 to 1.20 ms and 48x16's from 0.51 to 0.54: that step is issue-bound, not
    //   latency-bound, and the form's selects and products cost more issue slots than the MUFU op it saves. The
    //   backward now reads i and f from the saved v instead (no transcendental op for them at all).
    static constexpr float A_MAX = 30.f;

    // STEADY: s_prev is a state that a step of this forward produced (the fused forward from its second step on,
    // fused_fw.cu Tile::STEADY): then n_prev >= 1, so the state is never fresh and den's max with E_scale
    // below is E n_prev + U already (scale <= den: U <= E n_prev + U, and E <= E n_prev). The step computes n as
    // den / scale through a reciprocal, so n_prev may sit a few ulp below 1; den then differs from the max by
    // E (1 - n_prev), a few 1e-7 E: float32 rounding. The form drops the fresh state's selects and den's max from
    // every step after the first (the max was on h's chain): ~7 of ~123 instructions a step at 48x16 (SASS, sm_90).
    // Measured (stop 57, bench/results/phases/2026-12-05-slstm-reciprocals.txt, B=16 T=1024 bf16, ms): alone within
    // +-2% (48x16 inference 0.195 -> 0.199, 12x64 0.343 -> 0.333, H200); with h's own reciprocal (above) 48x16's
    // inference 0.196 -> 0.163 (H100), which neither gives alone: ptxas's schedule of the step moves with both.
    template <bool STEADY = false>
    __device__ __forceinline__ static void forward(const float (&x)[GW], const float (&rs)[GR], const float (&b)[GB],
                                                   const float (&s_prev)[S], float (&s)[S], float (&saved)[NSAVED]) {
        // The chain to h starts at rs (the mma's output); x + b and the previous states are ready before it. So the
        // pre-activations are rs + (x + b), E's exponent (in log2 units) is two fma and two min after rs (below), and
        // E's cap is chosen before (none at a fresh state). Then den = max(E n_prev + U, scale) is
        // max(E max(n_prev, 0) + U, E') with E' = E except at a fresh state, where it is 0: scale = max(E', U)
        // (m = i_raw where E' <= U), and E n + U >= U for n >= 0, while for n_prev < 0 (outside what a step
        // produces) both forms give max(E, U). h is then FFMA, FMNMX and 1/den after E, where the select of scale
        // first made it five ops. Estimated before measuring: 6 dependent ops fewer (13 -> 7 between the mma and h,
        // besides the two MUFU), ~25 cycles a step, ~5% at 48x16. Measured (H200 bf16 B=16 T=1024, inference
        // forward, the cell before -> this one, bench/results/phases/2026-12-01-h200-cell-chains.txt): 48x16 0.233
        // -> 0.225 ms, 12x64 0.379 -> 0.360, 3x256 0.733 -> 0.712, 1x768 2.127 -> 2.131 (the exchange's wait hides
        // the cells there); at 12x64 more than estimated (~30 cycles), at 48x16 less (~14).
        float xb[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) xb[g] = x[g] + b[g], saved[g] = rs[g] + xb[g];
        const float i_raw = saved[0], f_raw = saved[1];
        const bool fresh = !STEADY && s_prev[2] == 0.f;
        const float cap = fresh ? __int_as_float(0x7f800000) : LOG2_E * A_MAX;
        const float n_prev = STEADY ? s_prev[2] : fmaxf(s_prev[2], 0.f);
        // log2(e) a = min(t + log2(e) f_raw, t) with t = log2(e) (m_prev - x_i - b_i - rs_i): the min(f_raw, 0)
        // distributed over the sum so that E's exponent is two fma and two min after rs (the cap taken on t's
        // side: min is associative, so this is exactly min(log2(e) a, cap)), and u = ex2(-|log2(e) f_raw|) one fma
        // after rs. Measured against min(f_raw, 0) first (phase_clocks A/B, inference forward,
        // bench/results/phases/2026-12-01-h200-cell-chains-2.txt): 48x16 0.248 -> 0.241 ms, 12x64 0.383 -> 0.386,
        // 3x256 0.739 -> 0.739; the reference suite's 48x16 then 0.225 -> 0.218 (other cells' rows moved <= 1.6%).
        const float k = LOG2_E * (s_prev[3] - xb[0]), t = fmaf(-LOG2_E, rs[0], k);
        const float t_f = fmaf(LOG2_E, rs[1], fmaf(-LOG2_E, rs[0], k + LOG2_E * xb[1]));
        const float E = act_exp2(fminf(t_f, fminf(t, cap)));
        const float u = act_exp2(-fabsf(fmaf(LOG2_E, rs[1], LOG2_E * xb[1]))), U = 1.f + u;
        const float E_scale = fresh ? 0.f : E;  // E where m may be lf
        const bool m_is_i = E_scale <= U;
        const float scale = fmaxf(E_scale, U);
        const float num = fmaf(E, s_prev[1], U * act_tanh(saved[2]));
        const float den = STEADY ? fmaf(E, n_prev, U) : fmaxf(fmaf(E, n_prev, U), E_scale);
#if FLASHRNN_SLSTM_SHARED_RCP == 2
        s[0] = act_sigmoid_sum(rs[3], xb[3]) * num * act_rcp(den);
        const float r_su = act_rcp(scale * U), r_scale = U * r_su, r_U = scale * r_su;
#elif FLASHRNN_SLSTM_SHARED_RCP
        // One reciprocal for the three the step divides by: r = 1 / (den scale U), then 1/den = scale U r,
        // 1/scale = den U r, 1/U = den scale r (U only for the saving forward's sigma(-f_raw); its product is off
        // h's chain, which gains one FMUL and loses one MUFU op). The product stays a normal float while den scale
        // U < 2^126: den <= E (n_prev + 2), scale <= E, U <= 2 with E <= exp(A_MAX) = 1.1e13, so for n_prev up to
        // ~1e11 (n grows by at most 1 a step from its initial value).
        // Estimated before measuring: the 48x16 step (one cell a thread, one warp a scheduler) has 7-8 MUFU ops a
        // cell at 8 cycles of a scheduler's MUFU pipe each: ~8-16 cycles a step fewer (2-4%), twice that for the
        // saving forward (8 -> 6). Measured (H200 bf16 B=16 T=1024, phase_clocks A/B in one process,
        // bench/results/phases/2026-12-02-h200-slstm-rcp.txt): saving forward 48x16 0.216 -> 0.212 ms, 12x64 0.374
        // -> 0.372; inference 0.197 -> 0.197 and 0.342 -> 0.344 (again at cf68210: 0.218 -> 0.213, 0.375 -> 0.374,
        // 0.197 -> 0.197, 0.344 -> 0.346). So the MUFU pipe is not what limits the step: its
        // dependent chains are. The same run took log(1 + u) off the MUFU pipe (a degree-7 polynomial, 8 FMA):
        // 48x16 0.212 -> 0.240 ms, 12x64 0.372 -> 0.410, 3x256 0.722 -> 0.778. Eight dependent FMA (~32 cycles)
        // where lg2 is one op made m's chain the longest before the step's barrier, which a warp reaches only once
        // it has issued everything before it, in order: a chain ahead of the barrier costs its latency.
        const float scale_U = scale * U, den_U = den * U;
        const float r = act_rcp(den * scale_U);
        s[0] = act_sigmoid_sum(rs[3], xb[3]) * num * (scale_U * r);
        const float r_scale = den_U * r, r_U = den * scale * r;
#else
        s[0] = act_sigmoid_sum(rs[3], xb[3]) * num * act_rcp(den);
        const float r_scale = act_rcp(scale), r_U = act_rcp(U);
#endif
        s[1] = num * r_scale;
        s[2] = den * r_scale;
        s[3] = m_is_i ? i_raw : fminf(f_raw, 0.f) - act_log1p(u) + s_prev[3];  // lf = log sigma(f_raw) + m_prev
        // The backward's gates: i = U / scale, f = E / scale, one of them 1 (v's sign says which); and
        // sigma(-f_raw) = (f_raw > 0 ? u : 1) / U (from u: no cancellation in either tail).
        saved[0] = m_is_i ? E * r_scale : -(U * r_scale);
        saved[1] = (f_raw > 0.f ? u : 1.f) * r_U;
    }

    __device__ __forceinline__ static void backward(const float (&ds)[S], const float (&s_prev)[S],
                                                    const float (&saved)[NSAVED], float (&dx)[GW], float (&drs)[GR],
                                                    float (&db)[GB], float (&ds_prev)[S]) {
        const bool m_is_i = !signbit(saved[0]);  // (-0 where i underflowed: m = lf)
        const float e = fabsf(saved[0]), i = m_is_i ? 1.f : e, f = m_is_i ? e : 1.f;
        const float z = act_tanh(saved[2]), o = act_sigmoid(saved[3]);
        const float c = fmaf(f, s_prev[1], i * z);
        const float n = fmaxf(fmaf(f, s_prev[2], i), 1.f);
        const float rn = act_rcp(n);
        const float dh = ds[0];
        const float dc = ds[1] + dh * o * rn;
        const float dn = ds[2] - dh * o * c * rn * rn;
        const float dlf = (dc * s_prev[1] + dn * s_prev[2]) * f;
        const float d[4] = {(dc * z + dn) * i, dlf * saved[1], dc * i * (1.f - z * z),
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
