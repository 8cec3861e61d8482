"""Refit the fused forward's latency constants (``KernelModel``, not its ``bw_*`` ones) on a measured sweep:

    python bench/refit_forward.py [SWEEP ...] [--fit] [--hardware H200] [--direction forward,inference]

SWEEP (default: bench/results/2026-11-30-h200-sweep.json; several: their shapes together) is
``bench/sweep_fused.py``'s JSON: every feasible
configuration of each reference shape, measured ms at T steps. Each forward row becomes cycles a step at the
preset's clock (``ms * 1e3 / T * clock_mhz``: what ``problems.assess(...).step_cycles`` estimates, ``step_us =
step_cycles / clock_mhz``). The report gives the model's relative error |model / measured - 1| (mean, max) over all
rows and over those with prefetch >= 2, and per shape the solver's choice (``solve_fused``) against the fastest
measured configuration.

``--fit``: Nelder-Mead from the model's current values over ``FREE`` and each cell's ``CellCost``, minimising the
mean squared log error plus a hinge on the choices: per shape, the best-estimated of the configurations measured
within ``--slack`` of the fastest (``targets``) must be estimated ``--margin`` below every other one; both over
the rows with prefetch >= 2 (the model's ``max(chain, wx_latency / prefetch)`` describes one step in flight poorly,
and the solver never wants it). It prints the rounded constants (copied into ``KernelModel`` by hand) and
their report. The constants the backward shares (``sync_threads``, ``ksplit_exchange``, ``ldmatrix_latency``,
``mma_latency``), the hardware's issue rates (``mma_issue``, ``ldmatrix_issue``) and ``dram_efficiency`` (no row
of the sweep is DRAM-bound) stay as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashrnn_core.constrint import preset, solve_fused  # noqa: E402
from flashrnn_core.constrint.problems import DEFAULT_MODEL, CellCost, KernelModel, build_fused, estimate  # noqa: E402

SWEEP = Path(__file__).resolve().parent / "results" / "2026-11-30-h200-sweep.json"
#: The forward-only constants fitted (KernelModel field names); each cell adds "<cell>.latency", "<cell>.issue".
FREE = ("skeleton_latency", "skeleton_issue", "output_store", "cluster_exchange", "cluster_per_peer",
        "cluster_bytes_per_cycle", "cluster_nonportable", "wx_latency")
CELLS = ("lstm", "gru", "slstm", "elman")
MIN_PREFETCH = 2  # rows the fit's error is over


def key(values: dict) -> tuple:
    """A configuration (the solver's values) as cluster, k split, whole-K, DMA warps, batch n-tiles, prefetch."""
    return (values["cluster"], values["ksplit"], values.get("wholek", 0), values.get("dma", 0), values["nbt"],
            values["prefetch"])


def params_key(params: dict) -> tuple:
    """``key`` of a configuration given as FusedParams fields (a sweep row's "params", or ``asdict``)."""
    return key({"cluster": params["blocks_per_head"], "ksplit": params["k_split"],
                "wholek": int(params.get("whole_k", False)), "dma": int(params.get("dma_warps", 0) > 0),
                "nbt": params["batch_ntiles"], "prefetch": params["prefetch_steps"]})


def load(paths: list[Path], hw, directions: tuple[str, ...] = ("forward",)) -> list[dict]:
    """Per shape of ``directions`` (of all the sweeps; a shape in two keeps the later file's): its problem, and every
    feasible configuration's solver values with the measured cycles a step (None where the sweep did not measure
    it). "inference": the sweeps' inference rows (``sweep_fused.py --direction inference``), as the solver's
    inference problem prices them (the states as the only outputs)."""
    found = {}
    for path in paths:
        for s in json.loads(Path(path).read_text())["shapes"]:
            found[s["label"]] = s
    shapes = []
    for s in found.values():
        sh = s["shape"]
        if sh["direction"] not in directions or s["infeasible"]:
            continue
        # (rows of wide warps are another problem's, the wide stage's, which this default one does not build)
        measured = {params_key(r["params"]): r["ms"] * 1e3 / sh["T"] * hw.clock_mhz for r in s["rows"]
                    if r.get("ms") and not r["params"].get("wide_warps")}
        fp = build_fused(hw, sh["function"], sh["dtype"], sh["B"], sh["N"], sh["D"], sh["direction"])
        configs = [(dict(v), measured.get(key(v))) for v in fp.problem.solutions()]
        shapes.append({"label": s["label"], "shape": sh, "fp": fp, "configs": configs})
    return shapes


def model_with(x: dict) -> KernelModel:
    """The default model with the constants of ``x`` (FREE names, and "<cell>.latency" / "<cell>.issue")."""
    cells = dict(DEFAULT_MODEL.cells)
    for c in CELLS:
        cells[c] = CellCost(x.get(f"{c}.latency", cells[c].latency), x.get(f"{c}.issue", cells[c].issue))
    return replace(DEFAULT_MODEL, cells=cells, **{n: x[n] for n in FREE if n in x})


def current() -> dict:
    x = {n: float(getattr(DEFAULT_MODEL, n)) for n in FREE}
    for c in CELLS:
        x[f"{c}.latency"], x[f"{c}.issue"] = float(DEFAULT_MODEL.cells[c].latency), float(DEFAULT_MODEL.cells[c].issue)
    return x


def log_errors(model: KernelModel, shapes: list[dict], min_prefetch: int = 1) -> list[float]:
    """log(model / measured) over the measured rows with prefetch >= ``min_prefetch``."""
    errors = []
    for s in shapes:
        s["fp"].model = model
        errors += [math.log(estimate(s["fp"], v)["total"] / c) for v, c in s["configs"]
                   if c and v["prefetch"] >= min_prefetch]
    return errors


def targets(shapes: list[dict], slack: float) -> None:
    """Per shape, the configurations the solver should choose (``good``): measured within ``slack`` of the fastest
    one it can choose. The model gives a configuration and its deeper-prefetch twins (same cluster, k_split, tile)
    one estimate once the chain outlasts the load, and the solver then takes the deepest, so a configuration with a
    deeper twin measured more than ``slack`` slower is not one it can choose (lstm B=256 12x64: bt8 pf4 1.27 ms,
    pf8 1.49 ms: three waves of blocks, which vary from run to run)."""
    for s in shapes:
        measured = {key(v): c for v, c in s["configs"] if c}
        ok = {k: c for k, c in measured.items()
              if all(c2 <= (1 + slack) * c for k2, c2 in measured.items() if k2[:-1] == k[:-1] and k2[-1] > k[-1])}
        best = min(ok.values())
        s["good"] = {k for k, c in ok.items() if c <= (1 + slack) * best}


def hinge(model: KernelModel, shapes: list[dict], margin: float) -> float:
    """Summed over shapes: how far (relative) the best-estimated good configuration is from being estimated
    ``margin`` below every other measured one (0 when every choice is good, with that margin)."""
    total = 0.0
    for s in shapes:
        s["fp"].model = model
        good = bad = math.inf
        for values, cycles in s["configs"]:
            if cycles:
                est = estimate(s["fp"], values)["total"] - 1e-3 * values["prefetch"]  # the solver's preference
                if key(values) in s["good"]:
                    good = min(good, est)
                else:
                    bad = min(bad, est)
        total += max(0.0, good / bad - 1 + margin)
    return total


def fit(shapes: list[dict], x0: dict, weight: float, margin: float) -> dict:
    """Nelder-Mead from ``x0``: mean squared log error plus ``weight`` x ``hinge``, both over the rows with
    prefetch >= 2 (one step in flight is estimated at ``wx_latency`` or more, far from any choice)."""
    from scipy.optimize import minimize

    names = list(x0)
    shapes = [dict(s, configs=[(v, c if v["prefetch"] >= MIN_PREFETCH else None) for v, c in s["configs"]])
              for s in shapes]

    def loss(v):
        if min(v) <= 0:
            return math.inf
        model = model_with(dict(zip(names, v)))
        errors = log_errors(model, shapes)
        return sum(e * e for e in errors) / len(errors) + weight * hinge(model, shapes, margin)

    res = minimize(loss, [x0[n] for n in names], method="Nelder-Mead",
                   options={"maxiter": 20000, "maxfev": 20000, "xatol": 0.3, "fatol": 1e-8, "adaptive": True})
    return dict(zip(names, res.x))


def report(model: KernelModel, shapes: list[dict], hw, title: str) -> None:
    print(f"{title}:")
    for min_prefetch in (1, MIN_PREFETCH):
        errors = log_errors(model, shapes, min_prefetch)
        rel = [abs(math.exp(e) - 1) for e in errors]
        print(f"  relative error over {len(errors)} rows with prefetch >= {min_prefetch}: mean "
              f"{sum(rel) / len(rel):.3f}, max {max(rel):.3f}")
    for s in shapes:
        sh = s["shape"]
        p = solve_fused(hw, sh["function"], sh["dtype"], sh["B"], sh["N"], sh["D"], sh["direction"], model=model)
        cfg = params_key(asdict(p))
        measured = {key(v): c / hw.clock_mhz * sh["T"] / 1e3 for v, c in s["configs"] if c}  # ms
        best = min(measured, key=measured.get)

        def name(k):
            return f"cl{k[0]} ks{k[1]}{'w' if k[2] else ''}{' dma' if k[3] else ''} bt{8 * k[4]} pf{k[5]}"

        got = f"{measured[cfg]:.3f} ms" if cfg in measured else "not measured"
        ratio = f"{measured[cfg] / measured[best]:.3f}" if cfg in measured else "-"
        print(f"  {s['label']:34s} solver {name(cfg):17s} {got}, best {name(best):17s} {measured[best]:.3f} ms: "
              f"ratio {ratio}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", nargs="*", default=[str(SWEEP)], help="sweep JSON files (their shapes together)")
    ap.add_argument("--hardware", default="H200", help="the preset the sweep's GPU is modelled by")
    ap.add_argument("--direction", default="forward",
                    help="the sweeps' rows of these kernels, comma-separated: forward, inference (forward)")
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--slack", type=float, default=0.03, help="a good choice: measured within this of the best")
    ap.add_argument("--weight", type=float, default=1.0, help="of the choices' hinge against the squared log error")
    ap.add_argument("--margin", type=float, default=0.01, help="a good choice's estimate below the rest, relative")
    args = ap.parse_args(argv)
    hw = preset(args.hardware)
    directions = tuple(d.strip() for d in args.direction.split(","))
    if not directions or any(d not in ("forward", "inference") for d in directions):
        ap.error(f"--direction: expected forward and/or inference, got {args.direction!r}")
    shapes = load([Path(p) for p in args.sweep], hw, directions)
    report(DEFAULT_MODEL, shapes, hw, "current model")
    if args.fit:
        targets(shapes, args.slack)
        x = {n: round(v) for n, v in fit(shapes, current(), args.weight, args.margin).items()}
        print("fitted:", ", ".join(f"{n}={v}" for n, v in x.items()))
        report(model_with(x), shapes, hw, "fitted (rounded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
