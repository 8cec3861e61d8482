"""Exhaustive measured sweep of the fused forward's configurations (issue 7, "agreement with reality"):

    python bench/sweep_fused.py --out $OUT/sweep.json [--direction forward|backward|both] [--budget-s 150]
    python bench/sweep_fused.py --out $OUT/sweep.json --direction forward,inference --shapes slstm:3x256
    python bench/sweep_fused.py --dry-run [--hardware H100]     # what it would measure, no GPU needed

For each reference shape (``flashrnn_core.tune.REFERENCE_SHAPES``: bfloat16, T=1024) every configuration the
solver's constraint problem admits on this GPU (``constrint.problems.all_feasible``: the same problem the
solver optimises, enumerated) is compiled (all kernels at once, in ``--jobs`` processes, as
``flashrnn_core.compile`` does) and timed: the median of ``--runs`` CUDA-event timings after a warm-up
(``flashrnn_core.tune.gpu_timer``), the solver's own choice first. Each shape runs in a child process, so a
configuration that kills its CUDA context (a fault) is recorded as failed and the sweep goes on with the next
one in a fresh process. ``--budget-s`` bounds the whole run (compiles included): each shape gets an equal share
of what is left, and configurations not reached are listed as skipped.

The JSON (``--out``) holds, per shape: the solver's choice and its time, the best measured configuration and its
time, their ratio (solver / best: issue 7 asks for <= 1.10) and every row (configuration, model estimate,
measured median or error). A short table is printed last. ``inference`` sweeps the inference kernel (states
only, nothing saved): the forward's configurations, as the solver's inference problem lists and prices them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a source checkout

from flashrnn_core.constrint import FusedParams, Hardware, Infeasible, preset, solve_fused  # noqa: E402
from flashrnn_core.constrint.problems import DIRECTIONS, all_feasible  # noqa: E402
from flashrnn_core.tune import REFERENCE_SHAPES, Shape, config_label  # noqa: E402

#: Seconds a child may take to start (CUDA context, imports) and to time one configuration, before it is
#: considered hung.
CONFIG_TIMEOUT_S = 60.0


@dataclass
class Plan:
    """One shape's sweep: every feasible configuration, the solver's choice first (None when infeasible)."""

    shape: Shape
    configs: list[FusedParams]
    infeasible: str | None = None


#: Shapes the backward model's constants were not set on (backward.BW_LATENCY_CALIBRATION): other head sizes,
#: batches, storage dtypes; ``--holdout`` sweeps these instead of the reference shapes.
HOLDOUT_SHAPES = (
    Shape("lstm", "float16", 32, 16, 32), Shape("gru", "bfloat16", 16, 8, 96), Shape("elman", "float32", 16, 12, 64),
    Shape("slstm", "bfloat16", 128, 12, 48), Shape("elman", "bfloat16", 16, 6, 128),
)


def directions_of(text: str) -> tuple[str, ...]:
    """``--direction``'s value as kernel directions (Shape.direction)."""
    names = ("forward", "backward") if text == "both" else tuple(x.strip() for x in text.split(",") if x.strip())
    if not names or any(n not in DIRECTIONS for n in names):
        raise argparse.ArgumentTypeError(f"direction: expected both or some of {', '.join(DIRECTIONS)}, got {text!r}")
    return names


def direction_argument(text: str) -> str:
    """``--direction``, checked by ``directions_of`` and kept as given."""
    directions_of(text)
    return text


def reference_shapes(direction: str, holdout: bool = False) -> list[Shape]:
    """The reference shapes (or the held-out ones), as the problems of ``direction`` (``directions_of``)."""
    return [s._replace(direction=d) for d in directions_of(direction)
            for s in (HOLDOUT_SHAPES if holdout else REFERENCE_SHAPES)]


def parse_shapes(text: str, direction: str) -> list[Shape]:
    """``--shapes``: comma-separated ``function:NxD`` or ``function:NxD:B`` (bfloat16, T = 1024; B = 16 unless
    given), e.g. ``lstm:1x768,gru:1x768:64``; each as a forward and/or backward problem."""
    shapes = []
    for item in text.split(","):
        function, heads, *batch = item.strip().split(":")
        N, D = (int(x) for x in heads.split("x"))
        shapes.append(Shape(function, "bfloat16", int(batch[0]) if batch else 16, N, D))
    return [s._replace(direction=d) for d in directions_of(direction) for s in shapes]


def plan(hardware: Hardware, shapes: list[Shape]) -> list[Plan]:
    """What the sweep measures: per shape the solver's choice, then the rest of ``all_feasible`` (best estimate
    first)."""
    plans = []
    for s in shapes:
        choice = solve_fused(hardware, s.function, s.dtype, s.B, s.N, s.D, direction=s.direction)
        if isinstance(choice, Infeasible):
            plans.append(Plan(s, [], choice.reason))
            continue
        rest = [p for p in all_feasible(hardware, s.function, s.dtype, s.B, s.N, s.D, direction=s.direction)
                if p.template_args() != choice.template_args()]
        plans.append(Plan(s, [choice] + rest))
    return plans


def kernels(plans: list[Plan]) -> list[Any]:
    """The distinct kernel variants (``KernelSpec``) the plans launch."""
    from flashrnn_core.backends.fused import launch_of

    return list(dict.fromkeys(launch_of(p).spec for pl in plans for p in pl.configs))


def describe(plans: list[Plan], hardware: Hardware) -> list[str]:
    """The dry run's lines: per shape the configurations, the solver's marked."""
    lines = [f"sweep on {hardware.name} ({hardware.arch}): {sum(len(p.configs) for p in plans)} configurations, "
             f"{len(kernels(plans))} distinct kernels"]
    for pl in plans:
        if pl.infeasible:
            lines.append(f"{pl.shape.label()}: infeasible: {pl.infeasible}")
            continue
        lines.append(f"{pl.shape.label()}: {len(pl.configs)} configurations")
        for i, p in enumerate(pl.configs):
            model_ms = p.step_us * pl.shape.T / 1e3
            lines.append(f"  {config_label(p):26s} model {model_ms:8.3f} ms" + ("  <- solver" if i == 0 else ""))
    return lines


# ------------------------------------------------------------------------------------------------ measuring


def _worker(shape: Shape, configs: list[dict], start: int, runs: int, queue: Any) -> None:
    """Child process: time configs[start:], sending ("start", i) before and ("row", i, ms, error) after each;
    stops after the first error (the CUDA context may be unusable), ("done",) when all ran, ("setup", error)
    when the shape's inputs cannot be made."""
    from flashrnn_core.tune import gpu_timer

    try:
        timer = gpu_timer(shape, runs=runs)
    except Exception as err:  # no inputs, no device: nothing of this shape can run
        queue.put(("setup", f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))
        return
    for i in range(start, len(configs)):
        queue.put(("start", i))
        try:
            queue.put(("row", i, float(timer(FusedParams.from_dict(configs[i]))), None))
        except Exception as err:
            queue.put(("row", i, None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))
            return
    queue.put(("done",))


def measure_plan(pl: Plan, runs: int, deadline: float) -> list[dict]:
    """Every configuration's row: {"ms": median} or {"error": ...} or {"skipped": why}, in plan order."""
    ctx = multiprocessing.get_context("spawn")
    configs = [p.to_dict() for p in pl.configs]
    results: dict[int, dict] = {}
    start = 0
    while start < len(configs) and time.monotonic() < deadline:
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(pl.shape, configs, start, runs, queue), daemon=True)
        proc.start()
        current, finished, last = None, False, time.monotonic()
        while not finished and time.monotonic() < deadline and time.monotonic() - last < CONFIG_TIMEOUT_S:
            try:
                msg = queue.get(timeout=0.5)
            except Empty:
                if proc.is_alive():
                    continue
                break  # ended (after an error, or killed by a fault) with nothing more to say
            last = time.monotonic()
            if msg[0] == "start":
                current = msg[1]
            elif msg[0] == "row":
                _, i, ms, error = msg
                results[i] = {"ms": ms} if error is None else {"error": error}
                current, start = None, i + 1
            elif msg[0] == "setup":
                return [{"error": f"setup failed: {msg[1]}"} for _ in configs]
            else:
                finished = True
        if finished:
            proc.join(5)
            break
        alive = proc.is_alive()
        if alive:
            proc.terminate()
        proc.join(5)
        if current is not None and time.monotonic() < deadline:  # it died (or hung) inside this configuration
            why = f"hung for {CONFIG_TIMEOUT_S:.0f} s" if alive else f"crashed (exit code {proc.exitcode})"
            results[current] = {"error": f"the measuring process {why} in this configuration"}
            start = current + 1
    return [results.get(i, {"skipped": "not reached within --budget-s"}) for i in range(len(configs))]


def summarise(pl: Plan, measured: list[dict]) -> dict:
    """A shape's JSON record: solver choice and time, best configuration and time, ratio, all rows."""
    rows = []
    for i, (p, m) in enumerate(zip(pl.configs, measured)):
        rows.append({"config": config_label(p), "solver": i == 0, "model_ms": p.step_us * pl.shape.T / 1e3,
                     "params": p.to_dict(), **m})
    timed = [r for r in rows if r.get("ms") is not None]
    best = min(timed, key=lambda r: r["ms"]) if timed else None
    solver = rows[0] if rows else None
    solver_ms = solver.get("ms") if solver else None
    return {"shape": pl.shape._asdict(), "label": pl.shape.label(), "infeasible": pl.infeasible,
            "solver": solver["config"] if solver else None, "solver_ms": solver_ms,
            "best": best["config"] if best else None, "best_ms": best["ms"] if best else None,
            "ratio": solver_ms / best["ms"] if solver_ms and best else None,
            "measured": len(timed), "configs": len(rows), "rows": rows}


def short_table(records: list[dict]) -> list[str]:
    lines = [f"{'shape':40s} {'solver':24s} {'ms':>8s} {'best':24s} {'ms':>8s} {'ratio':>6s} {'n':>7s}"]
    for r in records:
        if r["infeasible"]:
            lines.append(f"{r['label']:40s} infeasible")
            continue
        fmt = lambda x: f"{x:8.3f}" if x is not None else f"{'-':>8s}"  # noqa: E731
        ratio = f"{r['ratio']:6.3f}" if r["ratio"] is not None else f"{'-':>6s}"
        lines.append(f"{r['label']:40s} {str(r['solver']):24s} {fmt(r['solver_ms'])} {str(r['best']):24s} "
                     f"{fmt(r['best_ms'])} {ratio} {r['measured']:3d}/{r['configs']:<3d}")
    return lines


def run(args: argparse.Namespace) -> int:
    from flashrnn_core.compile import run_jobs
    from flashrnn_core.constrint.hardware import current
    from flashrnn_core.runtime import device_arch

    begin = time.monotonic()
    deadline = begin + args.budget_s
    hw = current()
    plans = plan(hw, chosen_shapes(args))
    specs = kernels(plans)
    arch = device_arch()
    print(f"sweep on {hw.name} ({arch}): {sum(len(p.configs) for p in plans)} configurations, {len(specs)} "
          f"kernels; compiling in {args.jobs} processes", flush=True)
    failed = [o for o in run_jobs([(s, arch) for s in specs], max(1, args.jobs)) if o.error]
    compile_s = time.monotonic() - begin
    print(f"compiled in {compile_s:.1f} s ({len(failed)} failed)", flush=True)
    records = []
    for k, pl in enumerate(plans):
        share = (deadline - time.monotonic()) / (len(plans) - k)
        measured = measure_plan(pl, args.runs, time.monotonic() + max(0.0, share)) if pl.configs else []
        records.append(summarise(pl, measured))
        r = records[-1]
        print(f"{r['label']}: {r['measured']}/{r['configs']} measured, ratio {r['ratio']}", flush=True)
    doc = {"gpu": hw.name, "arch": arch, "sms": hw.sm_count, "runs": args.runs, "budget_s": args.budget_s,
           "compile_s": compile_s, "wall_s": time.monotonic() - begin,
           "compile_failures": [f"{o.spec.name()}: {o.error}" for o in failed],
           "complete": all(r["measured"] == r["configs"] for r in records), "shapes": records}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out} ({doc['wall_s']:.1f} s)")
    print("\n".join(short_table(records)))
    return 0


def chosen_shapes(args: argparse.Namespace) -> list[Shape]:
    """``--shapes``, else the reference (or held-out) shapes."""
    if args.shapes:
        return parse_shapes(args.shapes, args.direction)
    return reference_shapes(args.direction, args.holdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="the JSON to write (e.g. $OUT/sweep.json)")
    p.add_argument("--dry-run", action="store_true", help="list what would be measured; no GPU needed")
    p.add_argument("--hardware", default="H100", help="preset the dry run plans for (H100)")
    p.add_argument("--holdout", action="store_true", help="the held-out shapes (HOLDOUT_SHAPES) instead")
    p.add_argument("--shapes", default=None, help="these shapes instead: function:NxD[:B],... (bf16, T=1024)")
    p.add_argument("--direction", default="forward", type=direction_argument,
                   help="which kernels: forward (fused_fw.cu), backward (fused_bw.cu), inference (fused_fw.cu "
                        "saving nothing), both (forward and backward), or a "
                        "comma list (forward,inference)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per configuration, median taken (>= 20)")
    p.add_argument("--budget-s", type=float, default=150.0, help="wall-clock bound, compiles included (150)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (all cores)")
    args = p.parse_args(argv)
    if args.dry_run:
        hw = preset(args.hardware)
        print("\n".join(describe(plan(hw, chosen_shapes(args)), hw)))
        return 0
    if not args.out:
        p.error("--out is required (except with --dry-run)")
    args.runs = max(args.runs, 20)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
