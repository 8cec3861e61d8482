"""ptxas reports of every fused backward variant the kernel admits, for fitting ConstrINT's backward register
model (constrint/backward.py, ``BW_REGISTER_FIT``): NVRTC only, no GPU.

    python bench/bw_register_data.py --out bench/results/constrint/bw_registers.json [--jobs 2] [--arch sm_80,sm_90]

A row per (arch, cell, dtype, D, KS, prefetch, fused dR): threads, registers, spill bytes, stack, compile error.

    python bench/bw_register_data.py --fit bench/results/constrint/bw_registers.json

fits the model's coefficients (non-negative least squares on the variants ptxas compiled below their register
cap, where its count is what the kernel needs) and reports, for the margins in ``KernelModel``, how many
spilling variants the estimate would accept (must be 0) and how many clean ones it rejects.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashrnn_core.backends.fused import BW_ENTRY, BW_SOURCE, CELL_STRUCTS  # noqa: E402
from flashrnn_core.compile import run_jobs  # noqa: E402
from flashrnn_core.runtime import KernelSpec  # noqa: E402

DTYPES = {"bfloat16": "__nv_bfloat16", "float32": "float"}  # float16 compiles as bfloat16 does


def variants(dims, prefetches):
    for function, dtype, D, ks, p in itertools.product(CELL_STRUCTS, DTYPES, dims, (1, 2, 4), prefetches):
        if 2 * D * ks > 1024:
            continue
        for fused_dr in ((0, 1) if dtype != "float32" else (0,)):
            store_drs = int(function == "gru" and not fused_dr)
            defines = (("FLASHRNN_CELL", CELL_STRUCTS[function]), ("FLASHRNN_STORAGE", DTYPES[dtype]),
                       ("FLASHRNN_D", str(D)), ("FLASHRNN_FAST_ACTIVATIONS", "0" if dtype == "float32" else "1"),
                       ("FLASHRNN_KSPLIT", str(ks)), ("FLASHRNN_PREFETCH", str(p)),
                       ("FLASHRNN_STORE_DRS", str(store_drs)), ("FLASHRNN_FUSED_DR", str(fused_dr)))
            label = f"{function} bw {dtype} D{D} ks{ks} p{p} dr{fused_dr}"
            yield dict(function=function, dtype=dtype, D=D, ks=ks, prefetch=p, fused_dr=fused_dr,
                       threads=2 * D * ks), KernelSpec(source=BW_SOURCE, entry=BW_ENTRY, defines=defines, label=label)


def features(row: dict) -> list[float]:
    """The register model's terms for one variant (``constrint.backward.resources``): constant, R^T's
    fragment registers, the lanes' live cell values, dR accumulators."""
    from flashrnn_core.constrint.backward import configuration_values
    from flashrnn_core.constrint.problems import geometry

    geo = geometry(row["function"], row["dtype"], row["D"], "backward")
    v = configuration_values(geo, row["ks"], row["prefetch"], row["fused_dr"])
    return [1.0, 4 * geo.split * v["ktw"], v["cells"] * geo.live_per_cell, 4 * v["tpw"] * v["fused_dr"]]


def fit(path: str) -> int:
    """The register coefficients as a linear program over the variants' ptxas reports: every spilling variant
    estimated above its cap (so the solver never picks it), while minimising how far clean variants are
    estimated above theirs (options lost) plus 0.02 x |estimate - ptxas| where ptxas stayed below the cap."""
    import numpy as np
    from scipy.optimize import linprog

    from flashrnn_core.constrint import A100, H100
    from flashrnn_core.constrint.problems import DEFAULT_MODEL as m, register_cap

    rows = [r for r in json.loads(Path(path).read_text()) if r["error"] is None]
    hw = {"sm_80": A100, "sm_90": H100}
    for r in rows:
        r["cap"] = register_cap(hw[r["arch"]], r["threads"])
    F = np.array([features(r) for r in rows])
    spill = np.array([bool(r["spill"]) for r in rows])
    cap = np.array([r["cap"] for r in rows], float)
    regs = np.array([r["registers"] for r in rows], float)
    below = ~spill & (regs < cap)
    k = F.shape[1]
    # variables: coefficients (k), over_i >= est_i - cap_i (clean rows), dev_i >= |est_i - regs_i| (below rows)
    clean_idx, below_idx = np.flatnonzero(~spill), np.flatnonzero(below)
    nv = k + len(clean_idx) + len(below_idx)
    cost = np.concatenate([np.zeros(k), np.ones(len(clean_idx)), 0.02 * np.ones(len(below_idx))])
    A, ub = [], []
    for i in np.flatnonzero(spill):  # -(c.f) <= -(cap + 1)
        row = np.zeros(nv); row[:k] = -F[i]; A.append(row); ub.append(-(cap[i] + 1))
    for j, i in enumerate(clean_idx):  # c.f - over_j <= cap
        row = np.zeros(nv); row[:k] = F[i]; row[k + j] = -1; A.append(row); ub.append(cap[i])
    for j, i in enumerate(below_idx):  # |c.f - regs| <= dev_j
        for sign in (1, -1):
            row = np.zeros(nv); row[:k] = sign * F[i]; row[k + len(clean_idx) + j] = -1
            A.append(row); ub.append(sign * regs[i])
    res = linprog(cost, A_ub=np.array(A), b_ub=np.array(ub), bounds=[(0, None)] * nv, method="highs")
    coef = res.x[:k]
    print("fit (base, per R register, per live cell value, per dR float):",
          ", ".join(f"{c:.3f}" for c in coef))
    current = [float(m.bw_reg_base), float(m.bw_reg_per_r), float(m.bw_reg_per_cell_value), float(m.bw_reg_per_dr)]
    for name, c, margin, frac in (("fit", coef, 0.0, 0.0),
                                  ("KernelModel", current, float(m.bw_reg_margin), float(m.bw_reg_margin_fraction))):
        est = margin + (1 + frac) * (F @ np.asarray(c))
        dev = regs[below] - F[below] @ np.asarray(c)
        print(f"{name}: spilling variants accepted {int(np.sum(spill & (est <= cap)))} of {int(spill.sum())}; "
              f"clean ones rejected {int(np.sum(~spill & (est > cap)))} of {int((~spill).sum())}; ptxas - fit on "
              f"clean ones below the cap: {dev.min():.0f} to {dev.max():.0f}, mean |.| {np.abs(dev).mean():.1f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="the JSON of ptxas reports to write")
    ap.add_argument("--fit", metavar="JSON", help="fit the register model to a written JSON instead")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--arch", default="sm_80,sm_90")
    ap.add_argument("--dims", default=",".join(str(d) for d in range(16, 129, 16)))
    ap.add_argument("--prefetch", default="2")
    args = ap.parse_args(argv)
    if args.fit:
        return fit(args.fit)
    if not args.out:
        ap.error("--out or --fit is required")
    dims = [int(d) for d in args.dims.split(",")]
    prefetches = [int(p) for p in args.prefetch.split(",")]
    rows, jobs = [], []
    for arch in args.arch.split(","):
        for row, spec in variants(dims, prefetches):
            rows.append({**row, "arch": arch})
            jobs.append((spec, arch))
    print(f"{len(jobs)} compiles", flush=True)
    for row, outcome in zip(rows, run_jobs(jobs, args.jobs)):
        r = outcome.resources
        row.update(registers=r.registers if r else None, spill=(r.spill_stores + r.spill_loads) if r else None,
                   stack=r.stack if r else None, error=outcome.error)
    Path(args.out).write_text(json.dumps(rows, indent=0))
    print(f"wrote {args.out}: {sum(r['error'] is None for r in rows)} compiled, "
          f"{sum(bool(r['spill']) for r in rows)} spill", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
