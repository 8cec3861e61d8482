"""The fused backward's two cluster kernels against each other on one GPU: for each shape, the solver's choice, the
best configuration (by the solver's estimate) of the drs-exchange kernel (fused_bw.cu ``backward``: one block or a
cluster a head, R^T partly in shared memory where it must) and of the scatter-cluster kernel (``backward_scatter``),
each pinned and timed, and with ``--cuda`` the `cuda` backend's backward. The A/B behind ``problems._weighed_with``
(bench/results/phases/2026-12-03-h200-float32-scatter.txt).

    python bench/backward_stages.py --dtype float32 lstm:3:256 gru:1:512 elman:1:768   # cell:heads:head_dim
    python bench/backward_stages.py --dtype float32 --cuda lstm:1:512
    python bench/backward_stages.py --dry-run lstm:3:256     # the configurations only (no GPU: the H100 preset)

B=16 (``--batch``), T=1024; each time is ``tune.gpu_timer``'s: the backward kernel and the dR/db sums after it, on one
forward's saved tensors with upstream gradients on every state, CUDA events, median of ``--runs`` after warm-ups.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a source checkout

from flashrnn_core.constrint.problems import (DEFAULT_MODEL, FusedParams, Infeasible, build_fused,  # noqa: E402
                                              params_from, solve_fused)


def stage_choices(hw, function: str, dtype: str, B: int, N: int, D: int) -> dict[str, FusedParams | None]:
    """The solver's choice and each kernel's best estimate for one backward shape (None: the kernel cannot run it)."""
    found: dict[str, FusedParams | None] = {}
    chosen = solve_fused(hw, function, dtype, B, N, D, direction="backward")
    found["solver"] = None if isinstance(chosen, Infeasible) else chosen
    for name, model in (("exchange", DEFAULT_MODEL), ("scatter", replace(DEFAULT_MODEL, bw_scatter=True))):
        fp = build_fused(hw, function, dtype, B, N, D, "backward", model)
        solved = fp.problem.solve(explain=False)
        found[name] = None if isinstance(solved, Infeasible) else params_from(fp, solved.values)
    return found


def describe(p: FusedParams | None) -> str:
    """One configuration in a few words: kernel, blocks a head, warps (scatter) or k split, prefetch, R^T's tiles
    in shared memory, the solver's estimate in cycles a step."""
    if p is None:
        return "no launch"
    kind = f"scatter w{p.warps_per_block}" if p.scatter else f"ks{p.k_split}" + (" dr" if p.fused_dr else "")
    return f"cl{p.blocks_per_head} {kind} p{p.prefetch_steps} rs{p.r_ktiles_in_smem} est {p.step_cycles:.0f}"


def cuda_backward_ms(function: str, dtype: str, B: int, N: int, D: int, runs: int) -> float:
    """The `cuda` backend's backward of its own forward, upstream gradients on every state."""
    import cupy
    import numpy as np

    import flashrnn_core as fc
    from flashrnn_core import _arrays
    from flashrnn_core.cells import CELLS
    from flashrnn_core.runtime.timing import median_ms

    cell, dt, rng = CELLS[function], _arrays.dtype_named(dtype), np.random.default_rng(0)

    def normal(*dims: int, scale: float = 1.0):
        return cupy.asarray((rng.standard_normal(dims, dtype=np.float32) * scale).astype(dt))

    out = fc.forward(normal(B, 1024, cell.gates_w, N, D), normal(cell.gates_r, N, D, D, scale=D ** -0.5),
                     normal(cell.gates_b, N, D), function=function, backend="cuda")
    dstates = normal(cell.states, B, 1024, N, D)
    return median_ms(lambda: fc.backward(out, dstates=dstates), runs=runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="+", help="cell:heads:head_dim")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cuda", action="store_true", help="also time the `cuda` backend's backward")
    ap.add_argument("--dry-run", action="store_true", help="print the configurations, time nothing (no GPU)")
    args = ap.parse_args(argv)
    if args.dry_run:
        from flashrnn_core.constrint import H100 as hw
    else:
        from flashrnn_core.constrint.hardware import current

        hw = current()
    dry = " (dry run)" if args.dry_run else ""
    print(f"backward stages on {hw.name}, {args.dtype}, B={args.batch}, T=1024{dry}")
    for text in args.shapes:
        function, N, D = text.split(":")[0], *map(int, text.split(":")[1:])
        choices = stage_choices(hw, function, args.dtype, args.batch, N, D)
        timer = None
        if not args.dry_run:
            from flashrnn_core.tune import Shape, gpu_timer

            timer = gpu_timer(Shape(function, args.dtype, args.batch, N, D, direction="backward"), runs=args.runs)
        cells = []
        for name, p in choices.items():
            ms = "" if timer is None or p is None else f": {timer(p):.3f} ms"
            cells.append(f"{name} {describe(p)}{ms}")
        if args.cuda and not args.dry_run:
            cells.append(f"cuda: {cuda_backward_ms(function, args.dtype, args.batch, N, D, args.runs):.3f} ms")
        print(f"{function} {N}x{D}: " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
