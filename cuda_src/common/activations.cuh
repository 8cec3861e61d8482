// Activations of the cells, in float32. Two paths, chosen per kernel variant by a define:
//   FLASHRNN_FAST_ACTIVATIONS=1: the hardware approximations (tanh.approx.f32, ex2.approx; relative error about
//     2^-11), far below what 16-bit storage keeps: the default for bfloat16 and float16 kernels.
//   FLASHRNN_FAST_ACTIVATIONS=0: the accurate libdevice functions, for float32 storage, whose tolerance in
//     SPEC.md (1e-4 relative) the approximations would use up over a long sequence.
#pragma once

#ifndef FLASHRNN_FAST_ACTIVATIONS
#define FLASHRNN_FAST_ACTIVATIONS 0
#endif

namespace flashrnn {

// One MUFU instruction on a float, by its PTX name. ex2, lg2 and rcp flush denormals to zero (.ftz): without
// .ftz each call carries a range check and two conditional rescalings (3-4 more instructions an issue-bound
// step pays in full); what a denormal would have added is far below 16-bit storage's resolution.
#define FLASHRNN_MUFU(name, ptx)                          \
    __device__ __forceinline__ float name(float x) {      \
        float y;                                          \
        asm(ptx " %0, %1;" : "=f"(y) : "f"(x));           \
        return y;                                         \
    }
FLASHRNN_MUFU(tanh_approx, "tanh.approx.f32")
FLASHRNN_MUFU(ex2_approx, "ex2.approx.ftz.f32")
FLASHRNN_MUFU(lg2_approx, "lg2.approx.ftz.f32")
FLASHRNN_MUFU(rcp_approx, "rcp.approx.ftz.f32")
#undef FLASHRNN_MUFU
constexpr float LOG2_E = 1.4426950408889634f, LN_2 = 0.6931471805599453f;

__device__ __forceinline__ float act_tanh(float x) {
#if FLASHRNN_FAST_ACTIVATIONS
    return tanh_approx(x);
#else
    return tanhf(x);
#endif
}

// sigma(x) = (1 + tanh(x/2)) / 2: one MUFU op on the fast path, and never 1/(1+inf) trouble.
__device__ __forceinline__ float sigmoid_of_half(float half_x) {
#if FLASHRNN_FAST_ACTIVATIONS
    return fmaf(0.5f, tanh_approx(half_x), 0.5f);
#else
    return 0.5f + 0.5f * tanhf(half_x);
#endif
}
__device__ __forceinline__ float act_sigmoid(float x) { return sigmoid_of_half(0.5f * x); }

// sigma(a + b) where b is known before a (the cells' x + bias before the matmul's sum): halving is exact, so
// fma(0.5, a, 0.5 b) is (a + b) / 2 rounded as act_sigmoid(a + b) rounds it, bit for bit, and the step's chain
// from a (the mma's output) to tanh is one op instead of two (an add, then the halving).
__device__ __forceinline__ float act_sigmoid_sum(float a, float b) { return sigmoid_of_half(fmaf(0.5f, a, 0.5f * b)); }

// sigma(a + b) s + c with b, s and c known first: sigma = (1 + tanh((a + b) / 2)) / 2, so this is one fma of
// tanh's output, t s/2 + (s/2 + c): one op after tanh instead of three (sigma's fma, the product, the sum).
__device__ __forceinline__ float act_sigmoid_sum_fma(float a, float b, float s, float c) {
    const float half_s = 0.5f * s;
    return fmaf(half_s, act_tanh(fmaf(0.5f, a, 0.5f * b)), half_s + c);
}

__device__ __forceinline__ float act_exp(float x) {
#if FLASHRNN_FAST_ACTIVATIONS
    return ex2_approx(LOG2_E * x);
#else
    return expf(x);
#endif
}

// 2^x: ex2 itself on the fast path (callers fold log2(e) into what they compute first).
__device__ __forceinline__ float act_exp2(float x) {
#if FLASHRNN_FAST_ACTIVATIONS
    return ex2_approx(x);
#else
    return exp2f(x);
#endif
}

// 1 / x for the cells' normalisers (sLSTM's n >= 1): the MUFU reciprocal on the fast path (relative error
// ~2^-23; a denormal x, which n >= 1 never is, would flush); IEEE division otherwise. The IEEE path's range
// checks and Newton steps cost ~10 instructions a call, which an issue-bound step pays in full (issue 5: sLSTM
// 40% over LSTM).
__device__ __forceinline__ float act_rcp(float x) {
#if FLASHRNN_FAST_ACTIVATIONS
    return rcp_approx(x);
#else
    return 1.f / x;
#endif
}

// log(1 + u) for u in [0, 1]: sLSTM's log sigma(x) = min(x, 0) - log(1 + exp(-|x|)), whose forward shares u.
__device__ __forceinline__ float act_log1p(float u) {
#if FLASHRNN_FAST_ACTIVATIONS
    return LN_2 * lg2_approx(1.f + u);
#else
    return log1pf(u);
#endif
}

// log sigma(x) = min(x, 0) - log1p(exp(-|x|)): no overflow and no log(0) in either tail.
__device__ __forceinline__ float act_log_sigmoid(float x) { return fminf(x, 0.f) - act_log1p(act_exp(-fabsf(x))); }

}  // namespace flashrnn
