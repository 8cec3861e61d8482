"""dR after a backward kernel that leaves it out (``cuda_fused`` where ``FusedParams.fused_dr`` is off):

    dR[g, n, i, j] = sum over (b, t) of drs[b, t, g, n, i] * h_prev[b, t, n, j],
    h_prev[b, t] = states[0][b, t-1] for t > 0, the initial h (or zeros) for t = 0.

Two paths, chosen by measurement (H200, B=16, T=1024, the whole backward with each path;
bench/results/phases/2026-12-03-h200-dr-gemm.txt and 2026-12-03-h200-dr-float32.txt):

* ``cuda_src/dr_gemm.cu`` for heads of D <= 128 (several of them), and in float32 for every head but one large
  one: one block a TILE x TILE tile of one (gate, head) and a range of the B*T rows, float32 partial sums added
  here in a fixed order (deterministic). cuBLAS's batched GEMMs spread such small outputs over too few blocks: at
  12x64 bf16 the backward took 0.70 ms with the kernel against 0.75 with cuBLAS (lstm; slstm 0.69 / 0.74, gru
  0.61 / 0.64, elman 0.62 / 0.64). In float32 (each value split into bf16 hi + lo, three products) cuBLAS's
  GEMMs are slower still: lstm 12x64's backward 1.08 ms against 3.42 (dR alone 0.16 against 2.48), 3x256 3.98
  against 5.73, 48x16 0.73 against 3.11 (with WARPS_PER_SM's splits).
* cuBLAS elsewhere: one head (N = 1: every gate's rows are adjacent, so one GEMM of M = G*D covers them, ~700
  TFLOPS at D = 768 in bf16, beyond mma.sync: lstm 1x768's backward 2.40 ms against 2.82 with the kernel; elman
  1x768 float32 3.18 against 3.23) and 16-bit heads of D > 128 (the kernel's 64-wide tiles read each operand
  D/64 times: lstm 3x256 1.62 ms against 1.70): per gate one GEMM batched over the heads.

Neither copies ``states`` into an h_prev array (that copy took 0.068 ms at B*T*N*D = 12.6M): the kernel reads
h0 at the t = 0 rows; cuBLAS sums row bt of drs against row bt-1 of ``states[0]`` (right except at t = 0, where
it pairs drs[b, 0] with states[0][b-1, T-1]) and then two GEMMs over the B rows at t = 0 take the wrong pairs
out again and add drs[b, 0] h0[b] (both are strided views: no copy).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

from .. import _arrays

DR_SOURCE, DR_ENTRY = "dr_gemm.cu", "flashrnn_dr_gemm"
DR_STORAGE = {_arrays.bfloat16: "__nv_bfloat16", _arrays.float16: "__half", _arrays.float32: "float"}
DR_TILES = (64, 32, 16)  # a block's tile side: the largest that divides D
KROWS = 32  # rows (b, t) a pipeline stage of the kernel (dr_gemm.cu KROWS: 32, float32 16): splits are multiples
SPLIT_ROWS_MIN = 512  # a split sums at least this many rows (its prologue and epilogue are amortised)
#: Warps the splits aim to give each SM: 4 blocks of TILE 64 (4 warps, 37-42 KB of shared memory each), 16 of
#: TILE 16 (one warp, 12 KB). Counting blocks instead (4 an SM at every tile) left the one-warp blocks of D = 16
#: four warps an SM: float32 lstm 48x16's dR took 0.34 ms, for 0.4 GB read.
WARPS_PER_SM = 16

KERNEL_D_MAX = 128  # the kernel's heads: D up to this (measured at 64: faster; at 256: slower than cuBLAS)
#: FLASHRNN_DR_PATH=kernel|cublas forces a path (measurements).
PATH_ENV = "FLASHRNN_DR_PATH"

# cudaDataType of the operands (16BF, 16F, 32F) and CUBLAS_COMPUTE_32F.
_CUDA_TYPES = {_arrays.bfloat16: 14, _arrays.float16: 2, _arrays.float32: 0}
_COMPUTE_32F = 68


def dr_tile(D: int) -> int:
    """The kernel's tile side for head dimension D (a multiple of 16, as the fused kernels need)."""
    return next(t for t in DR_TILES if D % t == 0)


def dr_spec(dtype: Any, tile: int) -> Any:
    """The kernel variant for a storage dtype and tile side."""
    from ..runtime import KernelSpec

    name = DR_STORAGE[np.dtype(dtype)]
    return KernelSpec(source=DR_SOURCE, entry=DR_ENTRY,
                      defines=(("FLASHRNN_STORAGE", name), ("FLASHRNN_DR_TILE", str(tile))),
                      label=f"dR gemm {_arrays.dtype_name(dtype)} tile {tile}")


def dr_specs() -> list[Any]:
    """Every variant of the kernel (for ``compile --check``)."""
    return [dr_spec(dtype, tile) for dtype in DR_STORAGE for tile in DR_TILES]


def uses_kernel(dtype: Any, N: int, D: int) -> bool:
    """Whether ``sum_dr`` runs dr_gemm.cu (else cuBLAS): several heads of D <= KERNEL_D_MAX, and in float32
    every head but one large head (a multiple of 16 throughout)."""
    forced = os.environ.get(PATH_ENV, "")
    if np.dtype(dtype) not in DR_STORAGE or D % 16:
        return False
    if forced in ("kernel", "cublas"):
        return forced == "kernel"
    if np.dtype(dtype) == _arrays.float32:
        return N > 1 or D <= KERNEL_D_MAX
    return N > 1 and D <= KERNEL_D_MAX


def sum_dr(drs: Any, h: Any, h0: Any | None) -> Any:
    """dR, float32 [G, N, D, D], from drs [B, T, G, N, D] and h = states[0] [B, T, N, D] (one storage dtype,
    C-contiguous) and the initial h [B, 1, N, D] or None (zeros). Runs on CuPy's current stream."""
    B, T, G, N, D = drs.shape
    if uses_kernel(drs.dtype, N, D):
        return _kernel_dr(drs, h, h0)
    dR = _empty((G, N, D, D), np.float32)
    _cublas_dr(dR, drs, h, h0)
    return dR


def _empty(shape: tuple[int, ...], dtype: Any) -> Any:
    """Every buffer here is allocated by this (tests hand out NaN-filled memory: each element must be written)."""
    import cupy

    return cupy.empty(shape, dtype=dtype)


def split_rows(rows: int, tiles: int, sms: int, block_warps: int = 4) -> int:
    """Rows a split of the kernel sums: enough splits for ~WARPS_PER_SM warps an SM (blocks of ``block_warps``),
    none under SPLIT_ROWS_MIN rows; a multiple of KROWS."""
    blocks = -(-WARPS_PER_SM * sms // block_warps)
    splits = max(1, min(-(-blocks // tiles), rows // SPLIT_ROWS_MIN))
    per = -(-rows // splits)
    return -(-per // KROWS) * KROWS


@lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    import cupy

    return int(cupy.cuda.Device(device).attributes["MultiProcessorCount"])


def _kernel_dr(drs: Any, h: Any, h0: Any | None) -> Any:
    from ..runtime import get_kernel, launch

    B, T, G, N, D = drs.shape
    tile = dr_tile(D)
    tiles = G * N * (D // tile) ** 2
    rows = B * T
    per = split_rows(rows, tiles, _sm_count(drs.device.id), tile // 16)
    splits = -(-rows // per)
    out = _empty((splits, G, N, D, D), np.float32)
    kernel = get_kernel(dr_spec(drs.dtype, tile), device=drs.device.id)
    launch(kernel, (tiles, splits), (32 * tile // 16,), drs, h, h0, out, np.int32(B), np.int32(T), np.int32(N),
           np.int32(D), np.int32(G), np.int32(per))
    # The splits' partial sums, added in a fixed order: deterministic, no atomics.
    return out[0] if splits == 1 else out.sum(axis=0)


def gemm(opa: int, opb: int, m: int, n: int, k: int, a: int, lda: int, sa: int, b: int, ldb: int, sb: int, c: int,
         ldc: int, sc: int, batch: int, dtype: Any, alpha: float = 1.0, beta: float = 0.0) -> None:
    """Column-major ``C[i] = alpha op(A[i]) op(B[i]) + beta C[i]`` (pointers, element strides), A/B of ``dtype``,
    C float32, on the current CuPy stream with CuPy's cuBLAS handle."""
    import cupy
    from cupy_backends.cuda.libs import cublas

    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    scalars = np.array([alpha, beta], np.float32)
    t = _CUDA_TYPES[np.dtype(dtype)]
    cublas.gemmStridedBatchedEx(handle, opa, opb, m, n, k, scalars.ctypes.data, a, t, lda, sa, b, t, ldb, sb,
                                scalars.ctypes.data + 4, c, 0, ldc, sc, batch, _COMPUTE_32F, -1)  # default algo


def _cublas_dr(dR: Any, drs: Any, h: Any, h0: Any | None) -> None:
    """dR by cuBLAS (module docstring): rows bt of drs against rows bt-1 of h, then the t = 0 rows mended."""
    B, T, G, N, D = drs.shape
    dtype = drs.dtype
    e, ND = np.dtype(dtype).itemsize, N * D

    def rank_k(k: int, h_ptr: int, ldh: int, drs_ptr: int, ld_drs: int, alpha: float, beta: float) -> None:
        """dR = alpha sum_{r < k} drs rows (pointer, stride) outer h rows + beta dR. Column-major
        C (j, i) = h (j, r) @ drs (i, r)^T: with one head every gate in one GEMM (M = G*D), else per gate a
        GEMM batched over the heads (both operands advance D elements a head)."""
        if N == 1:
            gemm(0, 1, D, G * D, k, h_ptr, ldh, 0, drs_ptr, ld_drs, 0, dR.data.ptr, D, 0, 1, dtype, alpha, beta)
            return
        for g in range(G):
            gemm(0, 1, D, D, k, h_ptr, ldh, D, drs_ptr + g * ND * e, ld_drs, D, dR.data.ptr + g * ND * D * 4, D,
                 D * D, N, dtype, alpha, beta)

    rows, row = B * T, G * ND  # drs elements a row (b, t)
    if rows > 1:
        rank_k(rows - 1, h.data.ptr, ND, drs.data.ptr + row * e, row, 1.0, 0.0)
    else:
        dR.fill(0)
    if B > 1:  # rows (b, 0), b >= 1, met states[0][b-1, T-1]: take them out
        rank_k(B - 1, h.data.ptr + (T - 1) * ND * e, T * ND, drs.data.ptr + T * row * e, T * row, -1.0, 1.0)
    if h0 is not None:  # and rows (b, 0) meet h0[b]
        rank_k(B, h0.data.ptr, ND, drs.data.ptr, T * row, 1.0, 1.0)
