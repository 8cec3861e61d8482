"""Calibrate the fused backward's latency constants (``KernelModel.bw_*``) on a measured sweep:

    python bench/calibrate_bw.py bench/results/constrint/2026-11-30-h200-sweep-backward.json [--hold-out LABEL ...]

Minimises the mean squared log error of the model's time against every measured configuration (Nelder-Mead
over the constants named in ``FREE``, from the model's current values), then prints the constants, the error,
and per shape the configuration the calibrated model would choose against the fastest measured. Shapes named
with ``--hold-out`` are left out of the fit and reported separately (a check the fit cannot have tuned for).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashrnn_core.constrint import PRESETS, preset  # noqa: E402
from flashrnn_core.constrint.backward import configuration_values  # noqa: E402
from flashrnn_core.constrint.problems import (DEFAULT_MODEL, CellCost, FusedParams, build_fused, estimate,  # noqa: E402
                                              geometry)

#: The constants fitted (KernelModel field names); cell issue costs are fitted per cell as "issue:<cell>".
FREE = ("bw_dependent_cpi", "bw_fixed", "bw_fixed_per_warp", "bw_skeleton_issue")


def values_of(p: FusedParams) -> dict[str, int]:
    """The solver's variables of a measured backward configuration (what ``estimate`` reads)."""
    geo = geometry(p.function, p.dtype, p.D, "backward")
    return configuration_values(geo, p.k_split, p.prefetch_steps, p.fused_dr)


def rows_of(sweep: dict) -> list[tuple[str, FusedParams, float]]:
    return [(s["label"], FusedParams.from_dict(r["params"]), r["ms"]) for s in sweep["shapes"] if not s["infeasible"]
            for r in s["rows"] if r.get("ms")]


def model_with(x: list[float], cells: list[str]):
    kw = {name: max(0.0, v) for name, v in zip(FREE, x)}
    costs = dict(DEFAULT_MODEL.bw_cells)
    for c, v in zip(cells, x[len(FREE):]):
        costs[c] = CellCost(costs[c].latency, max(0.0, v))
    return replace(DEFAULT_MODEL, bw_cells=costs, **kw)


def predict(model, hw, p: FusedParams, cache: dict) -> float:
    key = (p.function, p.dtype, p.B, p.N, p.D)
    fp = cache.get(key)
    if fp is None:
        fp = cache[key] = build_fused(hw, p.function, p.dtype, p.B, p.N, p.D, "backward")
    fp.model = model
    return hw.cycles_to_us(estimate(fp, values_of(p))["total"]) * 1024 / 1e3  # ms at T = 1024


def report(model, hw, rows, cache, title: str) -> None:
    shapes: dict[str, list] = {}
    for label, p, ms in rows:
        shapes.setdefault(label, []).append((predict(model, hw, p, cache), ms, p))
    err = [math.log(m / ms) for r in shapes.values() for m, ms, _ in r]
    print(f"{title}: rms log error {math.sqrt(sum(e * e for e in err) / len(err)):.3f} over {len(err)} rows")
    for label, r in shapes.items():
        chosen = min(r, key=lambda t: t[0])
        best = min(r, key=lambda t: t[1])
        print(f"  {label:45s} model's choice {chosen[1]:.3f} ms, best {best[1]:.3f} ms: "
              f"ratio {chosen[1] / best[1]:.3f}")


def main(argv=None) -> int:
    from scipy.optimize import minimize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--hold-out", nargs="*", default=[], help="shape labels left out of the fit")
    ap.add_argument("--cells", action="store_true", help="fit the cells' issue costs too")
    args = ap.parse_args(argv)
    sweep = json.loads(Path(args.sweep).read_text())
    name = sweep["gpu"].split()[-1]  # "NVIDIA H200" -> the preset of that name (H200 for an unknown GPU)
    hw = preset(name if name in PRESETS else "H200")
    rows = rows_of(sweep)
    fit_rows = [r for r in rows if r[0] not in args.hold_out]
    cells = sorted({p.function for _, p, _ in rows})
    cache: dict = {}
    x0 = [float(getattr(DEFAULT_MODEL, n)) for n in FREE] + [float(DEFAULT_MODEL.bw_cells[c].issue) for c in cells
                                                            if args.cells]

    def loss(x):
        model = model_with(x, cells)
        return sum(math.log(predict(model, hw, p, cache) / ms) ** 2 for _, p, ms in fit_rows) / len(fit_rows)

    report(model_with(x0, cells), hw, rows, cache, "current model")
    res = minimize(loss, x0, method="Nelder-Mead", options={"maxiter": 6000, "xatol": 0.5, "fatol": 1e-6})
    model = model_with(list(res.x), cells)
    print("calibrated:", ", ".join(f"{n}={getattr(model, n):.1f}" for n in FREE),
          ", ".join(f"{c}.issue={model.bw_cells[c].issue:.1f}" for c in cells))
    report(model, hw, fit_rows, cache, "calibrated, fitted shapes")
    held = [r for r in rows if r[0] in args.hold_out]
    if held:
        report(model, hw, held, cache, "calibrated, held-out shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
