"""A head on two clusters (fused_fw.cu FLASHRNN_HEAD_CLUSTERS: Tile::G, HeadHandoff; constrint problems.HEAD_SPLIT,
a stage that stays off until measured): the 1x768 forward assessed by the solver at the given k-tiles of R in
shared memory, run through the backend pinned to it, checked against vanilla from NaN-poisoned outputs and timed
against the solver's choice in the same process.

    python bench/head_split.py [--cell lstm] [--rs 6 7 8] [--prefetch 4] [--runs 30] [--T 1024] [--inference]
    python bench/head_split.py --rs 8 --define FLASHRNN_HANDOFF_BATCH=8      # a measurement knob
    python bench/head_split.py --compile-only                # ptxas's registers and spills for each --rs (sm_90)
    compute-sanitizer --tool memcheck python bench/head_split.py --T 5 --runs 0    # correctness alone, short

Why (bench/results/phases/2026-12-01-h200-matvec-bound.txt, 2026-12-05-h200-wide-warps.txt): at 1x768 one 16-block
cluster leaves each block 192 rows of R (295 KB), and a step reads ~147 KB of them plus ~37 KB of h from shared
memory: the product takes ~2000 of the ~3270 cycles a step (lstm, 1.83 ms at T=1024). On two clusters a block has
96 rows (147 KB): 6 warps of 8 dims, 2 m-tiles and 24 k-tiles each, R in registers but for a few k-tiles, the
product ~700-800 cycles (96 mma on the busiest scheduler at ~6.4 cycles). The other cluster's half of h then comes
through global memory each step (tagged words, HeadHandoff): bench/cluster_exchange.py times that hand-off alone.
Expected, written before any run: if the hand-off costs ~1000-1500 cycles and overlaps the product of the own
cluster's half of h, ~1900-2300 cycles a step, lstm 1x768 forward 1.83 -> ~1.1-1.4 ms; if it costs 2500+, no gain.
Needs 4 co-resident 16-block clusters at B=16 (two batch tiles; the partners poll each other, a kernel that
cannot place them all would wait, so HeadHandoff traps after ~2^24 polls, ~5 s).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashrnn_core.cells import CELLS  # noqa: E402


def configs(hardware, cell: str, dtype: str, B: int, rs_list: list[int], prefetch: int, inference: bool) -> list:
    """The solver's verdict (``constrint.assess``) on the head split at each of ``rs_list`` k-tiles of R in shared
    memory: FusedParams, or Infeasible (estimated to spill, ...)."""
    from flashrnn_core.constrint import problems

    direction = "inference" if inference else "forward"
    return [problems.assess(hardware, cell, dtype, B, 1, 768, blocks_per_head=16, k_split=2, prefetch_steps=prefetch,
                            r_ktiles_in_smem=rs, dma_warps=2, head_clusters=2, direction=direction)
            for rs in rs_list]


def launch_spec(config, extra: tuple[tuple[str, str], ...] = ()):
    """The backend's kernel spec of ``config`` with the measurement knobs ``extra`` added (and in its label)."""
    from flashrnn_core.backends.fused import launch_of

    spec = launch_of(config).spec
    return replace(spec, defines=spec.defines + extra, label=spec.label + "".join(f" {k}={v}" for k, v in extra))


def pinned_with(config, extra: tuple[tuple[str, str], ...]):
    """``tune.pinned(config)``, its forward's kernel carrying ``extra``."""
    from flashrnn_core.tune import pinned

    backend = pinned(config)
    if not extra:
        return backend
    base_params = backend.params

    def params(problem, save=True):
        launch = base_params(problem, save)
        return replace(launch, spec=launch_spec(launch.choice, extra))

    backend.params = params
    return backend


def relative_error(a, ref) -> float:
    a, ref = (np.asarray(x, np.float64) for x in (a, ref))
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=("lstm", "slstm"))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--rs", type=int, nargs="+", default=[6, 7, 8])
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--inference", action="store_true", help="the forward that saves nothing (FLASHRNN_SAVE=0)")
    parser.add_argument("--define", action="append", default=[], metavar="NAME=VALUE",
                        help="a measurement knob, e.g. FLASHRNN_HANDOFF_BATCH=8 or FLASHRNN_EXCHANGE_GROUPS=5")
    parser.add_argument("--compile-only", action="store_true")
    args = parser.parse_args(argv)
    extra = tuple(tuple(d.split("=", 1)) for d in args.define)
    if args.compile_only:
        from flashrnn_core.constrint import H100
        from flashrnn_core.runtime.compile import compile_spec

        for rs, config in zip(args.rs, configs(H100, args.cell, args.dtype, args.B, args.rs, args.prefetch,
                                               args.inference)):
            if not config:
                print(f"{args.cell} rs {rs}: infeasible: {config.reason}")
                continue
            spec = launch_spec(config, extra)
            r = compile_spec(spec, "sm_90").resources
            print(f"{spec.label}: {config.threads_per_block} threads, {config.smem_bytes} B shared, "
                  f"{r.registers} registers (estimated {config.registers_estimate}), {r.spill_stores} B spilled",
                  flush=True)
        return 0
    return measure(args, extra)


def measure(args, extra: tuple[tuple[str, str], ...]) -> int:
    import cupy as cp

    from bench.timing import measure as time_call
    from flashrnn_core import forward
    from flashrnn_core.backends import fused as fused_backend
    from flashrnn_core.constrint.hardware import current
    from flashrnn_core.validate import validate

    # Outputs NaN-poisoned (as the GPU tests' fixture does): an element a kernel leaves unwritten stays NaN.
    fused_backend._empty = lambda shape, dtype: cp.full(shape, np.nan, dtype)
    cell, D, B, T, save = CELLS[args.cell], 768, args.B, args.T, not args.inference
    rng = np.random.default_rng(0)
    f32 = lambda *shape, scale=1.0: (rng.standard_normal(shape, dtype=np.float32) * scale)  # noqa: E731
    dtype = cp.dtype(args.dtype)
    Wx, R, b = (cp.asarray(f32(B, T, cell.gates_w, 1, D)).astype(dtype),
                cp.asarray(f32(cell.gates_r, 1, D, D, scale=D**-0.5)).astype(dtype),
                cp.asarray(f32(cell.gates_b, 1, D)).astype(dtype))
    s0 = cp.asarray(f32(cell.states, B, 1, 1, D, scale=0.5)).astype(dtype)
    if args.cell == "slstm":
        s0[2] = 1 + cp.abs(s0[2])
    reference = forward(Wx.astype(cp.float32), R.astype(cp.float32), b.astype(cp.float32), s0.astype(cp.float32),
                        function=args.cell, backend="vanilla")
    fused = forward(Wx, R, b, s0, function=args.cell, backend="cuda_fused", save_for_backward=save)
    ref_states = cp.asnumpy(reference.states)
    print(f"{args.cell} 1x768 {args.dtype} B={B} T={T} {'inference' if args.inference else 'forward'}: the solver's "
          f"cuda_fused, states' error against vanilla {relative_error(cp.asnumpy(fused.states), ref_states):.2e}",
          flush=True)
    failures = 0
    if args.runs:
        t = time_call(lambda: forward(Wx, R, b, s0, function=args.cell, backend="cuda_fused", save_for_backward=save),
                      "cupy", args.runs)
        print(f"  solver's kernel {t.median_ms:.3f} ms", flush=True)
    problem = validate(Wx, R, b, s0, function=args.cell)
    for rs, config in zip(args.rs, configs(current(), args.cell, args.dtype, B, args.rs, args.prefetch,
                                           args.inference)):
        if not config:
            print(f"  rs {rs}: infeasible: {config.reason}", flush=True)
            continue
        label = launch_spec(config, extra).label
        try:
            backend = pinned_with(config, extra)
            cp.cuda.runtime.deviceSynchronize()
            states, saved = backend.forward(problem, Wx, R, b, s0, save=save)
            cp.cuda.runtime.deviceSynchronize()
            nan = int(cp.isnan(states).sum()) + (int(cp.isnan(saved).sum()) if save else 0)
            err = relative_error(cp.asnumpy(states), ref_states)
            line = f"  {label}: NaN {nan}, error {err:.2e}, estimated {config.step_us:.3f} us a step"
            if save:
                line += f", saved against the solver's {relative_error(cp.asnumpy(saved), cp.asnumpy(fused.saved)):.2e}"
            if args.runs:
                t = time_call(lambda: backend.forward(problem, Wx, R, b, s0, save=save), "cupy", args.runs)
                line += f", {t.median_ms:.3f} ms"
            failures += int(nan > 0 or not err < 5e-2)
            print(line, flush=True)
        except Exception as exc:  # one that does not build or launch: say so, run the others
            failures += 1
            print(f"  {label}: failed: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(main())
