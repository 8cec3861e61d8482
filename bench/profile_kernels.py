"""One reference problem's forward and backward, for a profiler (ncu, nsys) to look at.

    FLASHRNN_CORE_LINEINFO=1 ncu -k regex:flashrnn_fused_bw -c 1 --set full --import-source yes \\
        python bench/profile_kernels.py --cell lstm --heads 12 --head-dim 64 --batch 16 --time 256

Runs the problem twice before the profiled third call (the first compiles and loads every kernel), so that the
profiler's launch count picks a warm call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashrnn_core as fc  # noqa: E402
from flashrnn_core import _arrays  # noqa: E402
from flashrnn_core.cells import CELLS  # noqa: E402


def add_problem_arguments(p: argparse.ArgumentParser, time: int) -> None:
    """The problem's flags (cell, heads, head dim, batch, time, dtype), shared with bench/phase_clocks.py."""
    p.add_argument("--cell", default="lstm", choices=sorted(CELLS))
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--time", type=int, default=time)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))


def problem_inputs(args: argparse.Namespace):
    """(dtype, Wx, R, b, dh) of the flags' problem on the GPU: random normal (BENCH.md), R scaled by 1/sqrt(D), dh
    an upstream gradient on h."""
    import cupy

    cell, dtype = CELLS[args.cell], np.dtype(getattr(_arrays, args.dtype))
    B, T, N, D = args.batch, args.time, args.heads, args.head_dim
    rng = cupy.random.default_rng(0)

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape, dtype=cupy.float32) * scale).astype(dtype)

    Wx, R, b = normal(B, T, cell.gates_w, N, D), normal(cell.gates_r, N, D, D, scale=D**-0.5), normal(cell.gates_b, N, D)
    return dtype, Wx, R, b, normal(1, B, T, N, D)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_problem_arguments(p, time=256)
    p.add_argument("--backend", default="cuda_fused")
    p.add_argument("--calls", type=int, default=3)
    args = p.parse_args(argv)
    import cupy

    _, Wx, R, b, dh = problem_inputs(args)
    for _ in range(args.calls):
        result = fc.forward(Wx, R, b, function=args.cell, backend=args.backend)
        fc.backward(result, dstates=dh)
    cupy.cuda.Device().synchronize()
    print(f"{args.cell} {args.heads}x{args.head_dim} B={args.batch} T={args.time} {args.dtype}: {args.calls} forward + "
          f"backward calls on {result.backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
