"""``cuda_fused``: the whole sequence in one persistent kernel (``cuda_src/fused_fw.cu``).

Every block owns one head and a tile of ``8 * nbt`` sequences: R stays in registers as tensor-core fragments,
``h`` in shared memory, and a time step costs one ``__syncthreads`` (no grid synchronisation, since heads never
read each other). Heads too large for one block run on a thread-block cluster per head (sm_90): each block owns
a slice of R's output rows and sends its slice of the new ``h`` to the others with ``st.async``, counted by an
mbarrier (no cluster-wide barrier per step). The forward writes ``states [S, B, T, N, D]`` and ``saved [B, T, n_saved, N, D]`` (the cells'
pre-activations, docs/architecture.md "Saved tensors"), so any backend's backward can consume them.

What it takes (``choose_params`` says why not otherwise, and ``auto`` then falls back to ``cuda``): D a multiple
of 16, up to ``max_head_dim`` on one block (128 at 16 bits; 64 for float32 lstm/slstm/gru, 128 for elman), and
the larger heads of ``CLUSTER_TABLE`` on sm_90.

Backward: heads on one block run the fused reverse-time kernel (``cuda_src/fused_bw.cu``: R^T as mma
A-fragments in registers, KS warps splitting K per 16 rows, inputs staged by cp.async several steps ahead,
drs double-buffered in shared memory, outputs written as 16-byte pieces). Each block also sums db, and for
16-bit storage dR (m16n8k8 tiles of drs_t^T h_{t-1} from what is already in shared memory), over its batch
tile; the host adds the tiles' partial sums in a fixed order (deterministic, no atomics). float32 (and heads
whose dR tiles would not fit a warp's registers) take dR as cuBLAS GEMMs over all B*T after the kernel.
Heads on clusters (and float32 lstm/slstm above D=48) still run the ``cuda`` backend's backward (``vanilla``'s
where ``cuda`` cannot run) on this forward's saved tensors (the same contract).

Variable lengths: both kernels take ``problem.lengths`` (None: a null pointer); docs/architecture.md "Variable lengths".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _arrays
from .base import Backend

SOURCE = "fused_fw.cu"
ENTRY = "flashrnn_fused_fw"

#: cell name -> struct in cuda_src/cells/; storage dtype -> CUDA type.
CELL_STRUCTS = {"lstm": "LstmCell", "slstm": "SlstmCell", "gru": "GruCell", "elman": "ElmanCell"}
STORAGE_TYPES = {_arrays.bfloat16: "__nv_bfloat16", _arrays.float16: "__half", _arrays.float32: "float"}

#: Largest head dimension whose R fits one block's registers without spilling (checked by
#: ``python -m flashrnn_core.compile --check`` for every variant). R takes ``Gr * D * D`` 16-bit operands
#: (twice that for float32, stored as bf16 hi + lo) spread over ``32 * D / (8 U)`` threads; at D = 128 that is
#: 64 registers a thread for lstm/slstm (512 threads, capped at 128 registers: 8 bytes spilled, so lstm/slstm
#: stop at 96 and take 112/128 on a 2-block cluster), 96 for gru (256 threads), 32 for elman.
MAX_D_16BIT = {"lstm": 96, "slstm": 96, "gru": 128, "elman": 128}
MAX_D_FLOAT32 = {"lstm": 64, "slstm": 64, "gru": 64, "elman": 128}

#: Heads too large for one block, on sm_90: (function, float32?, D) -> (cluster blocks CL, split-K KS).
#: Block r of the cluster owns output dims [r*D/CL, (r+1)*D/CL) with all of K, so its R slice is
#: ``Gr*D*D/CL`` operands; KS = 2 halves the k-tiles (registers and the dependent mma chain) a warp holds at the
#: cost of one more barrier a step. Each entry is the smallest CL (fewest SMs, least h traffic) that compiles
#: without spills (registers checked with ptxas for sm_90). Left out, and why:
#:   lstm/slstm D=768: R's slice on each of 16 blocks (4*768*768*2 B / 16 = 288 KB) exceeds a SM's 256 KB of
#:     registers: it needs R partly in shared memory, not written;
#:   gru D>=512 (16-bit) and float32 D>=512: the 16-block slice spills registers.
CLUSTER_TABLE = {
    ("lstm", False, 112): (2, 1), ("lstm", False, 128): (2, 1),
    ("slstm", False, 112): (2, 1), ("slstm", False, 128): (2, 1),
    ("lstm", False, 256): (8, 2), ("lstm", False, 512): (16, 2),
    ("slstm", False, 256): (8, 2), ("slstm", False, 512): (16, 2),
    ("gru", False, 256): (8, 2),
    ("elman", False, 256): (2, 1), ("elman", False, 512): (4, 1), ("elman", False, 768): (8, 2),
    ("lstm", True, 128): (4, 2), ("lstm", True, 256): (16, 2),
    ("slstm", True, 128): (4, 2), ("slstm", True, 256): (16, 2),
    ("gru", True, 128): (2, 2),
    ("elman", True, 256): (4, 1),
}

SMEM_DEFAULT_LIMIT = 48 * 1024  # dynamic shared memory a block gets without opting in (more is set per kernel)
SMEM_LIMIT = 96 * 1024  # at most this much a block (sm_80: 163 KB, sm_86/89: 99 KB, sm_90: 227 KB), so that two
#                         blocks still share an H100 SM where registers allow
#: Steps of Wx in flight. A step can take no less than the global-load latency over (prefetch - 1) steps:
#: measured on H100 (elman 12x64, B=16), 1 step ahead 0.60 us a step, 2: 0.33, 3: 0.29 (~0.6 us of latency);
#: lstm 12x64 (1 us a step) the same from 1 to 8. 8 keeps 0.1 us steps fed, where shared memory allows.
PREFETCH_MAX = 8


@dataclass(frozen=True)
class FusedParams:
    """One launch of ``flashrnn_fused_fw``: the template parameters and the launch geometry."""

    cell: str  # CUDA struct
    storage: str  # CUDA type
    D: int
    nbt: int  # batch n-tiles of 8 sequences per block
    prefetch: int  # steps of Wx in flight ahead
    cluster: int  # blocks per head (a thread-block cluster when > 1)
    ksplit: int  # warps splitting K for the same rows
    threads: int
    smem_bytes: int
    grid: tuple[int, int]  # (N heads * cluster, batch tiles)

    def defines(self) -> tuple[tuple[str, str], ...]:
        # Hardware tanh (relative error ~2^-11) where storage is 16-bit; the accurate functions for float32.
        fast = "0" if self.storage == "float" else "1"
        return (("FLASHRNN_CELL", self.cell), ("FLASHRNN_STORAGE", self.storage), ("FLASHRNN_D", str(self.D)),
                ("FLASHRNN_FAST_ACTIVATIONS", fast),
                ("FLASHRNN_NBT", str(self.nbt)), ("FLASHRNN_PREFETCH", str(self.prefetch)),
                ("FLASHRNN_CLUSTER", str(self.cluster)), ("FLASHRNN_KSPLIT", str(self.ksplit)),
                # Checked against the kernel's own Tile by a static_assert: the launch and the kernel agree.
                ("FLASHRNN_THREADS", str(self.threads)), ("FLASHRNN_SMEM_BYTES", str(self.smem_bytes)))


def max_head_dim(function: str, dtype) -> int:
    """Largest D of the single-block kernel."""
    return (MAX_D_FLOAT32 if np.dtype(dtype) == _arrays.float32 else MAX_D_16BIT)[function]


def tile_geometry(cell, dtype, D: int, nbt: int, prefetch: int, cluster: int = 1, ksplit: int = 1) -> tuple[int, int]:
    """(threads, dynamic shared-memory bytes) of one block: mirrors ``Tile`` in fused_fw.cu."""
    itemsize = np.dtype(dtype).itemsize
    split = 2 if np.dtype(dtype) == _arrays.float32 else 1  # float32: h as bf16 hi + lo
    u = 1 if cell.gates_r % 2 == 0 else 2  # d-groups of 8 per warp
    db = D // cluster
    warps_d = db // (8 * u)
    threads = 32 * warps_d * ksplit
    bt = 8 * nbt
    h_bytes = 2 * split * bt * (D + 8) * 2
    x_bytes = (prefetch + 1) * bt * (cell.gates_w * db + 16 // itemsize) * itemsize
    mt = u * cell.gates_r // 2
    part_bytes = ksplit * warps_d * mt * nbt * 4 * 32 * 4 if ksplit > 1 else 0
    out_bytes = 2 * (cell.states + cell.n_saved) * bt * (db + 16 // itemsize) * itemsize  # staged outputs
    bar_bytes = 16 if cluster > 1 else 0
    return threads, h_bytes + x_bytes + part_bytes + out_bytes + bar_bytes


def choose_params(function: str, cell, dtype, B: int, N: int, D: int, num_sms: int = 132,
                  cc: tuple[int, int] = (9, 0)) -> FusedParams | str:
    """The hand-derived parameter rule (the one place the ConstrINT solver will replace); a reason if none fits.

    - Head size: up to ``max_head_dim`` one block per (head, batch tile); above it, on sm_90, one thread-block
      cluster per (head, batch tile) from ``CLUSTER_TABLE``; anything else is refused with the reason.
    - Batch tile: 8 sequences (the mma's n = 8): issue 5 measured 8 sequences per block at 0.49 ms and 16 at
      1.49 ms for 12x64, B=16 (parallel blocks beat wider tiles). Only when the blocks would exceed what stays
      resident at once (one block of 256 threads a SM at the ~100-170 registers a thread these kernels take;
      a second wave doubles the time: measured 4.0 ms for 12x64 B=256 in 192 blocks) does the tile grow, to
      the narrowest of 16, 24, 32 sequences (nbt = 2..4, D <= 64, where the extra accumulators fit) that fits.
    - Prefetch depth: 3 steps of Wx in flight (``PREFETCH_MAX``), fewer only where shared memory would pass
      ``SMEM_LIMIT``.
    """
    dtype = np.dtype(dtype)
    if dtype not in STORAGE_TYPES:
        return f"storage dtype {dtype} is not one of float32, bfloat16, float16"
    if D % 16:
        return f"head dimension D={D} is not a multiple of 16 (the tensor-core tile's k)"
    if N * D * max(cell.gates_w, cell.n_saved) >= 2**31:
        return f"N*D={N * D} is too large: the kernel advances its pointers by 32-bit steps of Gw*N*D elements"
    cluster, ksplit = 1, 1
    if D > max_head_dim(function, dtype):
        key = (function, dtype == _arrays.float32, D)
        if key not in CLUSTER_TABLE:
            return (f"head dimension D={D} is above {max_head_dim(function, dtype)}, the largest whose R "
                    f"({cell.gates_r}x{D}x{D}) fits one block's registers for {function} in "
                    f"{_arrays.dtype_name(dtype)}, and no cluster variant takes it (cluster variants: "
                    f"{_cluster_dims(function, dtype)})")
        if tuple(cc) < (9, 0):
            return (f"head dimension D={D} needs a thread-block cluster per head (sm_90 or newer), this GPU is "
                    f"sm_{cc[0]}{cc[1]}")
        cluster, ksplit = CLUSTER_TABLE[key]
    threads, _ = tile_geometry(cell, dtype, D, 1, 1, cluster, ksplit)
    # Blocks resident at once, at the ~100-170 registers a thread these kernels take (160 assumed).
    resident = max(1, 65536 // (160 * threads)) * num_sms // cluster * cluster
    tiles = _tiles(cell, dtype, D, cluster)
    nbt = next((t for t in tiles if N * cluster * -(-B // (8 * t)) <= resident), tiles[-1])
    for nbt in range(nbt, 0, -1):  # the widest tile that fits shared memory, down to 1
        params = _fit(function, cell, dtype, D, nbt, cluster, ksplit, B, N)
        if params is not None:
            return params
    return f"shared memory for D={D} is above {SMEM_LIMIT} B even with one step of Wx in flight"


def _tiles(cell, dtype, D: int, cluster: int) -> tuple[int, ...]:
    """Batch tiles (nbt) a variant may use, for D <= 64 on one block: the widest that compile without spills
    (ptxas, sm_80 and sm_90): 32 sequences for lstm/slstm, 16 for gru/elman (whose lanes already hold twice the
    cells); float32 (hi + lo operands) 16, and gru in float32 8."""
    if D > 64 or cluster > 1:
        return (1,)
    if np.dtype(dtype) == _arrays.float32:
        return (1,) if cell.name == "gru" else (1, 2)
    return (1, 2, 3, 4) if cell.gates_r % 2 == 0 else (1, 2)


def _fit(function, cell, dtype, D, nbt, cluster, ksplit, B, N) -> FusedParams | None:
    """The deepest prefetch (<= PREFETCH_MAX) whose shared memory fits SMEM_LIMIT, or None."""
    for prefetch in range(PREFETCH_MAX, 0, -1):
        threads, smem = tile_geometry(cell, dtype, D, nbt, prefetch, cluster, ksplit)
        if smem <= SMEM_LIMIT:
            return FusedParams(CELL_STRUCTS[function], STORAGE_TYPES[np.dtype(dtype)], D, nbt, prefetch, cluster,
                               ksplit, threads, smem, (N * cluster, -(-B // (8 * nbt))))
    return None


def _cluster_dims(function: str, dtype) -> str:
    dims = [D for (f, f32, D) in CLUSTER_TABLE if f == function and f32 == (np.dtype(dtype) == _arrays.float32)]
    return ", ".join(f"D={D}" for D in dims) or "none"


def _device_info(device: int | None) -> tuple[int, tuple[int, int]]:
    """(multiprocessors, compute capability) of a CuPy device."""
    import cupy

    dev = cupy.cuda.Device(device if device is not None else cupy.cuda.Device().id)
    cc = dev.compute_capability
    return int(dev.attributes["MultiProcessorCount"]), (int(cc[:-1]), int(cc[-1]))


def _empty(shape, dtype):
    """Output allocation (one place, so tests can hand out NaN-poisoned memory and check it is overwritten)."""
    import cupy

    return cupy.empty(shape, dtype=dtype)


def _as(a, dtype):
    """``a`` in ``dtype``, C-contiguous and 16-byte aligned (cp.async copies 16-byte pieces of Wx)."""
    import cupy

    if a is None:
        return None
    if a.dtype != dtype or not a.flags.c_contiguous or a.data.ptr % 16:
        a = cupy.ascontiguousarray(a.astype(dtype, copy=False))
        if a.data.ptr % 16:
            a = a.copy()
    return a


class FusedBackend(Backend):
    name = "cuda_fused"

    def unsupported(self, problem) -> str | None:
        if not problem.on_gpu:
            return "cuda_fused runs on CuPy arrays on a GPU, got NumPy arrays"
        params = self._choose(problem)
        return params if isinstance(params, str) else None

    def _choose(self, problem) -> FusedParams | str:
        num_sms, cc = _device_info(problem.device)
        return choose_params(problem.function, problem.cell, problem.dtype, problem.B, problem.N, problem.D,
                             num_sms, cc)

    def params(self, problem) -> FusedParams:
        params = self._choose(problem)
        if isinstance(params, str):
            raise ValueError(f"backend: 'cuda_fused' cannot run {problem.label()}: {params}")
        return params

    def spec(self, problem, params: FusedParams):
        return _spec(problem.function, problem.dtype, params)

    def forward(self, problem, Wx, R, b, states0):
        params = self.params(problem)
        cell, dtype = problem.cell, problem.dtype
        B, T, N, D = problem.B, problem.T, problem.N, problem.D
        # Parameters in another dtype than Wx are converted once here (small next to Wx): the kernel reads one
        # storage type. float32 parameters for 16-bit Wx round to what the tensor cores would take anyway.
        Wx, R, b, states0 = (_as(a, dtype) for a in (Wx, R, b, states0))
        states = _empty((cell.states, B, T, N, D), dtype)
        saved = _empty((B, T, cell.n_saved, N, D), dtype)
        self.prepare_forward(problem, params, Wx, R, b, states0, states, saved)()
        return states, saved

    def prepare_forward(self, problem, params: FusedParams, Wx, R, b, states0, states, saved):
        """The kernel launch of ``forward`` over arrays already in the storage dtype (``_as``), resolved once
        (``runtime.PreparedLaunch``): ``Wx`` may be ``runtime.SLOT``, given at each call (the ``Stepper``, which
        also passes its state buffer as both ``states0`` and ``states``: stepper.py says why that is safe)."""
        from ..runtime import PreparedLaunch, get_kernel

        kernel = get_kernel(self.spec(problem, params), device=problem.device)
        # states0 None travels as a null pointer: the kernel starts from zeros; so do lengths None (every
        # sequence runs T steps). The grid counts blocks; the runtime opts the kernel in to > 48 KB of shared
        # memory and to 16-block clusters.
        return PreparedLaunch(kernel, params.grid, (params.threads,), Wx, R, b, states0, states, saved,
                              np.int32(problem.B), np.int32(problem.T), np.int32(problem.N), problem.lengths,
                              shmem=params.smem_bytes, cluster=(params.cluster, 1, 1) if params.cluster > 1 else None,
                              device=problem.device)

    def backward(self, problem, Wx, R, b, states0, states, saved, dstates, dlast):
        """The fused reverse-time kernel (fused_bw.cu) where the forward runs one block per head; cluster heads
        (and anything bw_unsupported names) delegate to the ``cuda`` backend's backward (``vanilla``'s where
        ``cuda`` cannot run), which reads the same saved tensors (docs/architecture.md "Saved tensors")."""
        from . import get_backend, why_not

        if bw_unsupported(problem.function, problem.cell, problem.dtype, problem.D) is None:
            return self._fused_backward(problem, R, b, states0, states, saved, dstates, dlast, Wx.dtype)
        name = "cuda" if why_not("cuda", problem) is None else "vanilla"
        return get_backend(name).backward(problem, Wx, R, b, states0, states, saved, dstates, dlast)

    def _fused_backward(self, problem, R, b, states0, states, saved, dstates, dlast, wx_dtype):
        import cupy

        from ..runtime import get_kernel, launch
        from .base import Grads

        cell, dtype = problem.cell, problem.dtype
        B, T, N, D = problem.B, problem.T, problem.N, problem.D
        R16, s0, states, saved, dstates, dlast = (_as(a, dtype) for a in (R, states0, states, saved, dstates, dlast))
        threads, smem, prefetch = bw_geometry(cell, dtype, D)
        fused_dr = bw_fused_dr(cell, dtype, D)
        tiles = -(-B // 8)
        dWx = _empty((B, T, cell.gates_w, N, D), dtype)
        # Without dR in the kernel it is a GEMM over drs: lstm/slstm/elman's drs is their dx (cuda_src/cells/), so
        # it reads dWx; gru's drs (g, r, z) differs from its dx (r, z, n) and the kernel writes it.
        drs = _empty((B, T, cell.gates_r, N, D), dtype) if _stores_drs(problem.function, cell, dtype, D) else None
        dinit = _empty((cell.states, B, 1, N, D), dtype)
        dr_part = _empty((tiles, cell.gates_r, N, D, D), np.float32) if fused_dr else None
        db_part = _empty((tiles, cell.gates_b, N, D), np.float32)
        kernel = get_kernel(_bw_spec(problem.function, dtype, D, threads, smem, prefetch), device=problem.device)
        sd = 0 if dstates is None else dstates.shape[0]
        launch(kernel, (N, tiles), (threads,), R16, s0, states, saved, dstates, dlast, dWx, drs, dinit, dr_part,
               db_part, np.int32(B), np.int32(T), np.int32(N), np.int32(sd), problem.lengths, shmem=smem)
        # The blocks' partial sums over their batch tiles, added in a fixed order: deterministic, no atomics.
        db = db_part.sum(axis=0).astype(b.dtype)
        if fused_dr:
            dR = dr_part.sum(axis=0)
        else:  # dR[g, n] = sum over (b, t) of drs outer h_prev: cuBLAS GEMMs over all B*T, float32 accumulation
            h0 = s0[0] if s0 is not None else cupy.zeros((B, 1, N, D), dtype)
            h_prev = cupy.concatenate([h0, states[0][:, :-1]], axis=1)  # [B, T, N, D]
            dR = cupy.empty((cell.gates_r, N, D, D), np.float32)
            _dr_gemms(dR, dWx if drs is None else drs, h_prev, dtype)
        dR = dR.astype(R.dtype, copy=False)
        s_dtype = states0.dtype if states0 is not None else wx_dtype
        return Grads(dWx.astype(wx_dtype, copy=False), dR, db, dinit.astype(s_dtype, copy=False))

    def kernel_variants(self):
        """Every variant ``choose_params`` can pick (cell, dtype, D, batch tile, cluster), for ``compile --check``."""
        from ..cells import CELLS

        specs = []
        for function, cell in CELLS.items():
            for dtype in STORAGE_TYPES:
                f32 = dtype == _arrays.float32
                layouts = [(D, 1, 1) for D in range(16, max_head_dim(function, dtype) + 1, 16)]
                layouts += [(D, *CLUSTER_TABLE[(f, is32, D)]) for (f, is32, D) in CLUSTER_TABLE
                            if f == function and is32 == f32]
                for D, cluster, ksplit in layouts:
                    for nbt in _tiles(cell, dtype, D, cluster):
                        params = _fit(function, cell, dtype, D, nbt, cluster, ksplit, 1, 1)
                        if params is not None:
                            specs.append(_spec(function, dtype, params))
                for D in range(16, max_head_dim(function, dtype) + 1, 16):  # the backward's variants
                    if bw_unsupported(function, cell, dtype, D) is None:
                        specs.append(_bw_spec(function, dtype, D, *bw_geometry(cell, dtype, D)))
        return specs


def _spec(function: str, dtype, params: FusedParams):
    from ..runtime import KernelSpec

    return KernelSpec(source=SOURCE, entry=ENTRY, defines=params.defines(), label=_label(function, dtype, params),
                      min_sm=90 if params.cluster > 1 else 80, smem_dynamic=params.smem_bytes)


def _label(function: str, dtype, params: FusedParams) -> str:
    label = f"{function} cuda_fused fw {_arrays.dtype_name(dtype)} D{params.D} nbt{params.nbt}"
    if params.cluster > 1:
        label += f" cluster{params.cluster} ksplit{params.ksplit}"
    return label


# ---- backward (fused_bw.cu) ----------------------------------------------------------------------------------
BW_SOURCE = "fused_bw.cu"
BW_ENTRY = "flashrnn_fused_bw"
#: Largest D of the backward kernel (one block per head, R^T as A-fragments: Gr*D/16 k-tiles x 4 registers a
#: thread, twice that for float32): checked without spills by compile --check for every variant.
MAX_D_BW_16BIT = {"lstm": 96, "slstm": 64, "gru": 112, "elman": 128}  # slstm 80/96, gru 128: spill at every KS
MAX_D_BW_FLOAT32 = {"lstm": 48, "slstm": 48, "gru": 64, "elman": 128}


def bw_unsupported(function: str, cell, dtype, D: int) -> str | None:
    """Why the fused backward kernel does not take (function, dtype, D), or None."""
    dtype = np.dtype(dtype)
    if dtype not in STORAGE_TYPES or D % 16:
        return "not a fused storage dtype / D not a multiple of 16"
    limit = (MAX_D_BW_FLOAT32 if dtype == _arrays.float32 else MAX_D_BW_16BIT)[function]
    if D > min(limit, max_head_dim(function, dtype)):
        return f"D={D} is above {limit}, the backward kernel's largest head on one block"
    return None


#: Warps sharing one 16-row M tile of the backward (fused_bw::Tile's KS): 4 where it compiles without spills
#: (ptxas, sm_80 and sm_90), so that a scheduler has up to 4 warps to interleave and each lane runs one cell;
#: issue 6 measured KS = 1 (4 warps at D = 64, one a scheduler) at ~6800 cycles a step, each of a lane's 4 cells'
#: instructions waiting on the last. Where 4 warps per tile would take more registers than 1024 threads leave,
#: fewer (listed here, found with ``python -m flashrnn_core.compile --check --match "cuda_fused bw"``).
BW_KSPLIT_LIMITS = {("lstm", 96): 2, ("gru", 112): 1}


def bw_ksplit(function: str, D: int) -> int:
    """Warps sharing one 16-row M tile of the backward (1, 2 or 4), at most 1024 threads a block."""
    limit = BW_KSPLIT_LIMITS.get((function, D), 4)
    return next(ks for ks in (4, 2, 1) if ks <= limit and (2 * D * ks <= 1024 or ks == 1))


#: Steps of backward inputs (saved, previous states, upstream gradient) in flight as cp.async stages: a step
#: cannot be shorter than the load latency over this many steps (the forward's Wx measured ~0.6 us).
BW_PREFETCH_MAX = 3
#: Shared memory the prefetch depth is chosen to stay within (one prefetch step is taken even above it, up to
#: what the architecture allows a block: compile --check holds every variant to that).
BW_SMEM_TARGET = 96 * 1024


def bw_geometry(cell, dtype, D: int) -> tuple[int, int, int]:
    """(threads, dynamic shared-memory bytes, prefetch steps) of the backward kernel: mirrors ``fused_bw::Tile``,
    with the deepest prefetch (<= BW_PREFETCH_MAX) that keeps shared memory within SMEM_LIMIT."""
    dtype = np.dtype(dtype)
    split, item = (2 if dtype == _arrays.float32 else 1), dtype.itemsize
    ks, row = bw_ksplit(cell.name, D), (D + 16 // item) * item
    outputs = cell.gates_w + (cell.gates_r if _stores_drs(cell.name, cell, dtype, D) else 0)
    fixed = (2 * split * 8 * (cell.gates_r * D + 8) * 2 + (ks * (D // 16) * 4 * 32 * 4 if ks > 1 else 0)
             + 2 * 8 * outputs * row)
    stage = (8 * cell.n_saved + 2 * cell.states * 8) * row
    # prefetch + 2 stages: a stage is refilled two steps after its own (fused_bw::Tile::NS)
    prefetch = next((p for p in range(BW_PREFETCH_MAX, 1, -1) if fixed + (p + 2) * stage <= BW_SMEM_TARGET), 1)
    return 2 * D * ks, fixed + (prefetch + 2) * stage, prefetch


def bw_fused_dr(cell, dtype, D: int) -> bool:
    """Whether the backward kernel sums dR itself (fused_bw::Tile::FUSED_DR, which must agree): 16-bit storage,
    at most 8 m16n8k8 tiles of dR_head ([Gr*D, D]) a warp and at most 512 threads; else dR is a GEMM after the
    kernel."""
    warps = D // 16 * bw_ksplit(cell.name, D)
    tiles = cell.gates_r * D // 16 * (D // 8)
    # Above 512 threads a block (< 128 registers a thread) the tiles' accumulators spill (ptxas, sm_80/sm_90).
    return np.dtype(dtype) != _arrays.float32 and -(-tiles // warps) <= 8 and 32 * warps <= 512


def _stores_drs(function: str, cell, dtype, D: int) -> bool:
    """Whether the backward kernel writes drs for a dR GEMM after it: only where dR is not summed in the kernel
    and the cell's drs differs from its dx (gru: (g, r, z) against (r, z, n))."""
    return function == "gru" and not bw_fused_dr(cell, dtype, D)


_CUDA_TYPES = {_arrays.bfloat16: 14, _arrays.float16: 2, _arrays.float32: 0}  # cudaDataType: 16BF, 16F, 32F


def _gemm(opa, opb, m, n, k, a, lda, sa, b, ldb, sb, c, ldc, sc, batch, dtype) -> None:
    """Column-major ``C[i] = op(A[i]) op(B[i])`` (pointers, element strides), A/B of ``dtype``, C float32, on the
    current CuPy stream with CuPy's cuBLAS handle."""
    import cupy
    from cupy_backends.cuda.libs import cublas

    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    t = _CUDA_TYPES[np.dtype(dtype)]
    cublas.gemmStridedBatchedEx(handle, opa, opb, m, n, k, one.ctypes.data, a, t, lda, sa, b, t, ldb, sb,
                                zero.ctypes.data, c, 0, ldc, sc, batch, 68, -1)  # CUBLAS_COMPUTE_32F, default algo


def _dr_gemms(dR, drs, h_prev, dtype) -> None:
    """dR[g, n, i, j] = sum_bt drs[bt, g, n, i] h_prev[bt, n, j]: per gate one GEMM batched over the heads (both
    operands advance D elements a head). Column-major C (j, i) = h (j, bt) @ drs (i, bt)^T."""
    GR, N, D = dR.shape[:3]
    BT = h_prev.shape[0] * h_prev.shape[1]
    e = np.dtype(dtype).itemsize
    for g in range(GR):
        _gemm(0, 1, D, D, BT, h_prev.data.ptr, N * D, D, drs.data.ptr + g * N * D * e, GR * N * D, D,
              dR.data.ptr + g * N * D * D * 4, D, D * D, N, dtype)


def _bw_spec(function: str, dtype, D: int, threads: int, smem: int, prefetch: int):
    from ..runtime import KernelSpec

    from ..cells import CELLS

    fast = "0" if np.dtype(dtype) == _arrays.float32 else "1"
    store_drs = _stores_drs(function, CELLS[function], dtype, D)
    defines = (("FLASHRNN_CELL", CELL_STRUCTS[function]), ("FLASHRNN_STORAGE", STORAGE_TYPES[np.dtype(dtype)]),
               ("FLASHRNN_D", str(D)), ("FLASHRNN_FAST_ACTIVATIONS", fast),
               ("FLASHRNN_KSPLIT", str(bw_ksplit(function, D))), ("FLASHRNN_PREFETCH", str(prefetch)),
               ("FLASHRNN_STORE_DRS", str(int(store_drs))),
               ("FLASHRNN_THREADS", str(threads)), ("FLASHRNN_SMEM_BYTES", str(smem)))
    return KernelSpec(source=BW_SOURCE, entry=BW_ENTRY, defines=defines,
                      label=f"{function} cuda_fused bw {_arrays.dtype_name(dtype)} D{D}", min_sm=80,
                      smem_dynamic=smem)
