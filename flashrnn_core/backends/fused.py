"""``cuda_fused``: the whole sequence in one persistent kernel (``cuda_src/fused_fw.cu``).

Every block owns one head and a tile of ``8 * nbt`` sequences: R stays in registers as tensor-core fragments,
``h`` in shared memory, and a time step costs one ``__syncthreads`` (no grid synchronisation, since heads never
read each other). Heads too large for one block run on a thread-block cluster per head (sm_90): each block owns
a slice of R's output rows and sends its slice of the new ``h`` to the others with ``st.async``, counted by an
mbarrier (no cluster-wide barrier per step). The forward writes ``states [S, B, T, N, D]`` and ``saved [B, T, n_saved, N, D]`` (the cells'
saved values, docs/architecture.md "Saved tensors"), so any backend's backward can consume them.

Parameters: ConstrINT (``flashrnn_core.constrint``) is the one chooser. ``choose`` asks
``constrint.tuning.choose_for_device`` (the on-disk tuning cache, where a measured entry from
``python -m flashrnn_core.tune`` wins over the solver's) and turns its ``FusedParams`` into a ``Launch``
(``launch_of``, the one conversion). A shape the solver finds infeasible (D not a multiple of 16, R too large for
the registers of a block or of a cluster, no clusters before sm_90, ...) is refused with the binding constraints in
words, and ``auto`` falls back to ``cuda``. float32 heads whose R fits no launch as bf16 hi + lo (on an H100 lstm,
slstm and gru D = 768 and, on clusters of 3-16 blocks, most of D = 336-720 of every cell; on an A100,
without clusters, lstm D = 80-96, gru 80-112, elman 144-192) hold R and h as one fp16 operand each: TF32's
precision, SPEC's 1e-3 (``KernelModel.f32_half_operands``; their labels say "f16ops", and ``say_half_operands`` logs
it). The inference forward (``save=False``: nothing will run backward, so the kernel writes the states only) has a
solve of its own (direction "inference": the forward's variables with fewer outputs to price), so it may run another
geometry than the forward that saves.
The backward's scatter kernel does the same where nothing else takes a float32 head (gru D = 768, D = 576-672),
scaling drs by a power of two a batch row; for lstm and slstm D = 672 and 768 with one receive buffer for its
partials (label "onerecv", ``KernelModel.bw_scatter_one_recv``), slstm's with one input stage too (label "p0",
``KernelModel.bw_scatter_one_stage``). ``kernel_variants`` lists exactly the kernels the solver
can choose on the CI presets (``VARIANT_HARDWARE`` x cells x dtypes x ``VARIANT_DIMS`` x ``VARIANT_BATCHES`` x
``VARIANT_HEADS``).

Backward: the fused reverse-time kernel (``cuda_src/fused_bw.cu``: one block per head and 8 sequences, or a
thread-block cluster per head where R^T does not fit one block (sm_90: each block owns a slice of the dims and
the blocks exchange drs each step, as the forward's h); R^T as mma A-fragments in registers (partly in shared
memory where no cluster holds it in registers), ``k_split`` warps splitting K per 16 rows, inputs staged by
cp.async ``prefetch`` steps ahead, drs double-buffered in shared memory, outputs written as 16-byte pieces),
with parameters from the same solver (``choose(..., direction="backward")``, ``constrint/backward.py``). Each
block sums db, and where the solver says so (``FusedParams.fused_dr``, 16-bit storage, one block a head) dR as
m16n8k8 tiles of drs_t^T h_{t-1}, over its batch tile; the host adds the tiles' partial sums in a fixed order
(deterministic, no atomics). Otherwise dR is summed over all B*T after the kernel (``recurrent_grad``: a kernel
of its own for several heads, cuBLAS for one). Shapes the solver finds
infeasible (lstm/slstm above D=512, float32 heads above ~D=128 to 256, clusters before sm_90) run the ``cuda``
backend's backward (``vanilla``'s where ``cuda`` cannot run) on this forward's saved tensors (the same contract).

Variable lengths: both kernels take ``problem.lengths`` (None: a null pointer); docs/architecture.md "Variable lengths".
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .. import _arrays
from ..constrint import A100, H100, FusedParams, Hardware, Infeasible, solve_fused, tuning
from ..constrint.problems import DIRECTIONS
from ..runtime.env import atomic_write, cache_dir
from .base import Backend
from .recurrent_grad import NO_OVERLAP, OverlappedDr, dr_specs, sum_dr

SOURCE, ENTRY = "fused_fw.cu", "flashrnn_fused_fw"
BW_SOURCE, BW_ENTRY = "fused_bw.cu", "flashrnn_fused_bw"

#: cell name -> struct in cuda_src/cells/; storage dtype -> CUDA type.
CELL_STRUCTS = {"lstm": "LstmCell", "slstm": "SlstmCell", "gru": "GruCell", "elman": "ElmanCell"}
STORAGE_TYPES = {_arrays.bfloat16: "__nv_bfloat16", _arrays.float16: "__half", _arrays.float32: "float"}

#: Where ``kernel_variants`` asks the solver: the CI presets (sm_80: A100, sm_90: H100) and, for every cell and
#: storage dtype, D in 16..768 (multiples of 16) x B x N. The choice depends on B and N only through the blocks
#: a launch has: B = 1 or N = 1 leaves SMs idle (large clusters pay), B = 256 x 12 heads passes one wave of
#: narrow tiles (wider tiles pay).
VARIANT_HARDWARE = (A100, H100)
VARIANT_DIMS = tuple(range(16, 769, 16))
VARIANT_BATCHES = (1, 16, 64, 256)
VARIANT_HEADS = (1, 12)


@dataclass(frozen=True)
class Launch:
    """How ``flashrnn_fused_fw`` runs one ConstrINT choice: the kernel variant (template parameters as -D
    defines) and its launch geometry. ``launch_of`` is the one conversion; ``choice`` keeps the solver's full
    record (estimates, registers, waves) for reports."""

    choice: FusedParams
    spec: Any  # runtime.KernelSpec
    grid: tuple[int, int]  # (N heads * cluster, batch tiles), in blocks
    threads: int
    smem_bytes: int  # dynamic shared memory a block
    cluster: int  # blocks per head (a thread-block cluster when > 1)


def forward_direction(save: bool) -> str:
    """The solver's direction of a forward launch: "forward" saves what a backward reads, "inference" (``save``
    False) writes the states only."""
    return "forward" if save else "inference"


def launch_of(choice: FusedParams) -> Launch:
    """The launch of a solver's choice: fused_fw.cu for a forward one, the same without the saved values for an
    inference one (FLASHRNN_SAVE=0, in its template arguments), fused_bw.cu for a backward one."""
    from ..runtime import KernelSpec

    dtype = np.dtype(choice.dtype)
    # Hardware tanh (relative error ~2^-11) where storage is 16-bit; the accurate functions for float32.
    fast = "0" if dtype == _arrays.float32 else "1"
    # FLASHRNN_THREADS and FLASHRNN_SMEM_BYTES are checked against the kernel's own Tile by static_asserts:
    # the solver's geometry and the kernel agree or the variant does not compile.
    defines = (("FLASHRNN_CELL", CELL_STRUCTS[choice.function]), ("FLASHRNN_STORAGE", STORAGE_TYPES[dtype]),
               ("FLASHRNN_FAST_ACTIVATIONS", fast), *((k, str(v)) for k, v in choice.template_args().items()))
    if choice.direction == "backward":
        source, entry = BW_SOURCE, BW_ENTRY
        label = (f"{choice.function} cuda_fused bw {choice.dtype} D{choice.D} ks{choice.k_split} "
                 f"p{choice.prefetch_steps}" + (" dr" if choice.fused_dr else ""))
        if choice.blocks_per_head > 1:
            label += f" cluster{choice.blocks_per_head}"
        if choice.scatter:
            label += f" scatter w{choice.warps_per_block}" + (" onerecv" if choice.one_recv else "")
    else:
        source, entry = SOURCE, ENTRY
        label = (f"{choice.function} cuda_fused fw {choice.dtype} D{choice.D} nbt{choice.batch_ntiles} "
                 f"p{choice.prefetch_steps}")
        if choice.blocks_per_head > 1 or choice.k_split > 1:
            label += f" cluster{choice.blocks_per_head} ksplit{choice.k_split}" + (" wholek" if choice.whole_k else "")
            label += f" dma{choice.dma_warps}" if choice.dma_warps else ""
            label += " wide" if choice.wide_warps else ""
            label += f" split{choice.head_clusters}" if choice.head_clusters > 1 else ""
    label += " f16ops" if choice.half_operands else ""
    if choice.r_ktiles_in_smem:
        label += f" rsmem{choice.r_ktiles_in_smem}"
    if choice.direction == "inference":
        label += " infer"
    # Clusters need sm_90; so does shared memory beyond what sm_80 gives a block (a choice made for sm_90).
    sm90_only = choice.blocks_per_head > 1 or choice.smem_bytes > A100.smem_per_block_optin
    spec = KernelSpec(source=source, entry=entry, defines=defines, label=label, min_sm=90 if sm90_only else 80,
                      smem_dynamic=choice.smem_bytes)
    return Launch(choice, spec, tuple(choice.grid), choice.threads_per_block, choice.smem_bytes,
                  choice.blocks_per_head)


def choose(function: str, dtype, B: int, N: int, D: int, hardware: Hardware | None = None,
           device: int | None = None, direction: str = "forward") -> Launch | str:
    """The launch (``direction``: "forward", "inference" or "backward", ``constrint.problems.DIRECTIONS``) for
    one shape, or why the fused kernel cannot run it.

    ``hardware`` None: the GPU ``device`` (the current one by default), through the tuning cache
    (``constrint.tuning.choose_for_device``: a measured entry, else the solver's choice, stored). A preset
    (``constrint.H100``, ...): the solver's choice for it, without the cache (CPU tests, the variant list).
    """
    dtype = np.dtype(dtype)
    if dtype not in STORAGE_TYPES:
        return f"storage dtype {dtype} is not one of float32, bfloat16, float16"
    name = _arrays.dtype_name(dtype)
    if hardware is None:
        choice = tuning.choose_for_device(function, name, B, N, D, direction=direction, device=device)
        where = "this GPU"
    else:
        choice = solve_fused(hardware, function, name, B, N, D, direction=direction)
        where = f"{hardware.name} ({hardware.arch})"
    if isinstance(choice, Infeasible):
        kernel = "fused backward kernel" if direction == "backward" else "fused kernel"
        return (f"{function} in {name} with head dimension D={D} (B={B}, N={N}) has no valid launch of the "
                f"{kernel} on {where}: {choice.reason}")
    return launch_of(choice)


@lru_cache(maxsize=1)
def solver_variants() -> tuple[Any, ...]:
    """The distinct kernels (forward, inference and backward) the solver chooses over ``VARIANT_HARDWARE`` x
    cells x storage dtypes x ``VARIANT_DIMS`` x ``VARIANT_BATCHES`` x ``VARIANT_HEADS`` (~27600 solves, ~5.5 min
    on one core: infeasible shapes are not explained; ``store_solver_variants`` spreads them over processes), kept
    on disk between processes (``VARIANTS_DIR``). Each one's ``min_sm`` is the oldest preset the solver picks it on
    (at least what the kernel needs), so that ``compile --check`` builds it only for architectures that can launch
    it."""
    path = variants_path()
    chosen = _read_variant_choices(path)
    if chosen is None:
        chosen = _solve_variant_choices()
        _write_variant_choices(path, chosen)
    specs = ((launch_of(params).spec, sm) for params, sm in chosen)
    return tuple(replace(spec, min_sm=max(spec.min_sm, sm)) for spec, sm in specs)


def store_solver_variants(processes: int) -> None:
    """Solve ``solver_variants``' list in ``processes`` spawned processes where it is not on disk yet (``compile
    --jobs``; spawned, as a fork of a process that has touched CUDA is not safe), the same list in the same order
    as one process solves."""
    path = variants_path()
    if processes > 1 and _read_variant_choices(path) is None:
        _write_variant_choices(path, _solve_variant_choices(processes))


#: ``<cache directory>/variants/<digest>.json``: ``solver_variants`` of the package as it is. Each process that
#: lists the kernels (``compile``, the sanitizer's problems, the tests) paid the solves: on the GPU machine three
#: or four a call, minutes of its time.
VARIANTS_DIR = "variants"


def variants_path() -> Path:
    """Where ``solver_variants`` is kept: named by a digest of everything the list follows from, the package's
    Python sources (the solver, its model, the cells, ``launch_of``) and the grid solved over, so that any change
    to them is a miss, never a stale list."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    grid = (DIRECTIONS, VARIANT_HARDWARE, sorted(STORAGE_TYPES.values()), VARIANT_DIMS, VARIANT_BATCHES, VARIANT_HEADS)
    digest.update(repr(grid).encode())
    return cache_dir() / VARIANTS_DIR / f"{digest.hexdigest()[:24]}.json"


def _solve_variant_choices(processes: int = 1) -> list[tuple[FusedParams, int]]:
    """One solver choice per distinct kernel, with the oldest preset's sm that picks it, in the order found
    (the grid is read here, so a worker process solves the caller's grid)."""
    from ..cells import CELLS

    shapes = list(itertools.product(DIRECTIONS, VARIANT_HARDWARE, CELLS, [_arrays.dtype_name(d) for d in STORAGE_TYPES],
                                    VARIANT_DIMS, VARIANT_BATCHES, VARIANT_HEADS))
    if processes > 1:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            choices = list(pool.map(_variant_choice, shapes, chunksize=max(1, len(shapes) // (16 * processes))))
    else:
        choices = [_variant_choice(shape) for shape in shapes]
    oldest: dict[Any, tuple[FusedParams, int]] = {}  # insertion-ordered: spec -> (a choice of it, oldest sm)
    for (_, hw, *_), choice in zip(shapes, choices):
        if choice is None:
            continue
        spec = launch_of(choice).spec
        first, sm = oldest.get(spec, (choice, hw.sm))
        oldest[spec] = (first, min(sm, hw.sm))
    return list(oldest.values())


def _variant_choice(shape: tuple) -> FusedParams | None:
    """The solver's choice for one (direction, hardware, cell, dtype name, D, B, N) of the grid; None: infeasible."""
    direction, hw, function, dtype_name, D, B, N = shape
    choice = solve_fused(hw, function, dtype_name, B, N, D, direction=direction, explain=False)
    return None if isinstance(choice, Infeasible) else choice


def _write_variant_choices(path: Path, chosen: list[tuple[FusedParams, int]]) -> None:
    """``chosen`` as ``_read_variant_choices`` reads it back, written whole or not at all."""
    text = json.dumps({"variants": [{"params": p.to_dict(), "sm": sm} for p, sm in chosen]})
    try:
        atomic_write(path, text)
    except OSError:  # an unwritable cache directory: the next process solves again
        pass


def _read_variant_choices(path: Path) -> list[tuple[FusedParams, int]] | None:
    """``solver_variants``' choices from ``path``; None where it is missing or unreadable (a miss)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [(FusedParams.from_dict(v["params"]), int(v["sm"])) for v in json.load(f)["variants"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@lru_cache(maxsize=None)
def say_half_operands(label: str) -> None:
    """Log, once a kernel, that a float32 kernel runs at TF32's precision (``KernelModel.f32_half_operands``)."""
    logging.getLogger("flashrnn_core").info(
        "%s: float32 R and h reach the tensor cores as fp16 operands, TF32's precision (SPEC: 1e-3): no launch "
        "holds them as bf16 hi + lo; backend='cuda' keeps float32's", label)


def _empty(shape, dtype):
    """Output allocation (one place, so tests can hand out NaN-poisoned memory and check it is overwritten)."""
    import cupy

    return cupy.empty(shape, dtype=dtype)


def _zeros_u64(n: int):
    import cupy

    return cupy.zeros(n, dtype=cupy.uint64)


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


def handoff_words(choice: FusedParams) -> int:
    """8-byte words of the hand-off buffer of a forward whose head spans several clusters (fused_fw.cu
    HeadHandoff: [batch tiles][heads][clusters x blocks][2 buffers][words a block's slice of h]), 0 otherwise."""
    if choice.head_clusters == 1:
        return 0
    split = 2 if np.dtype(choice.dtype) == _arrays.float32 and not choice.half_operands else 1
    slice_words = split * choice.batch_tile * choice.dims_per_block * 2 // 4  # 4 data bytes a word (16-bit operands)
    return choice.batch_tiles * choice.N * choice.head_clusters * choice.blocks_per_head * 2 * slice_words


class _HandoffLaunch:
    """A forward whose head spans several clusters: its hand-off buffer zeroed before each launch, on the stream
    of the launch (the kernel's tags are the step + 1, so none may stay from the last launch)."""

    __slots__ = ("prepared", "handoff")

    def __init__(self, prepared: Any, handoff: Any):
        self.prepared, self.handoff = prepared, handoff

    def __call__(self, *values: Any, stream: Any = None) -> None:
        """``PreparedLaunch.__call__``'s; ``stream``: None (CuPy's current one) or a CuPy stream."""
        with stream if stream is not None else contextlib.nullcontext():
            self.handoff.fill(0)
        self.prepared(*values, stream=stream)


class FusedBackend(Backend):
    name = "cuda_fused"

    def unsupported(self, problem) -> str | None:
        if not problem.on_gpu:
            return "cuda_fused runs on CuPy arrays on a GPU, got NumPy arrays"
        params = self._choose(problem)
        return params if isinstance(params, str) else None

    def _choose(self, problem, save: bool = True) -> Launch | str:
        return choose(problem.function, problem.dtype, problem.B, problem.N, problem.D, device=problem.device,
                      direction=forward_direction(save))

    def params(self, problem, save: bool = True) -> Launch:
        """The forward's launch (``save`` False: the inference kernel); raises where it has none."""
        params = self._choose(problem, save)
        if isinstance(params, str):
            raise ValueError(f"backend: 'cuda_fused' cannot run {problem.label()}: {params}")
        if params.choice.half_operands:
            say_half_operands(params.spec.label)
        return params

    def spec(self, problem, params: Launch):
        return params.spec

    def forward(self, problem, Wx, R, b, states0, save=True):
        params = self.params(problem, save)
        cell, dtype = problem.cell, problem.dtype
        B, T, N, D = problem.B, problem.T, problem.N, problem.D
        # Parameters in another dtype than Wx are converted once here (small next to Wx): the kernel reads one
        # storage type. float32 parameters for 16-bit Wx round to what the tensor cores would take anyway.
        Wx, R, b, states0 = (_as(a, dtype) for a in (Wx, R, b, states0))
        states = _empty((cell.states, B, T, N, D), dtype)
        saved = _empty((B, T, cell.n_saved, N, D), dtype) if save else None  # None: a null pointer, never written
        self.prepare_forward(problem, params, Wx, R, b, states0, states, saved)()
        return states, saved

    def prepare_forward(self, problem, params: "Launch", Wx, R, b, states0, states, saved):
        """The kernel launch of ``forward`` over arrays already in the storage dtype (``_as``), resolved once
        (``runtime.PreparedLaunch``): ``Wx`` may be ``runtime.SLOT``, given at each call (the ``Stepper``, which
        also passes its state buffer as both ``states0`` and ``states``: stepper.py says why that is safe)."""
        from ..runtime import PreparedLaunch, get_kernel

        kernel = get_kernel(self.spec(problem, params), device=problem.device)
        # states0 None travels as a null pointer: the kernel starts from zeros; so do lengths None (every
        # sequence runs T steps). The grid counts blocks; the runtime opts the kernel in to > 48 KB of shared
        # memory and to 16-block clusters.
        words = handoff_words(params.choice)  # (a head on several clusters: one more argument, zeroed each launch)
        handoff = (_zeros_u64(words),) if words else ()
        prepared = PreparedLaunch(kernel, params.grid, (params.threads,), Wx, R, b, states0, states, saved,
                                  np.int32(problem.B), np.int32(problem.T), np.int32(problem.N), problem.lengths,
                                  *handoff, shmem=params.smem_bytes,
                                  cluster=(params.cluster, 1, 1) if params.cluster > 1 else None, device=problem.device)
        return _HandoffLaunch(prepared, handoff[0]) if words else prepared

    def backward(self, problem, Wx, R, b, states0, states, saved, dstates, dlast):
        """The fused reverse-time kernel (fused_bw.cu) with the solver's parameters; shapes it cannot take
        (``bw_params`` says why: heads too large for a cluster's registers and shared memory, ...) delegate to the
        ``cuda`` backend's backward (``vanilla``'s where ``cuda`` cannot run), which reads the same saved tensors
        (docs/architecture.md "Saved tensors")."""
        from . import get_backend, why_not

        params = self.bw_params(problem)
        if not isinstance(params, str):
            return self._fused_backward(problem, params, R, b, states0, states, saved, dstates, dlast, Wx.dtype)
        name = "cuda" if why_not("cuda", problem) is None else "vanilla"
        return get_backend(name).backward(problem, Wx, R, b, states0, states, saved, dstates, dlast)

    def bw_params(self, problem) -> Launch | str:
        """The backward kernel's launch (ConstrINT, through the tuning cache), or why it has none."""
        params = choose(problem.function, problem.dtype, problem.B, problem.N, problem.D, device=problem.device,
                        direction="backward")
        if not isinstance(params, str) and params.choice.half_operands:
            say_half_operands(params.spec.label)
        return params

    def _fused_backward(self, problem, params: Launch, R, b, states0, states, saved, dstates, dlast, wx_dtype):
        from ..runtime import get_kernel, launch
        from .base import Grads

        cell, dtype, choice = problem.cell, problem.dtype, params.choice
        B, T, N, D = problem.B, problem.T, problem.N, problem.D
        R16, s0, states, saved, dstates, dlast = (_as(a, dtype) for a in (R, states0, states, saved, dstates, dlast))
        tiles = params.grid[1]
        dWx = _empty((B, T, cell.gates_w, N, D), dtype)
        # Without dR in the kernel it is a GEMM over drs: lstm/slstm/elman's drs is their dx (cuda_src/cells/), so
        # it reads dWx; gru's drs (g, r, z) differs from its dx (r, z, n) and the kernel writes it.
        drs = _empty((B, T, cell.gates_r, N, D), dtype) if choice.stores_drs else None
        dinit = _empty((cell.states, B, 1, N, D), dtype)
        dr_part = _empty((tiles, cell.gates_r, N, D, D), np.float32) if choice.fused_dr else None
        db_part = _empty((tiles, cell.gates_b, N, D), np.float32)
        kernel = get_kernel(params.spec, device=problem.device)
        sd = 0 if dstates is None else dstates.shape[0]
        # Without dR in the kernel, its sum runs chunk by chunk beside it where the kernel leaves SMs idle
        # (recurrent_grad.OverlappedDr), else after it.
        dr_flop = 2.0 * B * T * cell.gates_r * N * D * D
        overlap = None if choice.fused_dr else OverlappedDr.fork(T, params.grid[0] * params.grid[1], dr_flop)
        launch(kernel, params.grid, (params.threads,), R16, s0, states, saved, dstates, dlast, dWx, drs, dinit,
               dr_part, db_part, np.int32(B), np.int32(T), np.int32(N), np.int32(sd), problem.lengths,
               *(NO_OVERLAP if overlap is None else overlap.kernel_arguments()),
               shmem=params.smem_bytes, cluster=(params.cluster, 1, 1) if params.cluster > 1 else None)
        if choice.fused_dr:
            dR = dr_part.sum(axis=0)
        else:  # dR[g, n] = sum over (b, t) of drs outer h_{t-1}: recurrent_grad.sum_dr, float32 accumulation
            dr_args = (dWx if drs is None else drs, states[0], None if s0 is None else s0[0])
            dR = sum_dr(*dr_args) if overlap is None else overlap.sum(*dr_args, R.dtype)  # (the db sum: beside)
        # The blocks' partial sums over their batch tiles, added in a fixed order: deterministic, no atomics.
        db = db_part.sum(axis=0).astype(b.dtype)
        dR = dR.astype(R.dtype, copy=False)
        s_dtype = states0.dtype if states0 is not None else wx_dtype
        return Grads(dWx.astype(wx_dtype, copy=False), dR, db, dinit.astype(s_dtype, copy=False))

    def kernel_variants(self):
        """Every kernel the solver can choose on the CI presets, forward and backward (``solver_variants``),
        and the dR kernel after it (``recurrent_grad``), for ``compile --check``."""
        return list(solver_variants()) + dr_specs()
