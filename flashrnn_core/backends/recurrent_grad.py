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

While the fused backward kernel runs, dR is summed chunk by chunk of steps on a side stream (``OverlappedDr``),
on the SMs the kernel leaves idle: after it, only the last chunk's sum remains.

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


def h_rows_of_steps(drs: Any, h: Any, h0: Any | None, t0: int, t1: int) -> tuple[Any, ...]:
    """What ``sum_dr_steps`` needs of h for the steps [t0, t1), copied into rows (the steps of B sequences are
    not rows one stride apart): for cuBLAS's one GEMM h one step earlier, row for row with drs's; for the
    kernel, which pairs them itself, h's rows and the h before step t0 (or None: zeros)."""
    import cupy

    B, _, G, N, D = drs.shape
    if uses_kernel(drs.dtype, N, D):
        first = h0 if t0 == 0 else h[:, t0 - 1:t0]
        return cupy.ascontiguousarray(h[:, t0:t1]), None if first is None else cupy.ascontiguousarray(first)
    if t0 > 0:
        return (cupy.ascontiguousarray(h[:, t0 - 1:t1 - 1]),)
    h_prev = _empty((B, t1, N, D), h.dtype)
    h_prev[:, 1:] = h[:, :t1 - 1]
    h_prev[:, :1] = 0 if h0 is None else h0
    return (h_prev,)


def sum_dr_steps(drs: Any, h_rows: tuple[Any, ...], t0: int, t1: int, into: Any | None = None) -> Any:
    """``sum_dr`` over the steps [t0, t1) alone (added into ``into`` where given), from h_rows_of_steps's rows
    of h; drs's rows are copied here."""
    import cupy

    B, _, G, N, D = drs.shape
    drs_rows = cupy.ascontiguousarray(drs[:, t0:t1])
    if uses_kernel(drs.dtype, N, D):  # (h_rows: h's rows and the h before step t0)
        dR = sum_dr(drs_rows, *h_rows)
        if into is None:
            return dR
        into += dR
        return into
    dR = _empty((G, N, D, D), np.float32) if into is None else into
    _rank_k(dR, drs, B * (t1 - t0), h_rows[0].data.ptr, N * D, drs_rows.data.ptr, G * N * D, 1.0,
            0.0 if into is None else 1.0)
    return dR


#: FLASHRNN_DR_OVERLAP: "0" sums dR after the kernel (no side stream); a power of two forces the overlap, that
#: many steps between the kernel's counts (tests and sanitizer runs: short sequences, small grids and sums);
#: unset, the rules below (``overlaps``, ``overlap_count_steps``).
OVERLAP_ENV = "FLASHRNN_DR_OVERLAP"
OVERLAP_CHUNKS = 8  # sums a sequence is cut into, besides the last one (each a copy of its rows and a GEMM or two)
OVERLAP_COUNTS = 32  # boundaries the kernel counts, about: the last sum, after the kernel, covers ~T/32 steps
OVERLAP_MIN_STEPS = 16  # steps between two counts at least
#: The overlap runs where the kernel leaves at least this part of the SMs idle: at lstm 12x64 (96 blocks of 132
#: SMs) the chunks' copies and GEMMs on 36 SMs cost more than the one sum after the kernel (0.72 -> 0.80 ms).
OVERLAP_IDLE_SMS = 0.5
#: ... and where dR is a sum of at least this many flops (2 B T Gr N D^2): below, the overlap's fixed costs (what
#: stays after the kernel: the last sum's copy and GEMM, the conversion, the join, ~40-50 us at lstm 1x768) beat
#: the sum they hide. Measured (H100 bf16 B=16 T=1024, forward + backward, bench/results/2026-12-06-h100-
#: reference-7401ddd.json against ...-e5b7c5a.json, ms): elman 12x64 (1.6 GFLOP) 0.527 -> 0.696 and elman 3x256
#: (6.4) 1.041 -> 1.118 lost; elman 1x768 (19) 2.329 -> 2.319, gru 3x256 (19) 2.036 -> 1.973, lstm 3x256 (26)
#: 2.288 -> 2.215, gru 1x768 (58) 3.747 -> 3.725, lstm 1x768 (77) 4.067 -> 3.935.
OVERLAP_MIN_FLOP = 16e9


#: fused_bw.cu's progress arguments without an overlap: a null pointer (the kernel counts nothing).
NO_OVERLAP = (None, np.int32(0), np.int32(0))


def overlap_count_steps(T: int) -> int:
    """Steps between two of the kernel's counts over T steps (a power of two: fused_bw.cu tests it with a
    mask), or 0 for no overlap (FLASHRNN_DR_OVERLAP=0, or fewer than two counts): about T / OVERLAP_COUNTS, at
    least OVERLAP_MIN_STEPS."""
    forced = os.environ.get(OVERLAP_ENV, "")
    if forced:
        steps = int(forced)
        if steps < 0 or steps & (steps - 1):
            raise ValueError(f"{OVERLAP_ENV}={forced!r}: expected 0 or a power of two")
    else:
        steps = max(OVERLAP_MIN_STEPS, 1 << max(0, (T // OVERLAP_COUNTS).bit_length() - 1))
    return steps if steps and 2 * steps < T else 0


def overlap_plan(T: int, steps: int) -> list[tuple[int, int, int]]:
    """The sums beside a kernel that counts every ``steps`` steps from the last: (t0, t1, count), steps [t0, t1)
    summed once count ``count`` (the boundary t0 = T - (count + 1) steps) has every block, from the last step
    down; the last sum, steps [0, the lowest boundary), waits for the kernel's end (count -1). The sums take ~T /
    OVERLAP_CHUNKS steps each, down to the last few, which halve (1, 1, 2, 4, ... counts' steps from step 0 up): a
    sum must be done by the time the kernel has written the steps below it, and the last one after the kernel
    is what the overlap leaves (at lstm 1x768 a sum of 128 steps took ~0.1 ms beside the kernel)."""
    lowest = T - (T - 1) // steps * steps  # the lowest boundary, in (0, steps]
    group = max(1, round(T / OVERLAP_CHUNKS / steps))  # counts a full sum
    cuts, gap = [lowest], 1
    while cuts[-1] + gap * steps < T:
        cuts.append(cuts[-1] + gap * steps)
        gap = min(2 * gap, group)
    bounds = [0] + cuts + [T]
    return [(bounds[i], bounds[i + 1], (T - bounds[i]) // steps - 1 if i else -1)
            for i in range(len(bounds) - 2, -1, -1)]


def counter_slots(T: int, steps: int) -> int:
    """The kernel's progress counts for T steps, a count every ``steps``: fused_bw.cu adds at slot (T - 1 - t) /
    steps for every step t = T - 1 mod steps, t = T - 1 (slot 0) and, in the scatter kernel, the round after step
    0 (t = -1) among them, which nobody reads."""
    return T // steps + 1


def overlaps(blocks: int, sms: int, dr_flop: float) -> bool:
    """Whether ``OverlappedDr`` pays beside a backward kernel of ``blocks`` blocks on ``sms`` SMs, for a dR of
    ``dr_flop`` flops: OVERLAP_IDLE_SMS and OVERLAP_MIN_FLOP."""
    return blocks <= (1 - OVERLAP_IDLE_SMS) * sms and dr_flop >= OVERLAP_MIN_FLOP


class OverlappedDr:
    """dR of a fused backward kernel summed while it runs (fused_bw.cu ``barrier_reporting_progress``).

    Every ``steps`` steps from the last, the kernel counts in ``counters[c]`` the blocks that have written the
    steps above boundary c. A side stream waits for a count to reach every block (``runtime.wait_until_at_least``:
    no host wait) and adds the steps since the previous sum into dR with ``sum_dr_steps``, on the SMs the kernel
    leaves idle (``overlap_plan``: ~T / OVERLAP_CHUNKS steps a sum, halving towards step 0); the last sum, one
    count's steps, waits for the kernel's end. One accumulator on one stream in a fixed order: deterministic, but
    not bitwise the one sum over every row (float32 adds in another order).

        overlap = OverlappedDr.fork(T, blocks, dr_flop)  # before the kernel: counts zeroed, side stream forked
        launch(kernel, ..., *overlap.kernel_arguments())
        dR = overlap.sum(drs, h, h0, R.dtype)           # right after it: the sums enqueued; the current stream joins
    """

    def __init__(self, steps: int, T: int, blocks: int, main: Any, side: Any, counters: Any, forked: Any):
        self.steps, self.T, self.blocks, self.main, self.side, self.counters, self.forked = \
            steps, T, blocks, main, side, counters, forked

    @classmethod
    def fork(cls, T: int, blocks: int, dr_flop: float) -> "OverlappedDr | None":
        """The overlap for a kernel of ``blocks`` blocks about to run on CuPy's current stream, whose dR takes
        ``dr_flop`` flops, or None (no overlap: ``overlaps`` and ``overlap_count_steps`` say, unless OVERLAP_ENV forces
        it, or the stream is being captured into a graph; dR is then summed after the kernel, ``sum_dr``)."""
        import cupy

        from ..runtime import current_device

        main, device = cupy.cuda.get_current_stream(), current_device()
        steps, forced = overlap_count_steps(T), bool(os.environ.get(OVERLAP_ENV))
        if not steps or main.is_capturing() or not (forced or overlaps(blocks, _sm_count(device), dr_flop)):
            return None
        counters = cupy.zeros(counter_slots(T, steps), np.uint32)  # zeroed on the current stream, before the kernel
        return cls(steps, T, blocks, main, _side_stream(device), counters, main.record())

    def kernel_arguments(self) -> tuple[Any, np.int32, np.int32]:
        """fused_bw.cu's ``progress``, ``chunk_mask`` and ``chunk_phase`` (the steps t after which [t+1, T) is
        whole counts: t = T - 1 mod ``steps``)."""
        mask = self.steps - 1
        return self.counters, np.int32(mask), np.int32((self.T - 1) & mask)

    def sum(self, drs: Any, h: Any, h0: Any | None, dtype: Any) -> Any:
        """``sum_dr(drs, h, h0)`` by chunks on the side stream, in ``dtype``; the current stream waits for the
        result. Call it right after the kernel's launch: the last sum waits for an event recorded here. What is
        left after the kernel is the last sum's copy of drs's rows, its GEMM and the conversion (a sum's rows of
        h, the forward's, are copied before its wait)."""
        from ..runtime import wait_until_at_least

        kernel_done = self.main.record()
        self.side.wait_event(self.forked)
        dR = None
        with self.side:
            for t0, t1, count in overlap_plan(self.T, self.steps):
                h_rows = h_rows_of_steps(drs, h, h0, t0, t1)
                if count >= 0:
                    # (count c is the kernel's progress[c + 1]: fused_bw.cu barrier_reporting_progress)
                    wait_until_at_least(self.side, self.counters.data.ptr + 4 * (count + 1), self.blocks)
                else:  # the kernel counts no boundary at step 0: its end does
                    self.side.wait_event(kernel_done)
                dR = sum_dr_steps(drs, h_rows, t0, t1, into=dR)
            dR = dR.astype(dtype, copy=False)
            joined = self.side.record()
        self.main.wait_event(joined)
        return dR


@lru_cache(maxsize=None)
def _side_stream(device: int) -> Any:
    """One non-blocking CuPy stream a device for ``OverlappedDr`` (streams are costly to make; its work always
    follows an event of the stream it serves)."""
    import cupy

    with cupy.cuda.Device(device):
        return cupy.cuda.Stream(non_blocking=True)


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


def _rank_k(dR: Any, drs: Any, k: int, h_ptr: int, ldh: int, drs_ptr: int, ld_drs: int, alpha: float,
            beta: float) -> None:
    """dR = alpha sum_{r < k} drs rows (pointer, stride in elements) outer h rows + beta dR, by cuBLAS (``drs``
    [B, T, G, N, D] gives the shapes and dtype). Column-major C (j, i) = h (j, r) @ drs (i, r)^T: with one head
    every gate in one GEMM (M = G*D), else per gate a GEMM batched over the heads (both operands advance D
    elements a head)."""
    G, N, D = drs.shape[2:]
    e, ND = drs.dtype.itemsize, N * D
    if N == 1:
        gemm(0, 1, D, G * D, k, h_ptr, ldh, 0, drs_ptr, ld_drs, 0, dR.data.ptr, D, 0, 1, drs.dtype, alpha, beta)
        return
    for g in range(G):
        gemm(0, 1, D, D, k, h_ptr, ldh, D, drs_ptr + g * ND * e, ld_drs, D, dR.data.ptr + g * ND * D * 4, D,
             D * D, N, drs.dtype, alpha, beta)


def _cublas_dr(dR: Any, drs: Any, h: Any, h0: Any | None) -> None:
    """dR by cuBLAS (module docstring): rows bt of drs against rows bt-1 of h, then the t = 0 rows mended."""
    B, T, G, N, D = drs.shape
    e, ND = drs.dtype.itemsize, N * D
    rows, row = B * T, G * ND  # drs elements a row (b, t)
    if rows > 1:
        _rank_k(dR, drs, rows - 1, h.data.ptr, ND, drs.data.ptr + row * e, row, 1.0, 0.0)
    else:
        dR.fill(0)
    if B > 1:  # rows (b, 0), b >= 1, met states[0][b-1, T-1]: take them out
        _rank_k(dR, drs, B - 1, h.data.ptr + (T - 1) * ND * e, T * ND, drs.data.ptr + T * row * e, T * row, -1.0,
                1.0)
    if h0 is not None:  # and rows (b, 0) meet h0[b]
        _rank_k(dR, drs, B, h0.data.ptr, ND, drs.data.ptr, T * row, 1.0, 1.0)
