"""Where a fused kernel's step goes: the solver's kernel for one problem, timed as built and with measurement
knobs (extra -D defines on the same variant), and the forward's step cut into phases by clock64.

    python bench/phase_clocks.py --cell lstm --heads 1 --head-dim 768 --batch 16 --time 1024 \\
        --variant base= --variant no_exchange=FLASHRNN_ABLATE_EXCHANGE --variant no_flush=FLASHRNN_ABLATE_FLUSH
    python bench/phase_clocks.py --direction backward --cell lstm --heads 3 --head-dim 256 \\
        --variant base= --variant late=FLASHRNN_LATE_COPIES
    python bench/phase_clocks.py --cell lstm --heads 12 --head-dim 64 \\
        --variant base= --variant block=FLASHRNN_WARP_SENDS=0
    python bench/phase_clocks.py --cell gru --heads 12 --head-dim 64 \\
        --variant base= --variant unpaired=FLASHRNN_PAIRED_DIMS=0
    python bench/phase_clocks.py --cell lstm --heads 12 --head-dim 64 --batch 256 \\
        --variant base= --variant no_trade=FLASHRNN_TRADE_CELLS=0 --variant inference=FLASHRNN_SAVE=0

A variant is ``name=DEFINE[,DEFINE=value...]`` (empty: the kernel as built). Each is timed (CUDA events, median of
--runs after a warm-up, ../shared/BENCH.md's protocol) and its output (states; dWx for the backward) compared bit
for bit with the first variant's: the knobs named ABLATE give wrong results on purpose, the others must match.
A forward variant then runs once more with FLASHRNN_PHASE_CLOCKS (fused_fw.cu): the step's phases in cycles
(clock64, lane 0 of every warp), the mean over the blocks and warps and the largest warp's, per step.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashrnn_core as fc  # noqa: E402
from bench.profile_kernels import add_problem_arguments, problem_inputs  # noqa: E402
from flashrnn_core.backends import fused  # noqa: E402
from flashrnn_core.runtime.timing import median_ms  # noqa: E402

#: fused_fw.cu's PHASE(k, ...) marks, in the order a step runs them (7: from the end of one step to the next).
#: In a cluster the step's copies run before the wait (Tile::EARLY_COPIES), so "wait h" holds them and
#: "x + copies" only the reads of Wx.
PHASES = ("wait h", "h + mma", "x + copies", "cells", "barrier", "send h", "-", "loop")


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name=A,B=2`` -> ("name", (("A", "1"), ("B", "2")))."""
    name, _, rest = text.partition("=")
    defines = []
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        defines.append((key, value or "1"))
    return name, tuple(defines)


#: The backend's own, before any patching (each variant wraps this one, never the previous variant's).
ORIGINAL_LAUNCH_OF = fused.launch_of


def with_defines(extra: tuple[tuple[str, str], ...], direction: str):
    """fused.launch_of, adding ``extra`` to the defines of the ``direction`` kernel (a distinct cache entry)."""

    def launch_of(choice, save=True):
        launch = ORIGINAL_LAUNCH_OF(choice, save)
        if choice.direction != direction or not extra:
            return launch
        spec = replace(launch.spec, defines=launch.spec.defines + extra,
                       label=launch.spec.label + " " + " ".join(k for k, _ in extra))
        return replace(launch, spec=spec)

    return launch_of


def compare(out, reference) -> str:
    """How ``out`` (an array) differs from the first variant's."""
    import cupy

    if reference is None:
        return "reference"
    if bool((out == reference).all()):
        return "bitwise equal"
    return f"max |diff| {float(cupy.abs(out.astype(cupy.float32) - reference.astype(cupy.float32)).max()):.3g}"


def phase_cycles(result, args, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The forward's FLASHRNN_PHASE_CLOCKS sums from ``result.saved``: per step, the mean over blocks and warps and
    the largest warp's, for each of PHASES."""
    import cupy

    cupy.cuda.Device().synchronize()
    launch = fused.choose(args.cell, dtype, args.batch, args.heads, args.head_dim)
    blocks, warps = int(np.prod(launch.grid)), launch.threads // 32
    raw = result.saved.reshape(-1).view(cupy.uint64)[: blocks * 32 * 8].get().reshape(blocks, 32, 8)
    per_step = raw[:, :warps, :].astype(np.float64) / args.time
    return per_step.mean(axis=(0, 1)), per_step.max(axis=(0, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_problem_arguments(p, time=1024)
    p.add_argument("--direction", default="forward", choices=("forward", "backward"),
                   help="the kernel the variants change, and what is timed (backward: no phase clocks)")
    p.add_argument("--variant", action="append", default=[], help="name=DEFINE[,DEFINE=value] (repeatable)")
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args(argv)
    B, T, N, D = args.batch, args.time, args.heads, args.head_dim
    dtype, Wx, R, b, dh = problem_inputs(args)
    forward = lambda: fc.forward(Wx, R, b, function=args.cell, backend="cuda_fused")  # noqa: E731
    kept = forward() if args.direction == "backward" else None
    run = forward if kept is None else (lambda: fc.backward(kept, dstates=dh))
    output = (lambda r: r.states) if kept is None else (lambda g: g.dWx)
    print(f"{args.cell} {N}x{D} B={B} T={T} {args.dtype} {args.direction}: "
          f"{fused.choose(args.cell, dtype, B, N, D, direction=args.direction).spec.label}")
    reference = None
    for name, extra in (parse_variant(v) for v in (args.variant or ["base="])):
        fused.launch_of = with_defines(extra, args.direction)
        try:
            ms = median_ms(run, runs=args.runs)
            out = output(run())
            same = compare(out, reference)
            reference = out if reference is None else reference
            print(f"{name:14s} {ms:8.3f} ms  {ms * 1e3 / T:6.3f} us/step  [{same}]", flush=True)
            if args.direction == "forward":
                fused.launch_of = with_defines(extra + (("FLASHRNN_PHASE_CLOCKS", "1"),), "forward")
                mean, worst = phase_cycles(forward(), args, dtype)
                phases = "  ".join(f"{PHASES[k]} {mean[k]:.0f}/{worst[k]:.0f}" for k in range(8) if PHASES[k] != "-")
                print(f"{'':14s} cycles a step (mean/max warp): {phases}  sum {mean.sum():.0f}", flush=True)
        finally:
            fused.launch_of = ORIGINAL_LAUNCH_OF
    return 0


if __name__ == "__main__":
    sys.exit(main())
