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

// An activation of one float: `fast` on the fast path, `accurate` otherwise (both in terms of x).
#if FLASHRNN_FAST_ACTIVATIONS
#define FLASHRNN_ACTIVATION(name, fast, accurate) \
    __device__ __forceinline__ float name(float x) { return fast; }
#else
#define FLASHRNN_ACTIVATION(name, fast, accurate) \
    __device__ __forceinline__ float name(float x) { return accurate; }
#endif

FLASHRNN_ACTIVATION(act_tanh, tanh_approx(x), tanhf(x))

// sigma from half its argument, sigma(2x) = (1 + tanh(x)) / 2: one MUFU op on the fast path, and never 1/(1+inf)
// trouble.
FLASHRNN_ACTIVATION(sigmoid_of_half, fmaf(0.5f, tanh_approx(x), 0.5f), 0.5f + 0.5f * tanhf(x))
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

FLASHRNN_ACTIVATION(act_exp, ex2_approx(LOG2_E * x), expf(x))
// 2^x: ex2 itself on the fast path (callers fold log2(e) into what they compute first).
FLASHRNN_ACTIVATION(act_exp2, ex2_approx(x), exp2f(x))

// 1 / x for the cells' normalisers (sLSTM's n >= 1): the MUFU reciprocal on the fast path (relative error
// ~2^-23; a denormal x, which n >= 1 never is, would flush); IEEE division otherwise. The IEEE path's range
// checks and Newton steps cost ~10 instructions a call, which an issue-bound step pays in full (issue 5: sLSTM
// 40% over LSTM).
FLASHRNN_ACTIVATION(act_rcp, rcp_approx(x), 1.f / x)

// log(1 + x) for x in [0, 1]: sLSTM's log sigma(y) = min(y, 0) - log(1 + exp(-|y|)), whose forward shares exp(-|y|).
FLASHRNN_ACTIVATION(act_log1p, LN_2 * lg2_approx(1.f + x), log1pf(x))
#undef FLASHRNN_ACTIVATION

}  // namespace flashrnn
