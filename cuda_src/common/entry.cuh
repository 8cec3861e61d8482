// What the fused kernels' entries (fused_fw.cu, fused_bw.cu) share: the defaults of the defines both take, and
// the check of the host's launch geometry. The runtime passes every define (backends/fused.py launch_of); the
// defaults let a source compile alone (an editor, a hand-run NVRTC or nvcc).
#pragma once

#ifndef FLASHRNN_CELL
#define FLASHRNN_CELL LstmCell
#endif
#ifndef FLASHRNN_STORAGE
#define FLASHRNN_STORAGE __nv_bfloat16
#endif
#ifndef FLASHRNN_D
#define FLASHRNN_D 64
#endif
#ifndef FLASHRNN_CLUSTER
#define FLASHRNN_CLUSTER 1
#endif
#ifndef FLASHRNN_KSPLIT
#define FLASHRNN_KSPLIT 1
#endif
#ifndef FLASHRNN_R_SMEM
#define FLASHRNN_R_SMEM 0
#endif
// -1: the host passed no number (a source compiled alone): nothing to check.
#ifndef FLASHRNN_SMEM_BYTES
#define FLASHRNN_SMEM_BYTES -1
#endif
#ifndef FLASHRNN_THREADS
#define FLASHRNN_THREADS -1
#endif

namespace flashrnn {

// The host computes the launch geometry itself (the solver models threads and shared memory in
// constrint/problems.py; backends/fused.py launch_of passes them) and passes its numbers as FLASHRNN_SMEM_BYTES and
// FLASHRNN_THREADS, so that a disagreement with the kernel's Tile fails the compile instead of a launch. An entry
// instantiates it explicitly: `template struct flashrnn::LaunchGeometryAgrees<Tile, FLASHRNN_SMEM_BYTES,
// FLASHRNN_THREADS>;`
template <class Tile, long long SMEM_BYTES, long long THREADS>
struct LaunchGeometryAgrees {
    static_assert(SMEM_BYTES < 0 || Tile::SMEM_BYTES == SMEM_BYTES, "the solver's shared memory disagrees with Tile");
    static_assert(THREADS < 0 || Tile::THREADS == THREADS, "the solver's threads disagree with Tile");
};

}  // namespace flashrnn
