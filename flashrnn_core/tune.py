"""Measured refinement of ConstrINT's choice: ``python -m flashrnn_core.tune``.

    python -m flashrnn_core.tune                                  # the reference shapes (REFERENCE_SHAPES)
    python -m flashrnn_core.tune --cell lstm,gru --B 16,64 --N 12 --D 64 [--dtype bfloat16] [--T 1024]
                                 [--top-k 8] [--distinct] [--runs 20] [--jobs 16] [--no-store]

On the current GPU, for each shape and ``--direction`` (the forward that saves for a backward, the inference
forward, the backward: each kernel has its solve and its cache entry): the solver's ``top_k`` feasible
configurations (``constrint.problems.top_k``, best estimate first; the first is the solver's own choice) are compiled in
parallel, each timed with CUDA events (``runtime.timing``: the median of ``--runs`` calls after a warm-up), and
the fastest is stored in the tuning cache with ``tuning.store(..., measured_us=<its median, microseconds for the
whole forward of T steps>)``: from then on ``cuda_fused`` launches it for that GPU and shape (a measured entry
wins over the solver's). A table of every candidate is printed. Shape flags take comma-separated lists and
combine as a product; without any of --cell, --B, --N, --D the reference shapes are tuned.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from .constrint import FusedParams, Hardware, Infeasible, top_k, tuning
from .constrint.problems import DIRECTIONS


class Shape(NamedTuple):
    """One problem: cell, storage dtype, batch, heads, head dimension, sequence length, and which kernel
    (``direction``: "forward", fused_fw.cu, "inference", fused_fw.cu writing the states only, or "backward",
    fused_bw.cu: ``constrint.problems.DIRECTIONS``)."""

    function: str
    dtype: str
    B: int
    N: int
    D: int
    T: int = 1024
    direction: str = "forward"

    def label(self) -> str:
        kernel = "" if self.direction == "forward" else f" {self.direction}"
        return f"{self.function} {self.dtype} B={self.B} {self.N}x{self.D} T={self.T}{kernel}"


#: The reference shapes of issue 7 (bfloat16, T = 1024): lstm at 12x64, 48x16, 3x256 and B = 16, 64, 256 at
#: 12x64; gru, slstm, elman at 12x64, B = 16. ``bench/sweep_fused.py`` measures the same list.
REFERENCE_SHAPES = (
    Shape("lstm", "bfloat16", 16, 12, 64), Shape("lstm", "bfloat16", 16, 48, 16),
    Shape("lstm", "bfloat16", 16, 3, 256), Shape("gru", "bfloat16", 16, 12, 64),
    Shape("slstm", "bfloat16", 16, 12, 64), Shape("elman", "bfloat16", 16, 12, 64),
    Shape("lstm", "bfloat16", 64, 12, 64), Shape("lstm", "bfloat16", 256, 12, 64),
)

#: A timer: the median milliseconds of the forward with one configuration (raises if it cannot run it).
Timer = Callable[[FusedParams], float]


@dataclass
class Row:
    """One measured configuration: the model's record, the median time (ms) or the error."""

    params: FusedParams
    ms: float | None = None
    error: str | None = None


@dataclass
class Tuned:
    """A shape's outcome: the candidates measured (the solver's choice first), or why there are none."""

    shape: Shape
    rows: list[Row] = field(default_factory=list)
    infeasible: str | None = None

    @property
    def solver(self) -> Row | None:
        return self.rows[0] if self.rows else None

    @property
    def best(self) -> Row | None:
        timed = [r for r in self.rows if r.ms is not None]
        return min(timed, key=lambda r: r.ms) if timed else None


def config_label(p: FusedParams) -> str:
    """The choices that make a configuration, short: blocks per head, k split, batch tile, prefetch, DMA warps, wide
    warps and R's k-tiles in shared memory where any (and for the backward whether dR is summed in the kernel)."""
    label = f"cl{p.blocks_per_head} ks{p.k_split}{'w' if p.whole_k else ''} bt{p.batch_tile} pf{p.prefetch_steps}"
    label += f" dma{p.dma_warps}" if p.dma_warps else ""
    label += " wide" if p.wide_warps else ""
    label += f" rs{p.r_ktiles_in_smem}" if p.r_ktiles_in_smem else ""
    return label + (f" dr{int(p.fused_dr)}" if p.direction == "backward" else "")


def measure_all(shape: Shape, candidates: list[FusedParams], timer: Timer) -> Tuned:
    """Time every candidate (in order; the first must be the solver's choice); a failing one keeps its error."""
    tuned = Tuned(shape)
    for params in candidates:
        try:
            tuned.rows.append(Row(params, ms=float(timer(params))))
        except Exception as err:  # a launch that fails is a result of the sweep, not the end of it
            tuned.rows.append(Row(params, error=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"))
    return tuned


def geometry_key(p: FusedParams) -> tuple:
    """What a configuration is apart from its prefetch depth."""
    return (p.blocks_per_head, p.k_split, p.whole_k, p.batch_ntiles, p.r_ktiles_in_smem, p.fused_dr, p.scatter,
            p.warps_per_block, p.dma_warps, p.wide_warps)


def distinct_geometries(configs: list[FusedParams]) -> list[FusedParams]:
    """The first configuration of each geometry (``geometry_key``), in the order given."""
    first: dict[tuple, FusedParams] = {}
    for p in configs:
        first.setdefault(geometry_key(p), p)
    return list(first.values())


def candidates(hardware: Hardware, shape: Shape, k: int, distinct: bool = False) -> list[FusedParams] | str:
    """The solver's ``k`` best configurations for ``shape`` on ``hardware`` (its choice first), or why none;
    ``distinct``: the ``k`` best geometries instead, each at its best-estimated prefetch depth (the model tells
    prefetch depths apart least; a geometry's first one is the solver's pick for it)."""
    found = top_k(hardware, shape.function, shape.dtype, shape.B, shape.N, shape.D, 8 * k if distinct else k,
                  direction=shape.direction)
    if isinstance(found, Infeasible):
        return found.reason
    return sorted(distinct_geometries(found), key=lambda p: p.step_cycles)[:k] if distinct else found


def store_best(hardware: Hardware, tuned: Tuned) -> object:
    """Store the fastest candidate as a measured tuning-cache entry; returns its path (None if none ran or the
    cache is not writable)."""
    best = tuned.best
    if best is None:
        return None
    s = tuned.shape
    return tuning.store(hardware, s.function, s.dtype, s.B, s.N, s.D, best.params, direction=s.direction,
                        measured_us=best.ms * 1e3, note=f"python -m flashrnn_core.tune: fastest of {len(tuned.rows)} (T={s.T})")


def table(tuned: Tuned) -> list[str]:
    """The printed lines of one shape: every candidate with the model's and the measured time."""
    lines = [tuned.shape.label()]
    if tuned.infeasible:
        return lines + [f"  infeasible: {tuned.infeasible}"]
    best = tuned.best
    for i, row in enumerate(tuned.rows):
        marks = ("solver " if i == 0 else "") + ("best" if row is best else "")
        timed = f"{row.ms:9.3f} ms" if row.ms is not None else f"failed: {row.error}"
        ratio = f"{row.ms / best.ms:6.3f}" if row.ms is not None and best is not None else "     -"
        lines.append(f"  {config_label(row.params):26s} model {row.params.step_us * tuned.shape.T / 1e3:8.3f} ms  "
                     f"measured {timed}  x{ratio}  {marks}")
    return lines


def parse_shapes(args: argparse.Namespace) -> list[Shape]:
    """The shapes the flags name (a product of the lists), or the reference shapes without shape flags."""
    if args.cell is None and args.B is None and args.N is None and args.D is None:
        return [s._replace(dtype=args.dtype or s.dtype, T=args.T or s.T, direction=d)
                for d in args.direction for s in REFERENCE_SHAPES]
    cells = args.cell or ["lstm"]
    Bs, Ns, Ds = args.B or [16], args.N or [12], args.D or [64]
    return [Shape(c, args.dtype or "bfloat16", B, N, D, args.T or 1024, d)
            for d, c, B, N, D in itertools.product(args.direction, cells, Bs, Ns, Ds)]


def _ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _cells(text: str) -> list[str]:
    from .cells import CELLS

    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in CELLS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"cells: expected some of {', '.join(CELLS)}, got {text!r}")
    return names


def _directions(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names or any(n not in DIRECTIONS for n in names):
        raise argparse.ArgumentTypeError(f"direction: expected some of {', '.join(DIRECTIONS)}, got {text!r}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flashrnn_core.tune", description=__doc__.splitlines()[0])
    p.add_argument("--cell", type=_cells, help="cells, comma-separated (lstm, slstm, gru, elman)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="storage dtype (bfloat16)")
    p.add_argument("--B", type=_ints, help="batch sizes, comma-separated")
    p.add_argument("--N", type=_ints, help="head counts, comma-separated")
    p.add_argument("--D", type=_ints, help="head dimensions, comma-separated")
    p.add_argument("--T", type=int, help="sequence length timed (1024)")
    p.add_argument("--direction", type=_directions, default=list(DIRECTIONS),
                   help="kernels tuned, comma-separated: forward (saving for a backward), inference, backward (all)")
    p.add_argument("--top-k", type=int, default=8, help="candidates per shape (8)")
    p.add_argument("--distinct", action="store_true",
                   help="the top-k geometries (cluster, k split, batch tile, ...), each at its best prefetch depth")
    p.add_argument("--runs", type=int, default=20, help="timed runs per candidate, median taken (20)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (all cores)")
    p.add_argument("--no-store", action="store_true", help="measure and print, do not write the tuning cache")
    return p


# ------------------------------------------------------------------------------------------------ on the GPU


def precompile(candidates: list[FusedParams], arch: str, jobs: int) -> dict[str, str]:
    """Compile every candidate's kernel into the kernel cache in ``jobs`` processes (``compile.run_jobs``);
    returns {kernel name: error} for those that did not compile."""
    from .backends.fused import launch_of
    from .compile import run_jobs

    specs = list(dict.fromkeys(launch_of(p).spec for p in candidates))
    outcomes = run_jobs([(spec, arch) for spec in specs], max(1, jobs))
    return {o.spec.name(): o.error for o in outcomes if o.error}


def pinned(params: FusedParams):
    """A ``FusedBackend`` that runs ``params`` instead of the chooser's, for the kernel of its direction: a
    backward choice for the backward, a forward or an inference one for both forwards (the same geometry
    saving, and writing the states only)."""
    from dataclasses import replace

    from .backends.fused import FusedBackend, forward_direction, launch_of

    kinds = ("backward",) if params.direction == "backward" else ("forward", "inference")
    launches = {d: launch_of(replace(params, direction=d)) for d in kinds}

    class Pinned(FusedBackend):
        def params(self, problem, save=True):
            found = launches.get(forward_direction(save))
            return found if found is not None else super().params(problem, save)

        def bw_params(self, problem):
            return launches.get("backward") or super().bw_params(problem)

    return Pinned()


def gpu_timer(shape: Shape, runs: int = 20, warmup: int = 3, spin_ms: float = 0.5, seed: int = 0) -> Timer:
    """A timer for ``shape`` on the current GPU: random inputs made once, each configuration launched through
    ``FusedBackend`` with its parameters pinned, timed by ``runtime.timing.median_ms``. An inference shape times
    the forward that saves nothing (``save=False``). A backward shape times
    ``FusedBackend.backward`` (the kernel and the host's dR/db sums after it) on one forward's saved tensors,
    with upstream gradients on every state."""
    import cupy
    import numpy as np

    from . import _arrays
    from .backends.fused import FusedBackend
    from .cells import CELLS
    from .runtime.timing import median_ms
    from .validate import validate

    cell = CELLS[shape.function]
    rng = np.random.default_rng(seed)
    dtype = _arrays.dtype_named(shape.dtype)

    def normal(*dims: int, scale: float = 1.0):
        return cupy.asarray((rng.standard_normal(dims, dtype=np.float32) * scale).astype(dtype))

    Wx = normal(shape.B, shape.T, cell.gates_w, shape.N, shape.D)
    R = normal(cell.gates_r, shape.N, shape.D, shape.D, scale=shape.D ** -0.5)
    b = normal(cell.gates_b, shape.N, shape.D)
    problem = validate(Wx, R, b, function=shape.function)

    if shape.direction == "backward":
        states, saved = FusedBackend().forward(problem, Wx, R, b, None)
        dstates = normal(cell.states, shape.B, shape.T, shape.N, shape.D)

    def timer(params: FusedParams) -> float:
        backend = pinned(params)
        if shape.direction == "backward":
            run = lambda: backend.backward(problem, Wx, R, b, None, states, saved, dstates, None)  # noqa: E731
        else:
            save = shape.direction != "inference"
            run = lambda: backend.forward(problem, Wx, R, b, None, save=save)  # noqa: E731
        return median_ms(run, runs=runs, warmup=warmup, spin_ms=spin_ms)

    return timer


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .constrint.hardware import current
    from .runtime import device_arch

    hw = current()
    print(f"tuning on {hw.name} ({hw.arch}, {hw.sm_count} SMs)", flush=True)
    for shape in parse_shapes(args):
        found = candidates(hw, shape, args.top_k, args.distinct)
        if isinstance(found, str):
            print("\n".join(table(Tuned(shape, infeasible=found))))
            continue
        for name, error in precompile(found, device_arch(), args.jobs).items():
            print(f"  compile failed: {name}: {error}")
        tuned = measure_all(shape, found, gpu_timer(shape, runs=args.runs))
        print("\n".join(table(tuned)))
        if not args.no_store:
            path = store_best(hw, tuned)
            print(f"  stored: {path}" if path else "  nothing stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
