"""``cuda``: per time step one batched cuBLAS matmul for ``R @ h`` (all heads) and one fused pointwise kernel
(``cuda_src/alternating.cu``, the cells of ``cuda_src/cells/``). It takes any D, N, B, T: the fallback of
``auto`` where ``cuda_fused`` cannot run.

Forward, step t: ``Rs[b, n] = R'[n] @ h_{t-1}[b, n]`` (float32 out) -> ``flashrnn_alt_fw`` (adds Wx[:, t] and b,
applies the cell, writes states[:, :, t], saved[:, t] and h_t for the next matmul).
Backward, step t = T-1 .. 0: ``flashrnn_alt_bw`` (the cell's backward: dWx[:, t], drs_t, the carried state
gradients, the per-sequence bias sums) -> ``dh = R'^T drs_t`` for step t-1. After the loop, dR is ONE batched GEMM
over all B*T (``dR[g, n] = sum_{b,t} drs outer h_prev``) and db one sum over the batch.

Precision: R is cast to Wx's dtype (the matmul's operands are in the storage dtype: tensor cores for bfloat16
and float16, float32 accumulation and float32 results); b is used in float32. The recurrent states are carried
between steps in float32 buffers (the returned states are rounded copies), and ``h`` enters the next matmul
in the storage dtype, as in ``cuda_fused``. float32 runs the matmuls in plain float32 (``CUBLAS_COMPUTE_32F``);
``AlternatingBackend(tf32=True)`` allows TF32 tensor cores (SPEC.md tolerance 1e-3 instead of 1e-4).
dstates, saved and states given in another dtype than Wx are cast to it (the kernels read one storage type).

Host out of the loop: the T steps (2T launches) are captured once per (shape, stream) into a CUDA graph and
replayed. The graph owns its scratch buffers (the matmul operands and results, the float32 carries); the
caller's arrays reach its kernels through a small pointer table in device memory that is rewritten before
each replay (one 64-byte copy), so one graph serves every call of that shape. The first call of a shape runs
the steps eagerly (it compiles and loads the kernels and lets cuBLAS pick and load its kernels outside a
capture); the second captures. ``AlternatingBackend(graphs=False)`` always launches step by step.
Variable lengths (``problem.lengths``) travel in the same table (null without): docs/architecture.md "Variable lengths".
Nothing here synchronises the device.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _arrays
from .base import Backend, Grads

SOURCE = "alternating.cu"
CELL_STRUCTS = {"lstm": "LstmCell", "slstm": "SlstmCell", "gru": "GruCell", "elman": "ElmanCell"}
STORAGE_TYPES = {_arrays.float32: "float", _arrays.bfloat16: "__nv_bfloat16", _arrays.float16: "__half"}
BLOCK = 256  # threads a block of the pointwise kernels (one thread per (b, n, d))
GRAPH_CACHE = 8  # captured shapes kept per process (each holds its scratch buffers; LRU)
WORKSPACE_BYTES = 8 << 20  # cuBLAS workspace per graph (and per stream when eager), set explicitly: see _Cublas

# cudaDataType and cuBLAS enums (stable values from the CUDA headers; CuPy does not export all of them).
_CUDA_R = {_arrays.float32: 0, _arrays.float16: 2, _arrays.bfloat16: 14}
_CUDA_R_32F = 0
_OP_N, _OP_T = 0, 1
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32 = 68, 77
_GEMM_DEFAULT = -1
_ONE = np.ones(1, np.float32)  # alpha/beta live on the host (cuBLAS's default pointer mode)
_ZERO = np.zeros(1, np.float32)
_ONE_PTR, _ZERO_PTR = _ONE.ctypes.data, _ZERO.ctypes.data


def _empty(shape, dtype):
    """Every array returned to the caller is allocated here (tests poison it with NaN and check it is overwritten)."""
    import cupy

    return cupy.empty(shape, dtype=dtype)


def _pointer(a) -> int:
    """Device address of a CuPy array for the pointer table; 0 (null) for None."""
    return 0 if a is None else a.data.ptr


def _scratch(shape, dtype):
    """Every internal buffer is allocated here (tests poison it with NaN: nothing may read what no one wrote)."""
    import cupy

    return cupy.empty(shape, dtype=dtype)


def _spec(function: str, dtype, direction: str):
    from ..runtime import KernelSpec

    dtype = np.dtype(dtype)
    # Hardware tanh (relative error ~2^-11) where storage is 16-bit; the accurate functions for float32.
    fast = "0" if dtype == _arrays.float32 else "1"
    return KernelSpec(source=SOURCE, entry=f"flashrnn_alt_{direction}",
                      defines=(("FLASHRNN_CELL", CELL_STRUCTS[function]), ("FLASHRNN_STORAGE", STORAGE_TYPES[dtype]),
                               ("FLASHRNN_FAST_ACTIVATIONS", fast)),
                      label=f"{function} cuda {direction} {_arrays.dtype_name(dtype)}")


class _Cublas:
    """One cuBLAS handle per (thread, device), bound to a stream and an explicit workspace before each use.

    Why an explicit workspace: ``cublasSetStream`` resets the handle to cuBLAS's default workspace pool, which
    may allocate inside a stream capture (illegal) and grows with every captured graph. CuPy does not wrap
    ``cublasSetWorkspace``, so it is called through ctypes on the library CuPy loaded. So are the stream binding
    and the GEMMs: CuPy's wrappers refuse every cuBLAS call while a stream is capturing (measured on the H100:
    "calling cuBLAS API during stream capture is currently unsupported"), and cuBLAS itself supports capture.
    """

    _local = threading.local()

    @classmethod
    def handle(cls, device: int) -> int:
        handles = cls._local.__dict__.setdefault("handles", {})
        if device not in handles:
            from cupy_backends.cuda.libs import cublas

            handles[device] = cublas.create()
        return handles[device]

    @classmethod
    def bind(cls, device: int, stream_ptr: int, workspace) -> int:
        handle = cls.handle(device)
        lib = _cublas_library()
        for status, call in ((lib.cublasSetStream_v2(ctypes.c_void_p(handle), ctypes.c_void_p(stream_ptr)),
                              "cublasSetStream"),
                             (lib.cublasSetWorkspace_v2(ctypes.c_void_p(handle), ctypes.c_void_p(workspace.data.ptr),
                                                        ctypes.c_size_t(workspace.nbytes)), "cublasSetWorkspace")):
            if status != 0:
                raise RuntimeError(f"{call} failed with status {status}")
        return handle


@functools.lru_cache(maxsize=None)
def _cublas_library() -> ctypes.CDLL:
    """The very libcublas CuPy loaded (a handle only works with the library instance that made it): found by
    its path in this process's memory map, else by the name CuPy's loader used."""
    from cupy_backends.cuda.libs import cublas  # noqa: F401  (loads the library)

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "/libcublas.so" in path:
                    return ctypes.CDLL(path)  # already loaded: dlopen returns that instance
    except OSError:
        pass
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        path = load_nvidia_dynamic_lib("cublas").abs_path  # cached: what CuPy's loader found
        if path:
            return ctypes.CDLL(path)
    except Exception:  # an older cuda-pathfinder: by soname below
        pass
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise ImportError("libcublas not found (CuPy's cuBLAS wrapper imported, but ctypes cannot open it)")


def _gemm(handle: int, opa: int, opb: int, m: int, n: int, k: int, a: int, lda: int, stride_a: int, b: int,
          ldb: int, stride_b: int, c: int, ldc: int, stride_c: int, batch: int, ab_type: int, compute: int) -> None:
    """Column-major ``C[i] = op(A[i]) @ op(B[i])`` for i < batch, A and B of ``ab_type``, C float32 (pointers)."""
    status = _gemm_ex()(handle, opa, opb, m, n, k, _ONE_PTR, a, ab_type, lda, stride_a, b, ab_type, ldb, stride_b,
                        _ZERO_PTR, c, _CUDA_R_32F, ldc, stride_c, batch, compute, _GEMM_DEFAULT)
    if status != 0:
        raise RuntimeError(f"cublasGemmStridedBatchedEx failed with status {status}")


@functools.lru_cache(maxsize=None)
def _gemm_ex():
    """``cublasGemmStridedBatchedEx`` through ctypes, with its C signature (looked up once)."""
    fn = _cublas_library().cublasGemmStridedBatchedEx
    i, ll, p = ctypes.c_int, ctypes.c_longlong, ctypes.c_void_p
    fn.argtypes = [p, i, i, i, i, i, p, p, i, i, ll, p, i, i, ll, p, p, i, i, ll, i, i, i]
    fn.restype = i
    return fn


@dataclass
class _Plan:
    """Scratch buffers of one (direction, shape, stream), the pointer table and, once captured, the graph."""

    key: tuple
    buffers: dict
    table: Any  # cupy uint64 array: the FwTable / BwTable of alternating.cu
    workspace: Any
    calls: int = 0
    graph: Any = None  # None: not captured yet; False: capture failed, stays eager
    nodes: int = 0  # graph nodes (for launches-per-step reports)


class AlternatingBackend(Backend):
    name = "cuda"

    def __init__(self, graphs: bool = True, tf32: bool = False):
        self.graphs = graphs
        self.tf32 = tf32
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        self._stream_workspaces: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()

    # ----- contract -----

    def unsupported(self, problem) -> str | None:
        if not getattr(problem, "on_gpu", False):
            return "cuda runs on CuPy arrays on a GPU, got NumPy arrays"
        if np.dtype(problem.dtype) not in STORAGE_TYPES:
            return f"cuda takes float32, bfloat16 or float16, got {_arrays.dtype_name(problem.dtype)}"
        try:
            from cupy_backends.cuda.libs import cublas  # noqa: F401
        except ImportError as err:
            return f"cuda needs cuBLAS through CuPy: {err}"
        return None

    def kernel_variants(self) -> list:
        from ..cells import CELLS

        return [_spec(f, dt, d) for f in CELLS for dt in STORAGE_TYPES for d in ("fw", "bw")]

    def forward(self, problem, Wx, R, b, states0, save=True):
        import cupy

        cell, dtype = problem.cell, np.dtype(problem.dtype)
        B, T, N, D = problem.B, problem.T, problem.N, problem.D
        S, GR = cell.states, cell.gates_r
        Wx = cupy.ascontiguousarray(Wx)
        states = _empty((S, B, T, N, D), dtype)
        saved = _empty((B, T, cell.n_saved, N, D), dtype) if save else None  # None: the kernel skips it
        plan = self._plan(("fw", problem.function, dtype, B, T, N, D), lambda: {
            "R": _scratch((N, GR, D, D), dtype),  # R'[n, g] = R[g, n]: one (GR*D) x D matrix a head
            "b": _scratch((cell.gates_b, N, D), np.float32),
            "carry": _scratch((S, B, N, D), np.float32),
            "h": _scratch((2, B, N, D), dtype),  # h_{t-1} for step t's matmul, double-buffered
            "rs": _scratch((B, N, GR, D), np.float32),
        }, table_slots=4)
        buf = plan.buffers
        buf["R"][...] = R.transpose(1, 0, 2, 3)
        buf["b"][...] = b
        if states0 is None:
            buf["carry"].fill(0)
            buf["h"][0].fill(0)
        else:
            buf["carry"][...] = states0[:, :, 0]
            buf["h"][0][...] = states0[0, :, 0]
        self._write_table(plan, [Wx.data.ptr, states.data.ptr, _pointer(saved), _pointer(problem.lengths)])
        self._run(plan, lambda stream: self._forward_steps(problem, plan, stream))
        return states, saved

    def backward(self, problem, Wx, R, b, states0, states, saved, dstates, dlast) -> Grads:
        import cupy

        cell, dtype = problem.cell, np.dtype(problem.dtype)
        B, T, N, D = problem.B, problem.T, problem.N, problem.D
        S, GR, GB = cell.states, cell.gates_r, cell.gates_b
        states, saved = (cupy.ascontiguousarray(a.astype(dtype, copy=False)) for a in (states, saved))
        if dstates is not None:
            dstates = cupy.ascontiguousarray(dstates.astype(dtype, copy=False))
        dWx = _empty((B, T, cell.gates_w, N, D), dtype)
        hprev = _scratch((T, B, N, D), dtype)  # every step's h_{t-1}: the dR GEMM's operand
        plan = self._plan(("bw", problem.function, dtype, B, T, N, D), lambda: {
            "R": _scratch((N, GR, D, D), dtype),
            "dcarry": _scratch((S, B, N, D), np.float32),
            "dh": _scratch((B, N, D), np.float32),
            "init": _scratch((S, B, N, D), np.float32),
            "drs": _scratch((T, B, N, GR, D), dtype),
            "dbias": _scratch((GB, B, N, D), np.float32),
        }, table_slots=7)
        buf = plan.buffers
        buf["R"][...] = R.transpose(1, 0, 2, 3)
        if dlast is None:
            buf["dcarry"].fill(0)
        else:
            buf["dcarry"][...] = dlast[:, :, 0]
        buf["dh"].fill(0)
        buf["dbias"].fill(0)
        if states0 is None:
            buf["init"].fill(0)
        else:
            buf["init"][...] = states0[:, :, 0]
        ds_rows = 0 if dstates is None else int(dstates.shape[0])
        self._write_table(plan, [_pointer(dstates), states.data.ptr, saved.data.ptr, dWx.data.ptr, hprev.data.ptr,
                                 ds_rows, _pointer(problem.lengths)])
        self._run(plan, lambda stream: self._backward_steps(problem, plan, stream))

        # dR'[n] (D x GR*D, column-major) = hprev_n (D x TB) @ drs_n^T (TB x GR*D): one GEMM a head over all B*T.
        dRp = _scratch((N, GR, D, D), np.float32)
        stream = cupy.cuda.get_current_stream()
        handle = _Cublas.bind(problem.device, stream.ptr, self._stream_workspace(stream))
        _gemm(handle, _OP_N, _OP_T, D, GR * D, T * B, hprev.data.ptr, N * D, D, buf["drs"].data.ptr, N * GR * D,
              GR * D, dRp.data.ptr, D, GR * D * D, N, _CUDA_R[dtype], self._compute(dtype))
        dR = cupy.ascontiguousarray(dRp.transpose(1, 0, 2, 3).astype(R.dtype))
        db = buf["dbias"].sum(axis=1).astype(b.dtype)
        dinit = buf["dcarry"].copy()
        dinit[0] += buf["dh"]  # the gradient on h_{-1} through R, from step 0's drs
        s_dtype = states0.dtype if states0 is not None else dtype
        return Grads(dWx, dR, db, dinit[:, :, None].astype(s_dtype))

    # ----- the step loops (issued eagerly or into a capture) -----

    def _step_setup(self, problem, plan: _Plan, stream, direction: str) -> tuple:
        """What both step loops start from: the pointwise kernel of ``direction`` ('fw' or 'bw'), cuBLAS bound to
        ``stream`` and the plan's workspace, the GEMMs' (data type, compute type), the pointwise grid, and
        (B, T, N, D) as the kernel's int32 arguments."""
        from ..runtime import get_kernel

        dtype = np.dtype(problem.dtype)
        kernel = get_kernel(_spec(problem.function, dtype, direction), device=problem.device)
        handle = _Cublas.bind(problem.device, stream.ptr, plan.workspace)
        grid = (-(-problem.B * problem.N * problem.D // BLOCK),)
        dims = tuple(np.int32(x) for x in (problem.B, problem.T, problem.N, problem.D))
        return kernel, handle, (_CUDA_R[dtype], self._compute(dtype)), grid, dims

    def _forward_steps(self, problem, plan: _Plan, stream) -> None:
        from ..runtime import launch

        B, T, N, D, GR = problem.B, problem.T, problem.N, problem.D, problem.cell.gates_r
        kernel, handle, (ab, compute), grid, dims = self._step_setup(problem, plan, stream, "fw")
        buf = plan.buffers
        R, rs, b, carry = buf["R"].data.ptr, buf["rs"].data.ptr, buf["b"], buf["carry"]
        h = [np.uint64(buf["h"][i].data.ptr) for i in range(2)]
        for t in range(T):
            # Rs_n (GR*D x B) = R'_n (row-major GR*D x D, i.e. column-major D x GR*D, transposed) @ h_n (D x B).
            _gemm(handle, _OP_T, _OP_N, GR * D, B, D, R, D, GR * D * D, int(h[t & 1]), N * D, D, rs, N * GR * D,
                  GR * D, N, ab, compute)
            launch(kernel, grid, (BLOCK,), plan.table, buf["rs"], b, carry, h[(t + 1) & 1], *dims, np.int32(t),
                   stream=stream)

    def _backward_steps(self, problem, plan: _Plan, stream) -> None:
        from ..runtime import launch

        B, T, N, D, GR = problem.B, problem.T, problem.N, problem.D, problem.cell.gates_r
        kernel, handle, (ab, compute), grid, dims = self._step_setup(problem, plan, stream, "bw")
        buf = plan.buffers
        R, dh = buf["R"].data.ptr, buf["dh"]
        drs0, step = buf["drs"].data.ptr, B * N * GR * D * np.dtype(problem.dtype).itemsize
        for t in reversed(range(T)):
            drs = drs0 + t * step
            launch(kernel, grid, (BLOCK,), plan.table, buf["dcarry"], dh, buf["init"], np.uint64(drs), buf["dbias"],
                   *dims, np.int32(t), stream=stream)
            # dh_n (D x B) = R'_n^T (D x GR*D: R'_n read column-major as is) @ drs_n (GR*D x B).
            _gemm(handle, _OP_N, _OP_N, D, B, GR * D, R, D, GR * D * D, drs, N * GR * D, GR * D, dh.data.ptr, N * D,
                  D, N, ab, compute)

    # ----- graphs and scratch -----

    def _compute(self, dtype) -> int:
        return _COMPUTE_32F_FAST_TF32 if (self.tf32 and dtype == _arrays.float32) else _COMPUTE_32F

    def _plan(self, key: tuple, make_buffers, table_slots: int) -> _Plan:
        """The scratch of ``key`` on the current stream: found (and marked recently used) or made.

        Dropping the least recently used plan is safe while its graph may still run: a graph executable
        destroyed in flight is freed when it completes (cudaGraphExecDestroy), and CuPy's pool hands freed
        memory only to later allocations on the stream it was allocated on, the one its graph runs on."""
        import cupy

        stream = cupy.cuda.get_current_stream()
        key = key + (cupy.cuda.Device().id, stream.ptr)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
            plan = _Plan(key, make_buffers(), cupy.zeros(table_slots, np.uint64),
                         cupy.empty(WORKSPACE_BYTES, np.uint8))
            self._plans[key] = plan
            while len(self._plans) > GRAPH_CACHE:
                self._plans.popitem(last=False)
            return plan

    def _stream_workspace(self, stream):
        """cuBLAS workspace of eager calls on ``stream`` (graphs have their own)."""
        import cupy

        key = (cupy.cuda.Device().id, stream.ptr)
        ws = self._stream_workspaces.get(key)
        if ws is None:
            ws = self._stream_workspaces[key] = cupy.empty(WORKSPACE_BYTES, np.uint8)
        return ws

    @staticmethod
    def _write_table(plan: _Plan, pointers: list[int]) -> None:
        """The caller's arrays for this call, into the plan's device pointer table, on the current stream.

        A pageable host-to-device copy is staged at once (it neither waits for the device nor for the host
        buffer to stay alive), and runs in stream order before the replay that reads it."""
        import cupy

        host = np.asarray(pointers, np.uint64)
        stream = cupy.cuda.get_current_stream()
        cupy.cuda.runtime.memcpyAsync(plan.table.data.ptr, host.ctypes.data, host.nbytes,
                                      cupy.cuda.runtime.memcpyHostToDevice, stream.ptr)

    def _run(self, plan: _Plan, issue) -> None:
        """Issue the step loop on the current stream: eagerly, or by replaying the plan's graph (captured on the
        second call of its shape). A capture that fails (say, a cuBLAS build that refuses it) leaves that shape
        eager, with one warning: slower, never wrong."""
        import cupy

        stream = cupy.cuda.get_current_stream()
        if not self.graphs or plan.graph is False or (plan.graph is None and plan.calls == 0):
            plan.calls += 1
            issue(stream)
            return
        if plan.graph is None:
            try:
                plan.graph = self._capture(plan, issue)
            except Exception as err:
                plan.graph = False
                warnings.warn(f"flashrnn_core cuda backend: CUDA graph capture failed ({type(err).__name__}: "
                              f"{err}); launching step by step for {plan.key[:7]}", RuntimeWarning, stacklevel=4)
                plan.calls += 1
                issue(stream)
                return
        plan.calls += 1
        plan.graph.launch(stream)

    def _capture(self, plan: _Plan, issue):
        """The step loop as a CUDA graph, captured on a private stream (the null stream cannot capture); it is
        then replayed on whichever stream its plan belongs to."""
        import cupy

        side = cupy.cuda.Stream(non_blocking=True)
        with side:
            side.begin_capture()
            try:
                issue(side)
            finally:
                graph = side.end_capture()
        plan.nodes = _graph_nodes(graph)
        return graph

    def captured(self, problem, direction: str) -> tuple[bool, int]:
        """(whether the ``fw``/``bw`` step loop of ``problem`` on the current stream has been captured, its
        graph's node count: 0 when cuda-python cannot say)."""
        import cupy

        key = (direction, problem.function, np.dtype(problem.dtype), problem.B, problem.T, problem.N, problem.D,
               cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr)
        plan = self._plans.get(key)
        return (plan is not None and bool(plan.graph)), (plan.nodes if plan is not None else 0)

    def clear(self) -> None:
        """Drop every captured graph and its scratch (memory returns to CuPy's pool in stream order)."""
        with self._lock:
            self._plans.clear()


def _graph_nodes(graph) -> int:
    """Node count of a CuPy graph (for the benchmark's launches-per-step); 0 if cuda-python cannot say."""
    try:
        from cuda.bindings import runtime

        err, _, count = runtime.cudaGraphGetNodes(graph.graph, 0)
        return int(count) if int(err) == 0 else 0
    except Exception:
        return 0
