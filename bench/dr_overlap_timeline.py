"""Where the time of a fused backward goes, with dR summed after the kernel and beside it
(recurrent_grad.OverlappedDr): CUDA events on the current stream around the kernel launch and at the end of
the backward, and on the side stream after each chunk's wait and after each chunk's sum (``sum_dr_steps``),
all as ms from the start event (medians over --runs; the spin of runtime.timing in front of each run).

    python bench/dr_overlap_timeline.py                       # lstm 1x768, bf16, B=16, T=1024
    python bench/dr_overlap_timeline.py lstm:3:256 --runs 20  # cell:heads:head_dim
    python bench/dr_overlap_timeline.py --overlaps 0,rule,16  # FLASHRNN_DR_OVERLAP settings (default 0,rule)

Then the A/B: the settings in turn, ``--rounds`` times (each a median of --runs) in one process, so that drift
over the process shows as the spread between rounds of one setting.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a source checkout


def _inputs(function: str, N: int, D: int, B: int, T: int):
    import cupy

    import flashrnn_core as fc
    from flashrnn_core import _arrays
    from flashrnn_core.cells import CELLS

    cell, dtype = CELLS[function], _arrays.dtype_named("bfloat16")
    rng = np.random.default_rng(0)

    def normal(*shape, scale=1.0):
        return cupy.asarray((rng.standard_normal(shape) * scale).astype(np.float32)).astype(dtype)

    Wx, R = normal(B, T, cell.gates_w, N, D), normal(cell.gates_r, N, D, D, scale=D ** -0.5)
    result = fc.forward(Wx, R, normal(cell.gates_b, N, D), function=function, backend="cuda_fused")
    return result, normal(*result.states.shape)


def timeline(result, dstates, runs: int) -> dict[str, float]:
    """Median ms from the start event of each labelled event of one backward (the overlap as the environment
    says): the backward kernel's launch and end on the current stream, each chunk's wait and sum on the side
    stream (the events are recorded on the stream that is current where each call runs)."""
    import cupy

    import flashrnn_core as fc
    from flashrnn_core import runtime
    from flashrnn_core.backends import fused
    from flashrnn_core.backends import recurrent_grad as rg
    from flashrnn_core.runtime.timing import spin

    real = {"launch": runtime.launch, "wait": runtime.wait_until_at_least, "sum_dr": rg.sum_dr,
            "sum_dr_steps": rg.sum_dr_steps}
    marks: list[tuple[str, object]] = []

    def mark(label: str, stream=None) -> None:
        marks.append((label, (stream or cupy.cuda.get_current_stream()).record()))

    def count(word: str) -> int:
        return sum(label.startswith(word) for label, _ in marks)

    def launch(kernel, *args, **kwargs):
        first = count("kernel") == 0
        if first:
            mark("kernel launched")
        real["launch"](kernel, *args, **kwargs)
        if first:
            mark("kernel end")

    def wait(stream, address, value):
        real["wait"](stream, address, value)
        mark(f"chunk {count('chunk')} wait over", stream)

    def summed(name: str):
        def sum_and_mark(*args, **kwargs):
            out = real[name](*args, **kwargs)
            mark(f"sum {count('sum')} done")
            return out
        return sum_and_mark

    table: dict[str, list[float]] = {}
    for _ in range(runs + 2):
        marks.clear()
        spin(3.0)
        start = cupy.cuda.get_current_stream().record()
        runtime.launch, runtime.wait_until_at_least = launch, wait
        fused.sum_dr, rg.sum_dr_steps = summed("sum_dr"), summed("sum_dr_steps")  # (the kernel's path: once)
        try:
            fc.backward(result, dstates=dstates)
        finally:
            runtime.launch, runtime.wait_until_at_least = real["launch"], real["wait"]
            fused.sum_dr, rg.sum_dr_steps = real["sum_dr"], real["sum_dr_steps"]
        end = cupy.cuda.get_current_stream().record()
        end.synchronize()
        for label, event in marks + [("backward end", end)]:
            table.setdefault(label, []).append(cupy.cuda.get_elapsed_time(start, event))
    return {label: float(np.median(ms[2:])) for label, ms in table.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shapes", nargs="*", default=["lstm:1:768"])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--overlaps", default="0,rule", help="FLASHRNN_DR_OVERLAP values, comma-separated ('rule': unset)")
    args = p.parse_args(argv)
    import flashrnn_core as fc
    from flashrnn_core.backends import recurrent_grad as rg
    from flashrnn_core.runtime.timing import median_ms

    settings = args.overlaps.split(",")
    for shape in args.shapes:
        function, N, D = shape.split(":")
        result, dstates = _inputs(function, int(N), int(D), 16, 1024)
        for overlap in settings:
            os.environ[rg.OVERLAP_ENV] = "" if overlap == "rule" else overlap
            marks = timeline(result, dstates, args.runs)
            print(f"{shape} overlap {overlap}: timeline, ms from the start event (median of {args.runs})")
            for label, ms in sorted(marks.items(), key=lambda kv: kv[1]):
                print(f"    {ms:8.4f}  {label}")
        line = f"{shape} backward, ms, rounds of overlap {' / '.join(settings)}:"
        for _ in range(args.rounds):
            times = []
            for overlap in settings:
                os.environ[rg.OVERLAP_ENV] = "" if overlap == "rule" else overlap
                times.append(f"{median_ms(lambda: fc.backward(result, dstates=dstates), args.runs):.4f}")
            line += " " + " / ".join(times) + ","
        os.environ[rg.OVERLAP_ENV] = ""
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
