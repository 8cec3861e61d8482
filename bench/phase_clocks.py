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
    python bench/phase_clocks.py --cell lstm --heads 1 --head-dim 768 --pin dma_warps=0,r_ktiles_in_smem=28
    python bench/phase_clocks.py --cell lstm --heads 1 --head-dim 768 --pin head_clusters=2,wide_warps=0,r_ktiles_in_smem=8
    python bench/phase_clocks.py --cell lstm --heads 1 --head-dim 768 --pin wide_warps=0,k_split=1,r_ktiles_in_smem=25

A variant is ``name=DEFINE[,DEFINE=value...]`` (empty: the kernel as built). Each is timed (CUDA events, median of
--runs after a warm-up, ../shared/BENCH.md's protocol) and its output (states and saved values, the saved ones
where both variants save; dWx for the backward) compared bit for bit with the first variant's: the knobs named
ABLATE give wrong results on purpose, the others must match.
A variant then runs once more with FLASHRNN_PHASE_CLOCKS (common/phase_clocks.cuh; not with ``--no-clocks``): the
step's phases in cycles (clock64, lane 0 of every warp), the mean over the blocks and compute warps and the
largest warp's, per step, and the DMA warps' own (Tile::DMA: copies, barrier, sends) where the kernel has them.
Backward: the scatter-cluster kernel's phases (``BACKWARD_PHASES``; the other backward kernels have no clocks).
``--pin`` runs another forward configuration than the chooser's: its fields (``PINNABLE``) set, the rest kept,
priced by ``constrint.assess``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashrnn_core as fc  # noqa: E402
from bench.profile_kernels import add_problem_arguments, problem_inputs  # noqa: E402
from flashrnn_core.backends import fused  # noqa: E402
from flashrnn_core.runtime.timing import median_ms  # noqa: E402

#: fused_fw.cu's PHASE(k, ...) marks, in the order a step runs them (7: from the end of one step to the next).
#: In a cluster the step's copies run before the wait (Tile::EARLY_COPIES), so "wait h" holds them and
#: "x + copies" only the reads of Wx.
PHASES = ("wait h", "h + mma", "x + copies", "cells", "barrier", "send h", "copies", "loop")
#: ... those the compute warps and the DMA warps (Tile::DMA) mark.
COMPUTE_PHASES, DMA_PHASES = (0, 1, 2, 3, 4, 5, 7), (6, 4, 5)
#: fused_bw.cu backward_scatter's phases (the cell warps alone run 3 and 4).
BACKWARD_PHASES = ("copies", "mma + sends", "barrier 1", "wait partials", "sum + cells", "barrier 2", "-", "loop")
BACKWARD_SHOWN = (0, 1, 2, 3, 4, 5, 7)
#: FusedParams fields that --pin may set (constrint.assess's arguments of the same names).
PINNABLE = ("blocks_per_head", "k_split", "batch_ntiles", "prefetch_steps", "r_ktiles_in_smem", "whole_k", "dma_warps",
            "wide_warps", "head_clusters")


def parse_defines(text: str) -> tuple[tuple[str, str], ...]:
    """``A,B=2`` -> (("A", "1"), ("B", "2")): -D defines, a bare name defined as 1."""
    items = (item.partition("=") for item in filter(None, text.split(",")))
    return tuple((key, value or "1") for key, _, value in items)


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name=A,B=2`` -> ("name", (("A", "1"), ("B", "2")))."""
    name, _, rest = text.partition("=")
    return name, parse_defines(rest)


#: The backend's own, before any patching (each variant wraps this one, never the previous variant's).
ORIGINAL_LAUNCH_OF = fused.launch_of


def with_defines(extra: tuple[tuple[str, str], ...], direction: str):
    """fused.launch_of, adding ``extra`` to the defines of the ``direction`` kernel (a distinct cache entry;
    "forward": fused_fw.cu, both the forward's and the inference kernel)."""

    def launch_of(choice):
        launch = ORIGINAL_LAUNCH_OF(choice)
        if (choice.direction == "backward") != (direction == "backward") or not extra:
            return launch
        spec = replace(launch.spec, defines=launch.spec.defines + extra,
                       label=launch.spec.label + " " + " ".join(k for k, _ in extra))
        return replace(launch, spec=spec)

    return launch_of


def compare(outs: list, reference: list | None) -> str:
    """How ``outs`` (arrays, ``variant_outputs``) differ from the first variant's, those both have."""
    import cupy

    if reference is None:
        return "reference"
    diffs = [float(cupy.abs(o.astype(cupy.float32) - r.astype(cupy.float32)).max())
             for o, r in zip(outs, reference) if not bool((o == r).all())]
    return "bitwise equal" if not diffs else f"max |diff| {max(diffs):.3g}"


def variant_outputs(result, extra: tuple, backward: bool) -> list:
    """What a variant's run is compared by: dWx (backward); the states and, unless the variant's kernel saves
    nothing (FLASHRNN_SAVE=0 leaves the saved buffer of the saving call unwritten), the saved values."""
    if backward:
        return [result.dWx]
    saves = result.saved is not None and ("FLASHRNN_SAVE", "0") not in extra
    return [result.states] + ([result.saved] if saves else [])


def phase_cycles(out, choice, steps: int, at_end: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The FLASHRNN_PHASE_CLOCKS sums from ``out`` (of the configuration ``choice``; the forward's saved values,
    from their start, or the backward's dWx, ``at_end``): per step, the mean over blocks and compute warps and the
    largest compute warp's, for each phase, and the DMA warps' mean (None without them)."""
    import cupy

    cupy.cuda.Device().synchronize()
    blocks, compute = int(np.prod(choice.grid)), choice.warps_per_block - choice.dma_warps
    words = out.reshape(-1).view(cupy.uint64)
    raw = (words[words.size - blocks * 32 * 8:] if at_end else words[: blocks * 32 * 8]).get().reshape(blocks, 32, 8)
    per_step = raw.astype(np.float64) / steps
    dma = per_step[:, compute:choice.warps_per_block].mean(axis=(0, 1)) if choice.dma_warps else None
    return per_step[:, :compute].mean(axis=(0, 1)), per_step[:, :compute].max(axis=(0, 1)), dma


def print_phases(names, shown, mean, worst) -> None:
    """One line of a variant's phases (``names[k]`` for k in ``shown``): the mean and the largest warp's cycles."""
    phases = "  ".join(f"{names[k]} {mean[k]:.0f}/{worst[k]:.0f}" for k in shown)
    print(f"{'':14s} cycles a step (mean/max warp): {phases}  sum {mean.sum():.0f}", flush=True)


def pinned_choice(args, dtype):
    """The chooser's forward configuration with ``--pin``'s fields set (``constrint.assess``), or an error."""
    from flashrnn_core.constrint import Infeasible, assess
    from flashrnn_core.constrint.hardware import current
    from flashrnn_core.constrint.problems import DEFAULT_MODEL

    base = fused.choose(args.cell, dtype, args.batch, args.heads, args.head_dim).choice
    given = {name: getattr(base, name) for name in PINNABLE}
    for item in filter(None, args.pin.split(",")):
        name, _, value = item.partition("=")
        if name not in PINNABLE:
            raise SystemExit(f"--pin: {name!r} is not one of {', '.join(PINNABLE)}")
        given[name] = int(value)
    # (stages of their own: WIDE_WARPS; HEAD_SPLIT, assess's head_clusters)
    model = replace(DEFAULT_MODEL, wide_warps=bool(given.pop("wide_warps")) and given["head_clusters"] == 1)
    choice = assess(current(), args.cell, base.dtype, args.batch, args.heads, args.head_dim, model=model, **given)
    if isinstance(choice, Infeasible):
        raise SystemExit(f"--pin {args.pin}: infeasible: {choice.reason}")
    return choice


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_problem_arguments(p, time=1024)
    p.add_argument("--direction", default="forward", choices=("forward", "backward"),
                   help="the kernel the variants change, and what is timed (backward: phase clocks of the "
                        "scatter-cluster kernel only)")
    p.add_argument("--variant", action="append", default=[], help="name=DEFINE[,DEFINE=value] (repeatable)")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--no-clocks", action="store_true", help="time the variants only (no phase-clock build and run)")
    p.add_argument("--pin", default="", help=f"forward: run this configuration instead of the chooser's, "
                                             f"FIELD=VALUE[,...] of {', '.join(PINNABLE)}")
    args = p.parse_args(argv)
    B, T, N, D = args.batch, args.time, args.heads, args.head_dim
    dtype, Wx, R, b, dh = problem_inputs(args)
    if args.pin and args.direction != "forward":
        raise SystemExit("--pin: forward configurations only")
    choice = pinned_choice(args, dtype) if args.pin else fused.choose(args.cell, dtype, B, N, D,
                                                                      direction=args.direction).choice
    if args.pin:
        from flashrnn_core.tune import pinned
        from flashrnn_core.validate import validate

        problem = validate(Wx, R, b, function=args.cell)

        def forward():  # (pinned at each call: its kernel follows the variant's defines, fused.launch_of)
            states, saved = pinned(choice).forward(problem, Wx, R, b, None)
            return SimpleNamespace(states=states, saved=saved)
    else:
        forward = lambda: fc.forward(Wx, R, b, function=args.cell, backend="cuda_fused")  # noqa: E731
    kept = forward() if args.direction == "backward" else None
    run = forward if kept is None else (lambda: fc.backward(kept, dstates=dh))
    print(f"{args.cell} {N}x{D} B={B} T={T} {args.dtype} {args.direction}: {fused.launch_of(choice).spec.label}")
    reference = None
    for name, extra in (parse_variant(v) for v in (args.variant or ["base="])):
        fused.launch_of = with_defines(extra, args.direction)
        try:
            ms = median_ms(run, runs=args.runs)
            out = variant_outputs(run(), extra, kept is not None)
            same = compare(out, reference)
            reference = out if reference is None else reference
            print(f"{name:14s} {ms:8.3f} ms  {ms * 1e3 / T:6.3f} us/step  [{same}]", flush=True)
            if args.direction == "backward" and not args.no_clocks and "scatter" in fused.launch_of(choice).spec.label:
                fused.launch_of = with_defines(extra + (("FLASHRNN_PHASE_CLOCKS", "1"),), "backward")
                mean, worst, _ = phase_cycles(run().dWx, choice, T + 1, at_end=True)
                print_phases(BACKWARD_PHASES, BACKWARD_SHOWN, mean, worst)
            if args.direction == "forward" and not args.no_clocks:
                fused.launch_of = with_defines(extra + (("FLASHRNN_PHASE_CLOCKS", "1"),), "forward")
                mean, worst, dma = phase_cycles(forward().saved, choice, T)
                print_phases(PHASES, COMPUTE_PHASES, mean, worst)
                if dma is not None:
                    phases = "  ".join(f"{PHASES[k]} {dma[k]:.0f}" for k in DMA_PHASES)
                    print(f"{'':14s} DMA warps, cycles a step (mean): {phases}  sum {dma.sum():.0f}", flush=True)
        finally:
            fused.launch_of = ORIGINAL_LAUNCH_OF
    return 0


if __name__ == "__main__":
    sys.exit(main())
