// Every cell's pointwise math, once: the kernels of every backend include this file (docs/architecture.md,
// "CUDA cell contract"). The Python twins are flashrnn_core/cells/<cell>.py; the backend tests hold them equal.
// Includes are relative to cuda_src/ (the runtime compiles with that root only, no source-relative lookup).
#pragma once
#include "cells/elman.cuh"
#include "cells/gru.cuh"
#include "cells/lstm.cuh"
#include "cells/slstm.cuh"

namespace flashrnn {

// Pre-activations. Every cell's R gate g enters its math as the sum (R h)_g + x[x_of_r(g)] + b[b_of_r(g)]
// (x_of_r < 0: no x term), and Cell::step takes those sums. A kernel may start its matmul accumulators at the
// x and b terms (the fused forward does: fewer adds a step, and none after the matmul); cell_forward is the
// step from (R h) itself.
template <class Cell>
__device__ __forceinline__ float r_offset(int g, const float (&x)[Cell::GW], const float (&b)[Cell::GB]) {
    return Cell::x_of_r(g) >= 0 ? x[Cell::x_of_r(g)] + b[Cell::b_of_r(g)] : b[Cell::b_of_r(g)];
}

template <class Cell>
__device__ __forceinline__ void cell_forward(const float (&x)[Cell::GW], const float (&rs)[Cell::GR],
                                             const float (&b)[Cell::GB], const float (&s_prev)[Cell::S],
                                             float (&s)[Cell::S], float (&saved)[Cell::NSAVED]) {
    float pre[Cell::GR];
#pragma unroll
    for (int g = 0; g < Cell::GR; ++g) pre[g] = rs[g] + r_offset<Cell>(g, x, b);
    Cell::step(x, pre, b, s_prev, s, saved);
}

}  // namespace flashrnn

// Kernels name their cell with a define (-DFLASHRNN_CELL=LstmCell): the short names, at global scope.
using flashrnn::ElmanCell;
using flashrnn::GruCell;
using flashrnn::LstmCell;
using flashrnn::SlstmCell;
