"""The data behind ConstrINT's register rule for backward kernels with R^T partly in shared memory
(``KernelModel.bw_reg_rest_with_smem*``, fused_bw.cu ``Tile::RS``): NVRTC only, no GPU.

    python bench/bw_smem_register_data.py [--cells lstm,slstm,gru,elman] [--dtypes bfloat16,float32]
        [--dims 256,512,768] [--ksplits 1,2,4] [--prefetch 1,3] [--jobs 2] [--out FILE.json]

For each family (cell, dtype, D, k split, prefetch) on 16-block clusters, the kernel the solver would launch is
built (``problems.assess`` with a register rule that admits anything, then ``backends.fused.launch_of``) and
compiled for sm_90 with the shared-memory k-tiles of R^T bisected for the fewest that ptxas compiles without a
spill. A row gives the k-tiles a warp holds, that fewest (``rs``), the registers R^T's fragments then keep
(``r_regs``), ptxas's count there and the cap: what ptxas needs besides R^T is at most ``cap - r_regs`` (the model's
"rest" with R^T in shared memory; exactly ptxas's count less ``r_regs`` where it stayed below the cap).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def fewest_clean(spills_at: Callable[[int], bool], lo: int, hi: int) -> int:
    """The least n in [lo, hi] at which ``spills_at(n)`` is False, for a predicate that is True below some n and
    False from there on (more tiles in shared memory, fewer registers); ``hi + 1`` where it is True everywhere."""
    if spills_at(hi):
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if not spills_at(mid) else (mid + 1, hi)
    return lo


def spills(resources) -> bool:
    """Whether ptxas's report (``runtime.Resources``) has the kernel spill (to local memory or the stack)."""
    return resources.spill_stores + resources.spill_loads + resources.stack > 0


def any_split_model():
    """The default model with a register rule for R^T in shared memory that counts R^T's registers alone: it
    admits every split that the other limits (shared memory, the tiling) allow."""
    from flashrnn_core.constrint import problems

    return replace(problems.DEFAULT_MODEL, bw_reg_rest_with_smem=0, bw_reg_rest_with_smem_per_warp=0,
                   bw_reg_rest_with_smem_split=0)


def _launch(function: str, dtype: str, D: int, ks: int, prefetch: int, rs: int):
    """The launch of one backward configuration on 16-block clusters, or None where it breaks a limit other than
    the register rule (shared memory, the tiling)."""
    from flashrnn_core.backends.fused import launch_of
    from flashrnn_core.constrint import H100, problems

    choice = problems.assess(H100, function, dtype, 16, 1, D, blocks_per_head=16, k_split=ks,
                             prefetch_steps=prefetch, r_ktiles_in_smem=rs, direction="backward",
                             model=any_split_model(), explain=False)
    return None if isinstance(choice, problems.Infeasible) else launch_of(choice)


def family(key: tuple[str, str, int, int, int]) -> dict | None:
    """One family's row (module docstring), None where no shared-memory split of it launches at all."""
    from flashrnn_core.constrint import H100, problems
    from flashrnn_core.runtime import compile_spec

    function, dtype, D, ks, prefetch = key
    geo = problems.geometry(function, dtype, D, "backward")
    ktw = -(-geo.kt // ks)
    feasible = [rs for rs in range(1, ktw + 1) if _launch(function, dtype, D, ks, prefetch, rs) is not None]
    if not feasible:
        return None
    reports: dict[int, object] = {}

    def spills_at(rs: int) -> bool:
        reports[rs] = compile_spec(_launch(function, dtype, D, ks, prefetch, rs).spec, "sm_90",
                                   use_cache=False).resources
        return spills(reports[rs])

    rs = fewest_clean(spills_at, feasible[0], feasible[-1])
    launch = _launch(function, dtype, D, ks, prefetch, feasible[0])
    warps = launch.threads // 32
    row = dict(function=function, dtype=dtype, D=D, ks=ks, prefetch=prefetch, warps=warps, ktw=ktw,
               cap=problems.register_cap(H100, launch.threads), rs_min_feasible=feasible[0], rs=rs)
    if rs <= feasible[-1]:
        row.update(r_regs=4 * geo.split * (ktw - rs), registers=reports[rs].registers)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="lstm,slstm,gru,elman")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--dims", default="256,512,768")
    ap.add_argument("--ksplits", default="1,2,4")
    ap.add_argument("--prefetch", default="1,3")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", help="write the rows as JSON too")
    args = ap.parse_args(argv)
    keys = list(itertools.product(args.cells.split(","), args.dtypes.split(","), map(int, args.dims.split(",")),
                                  map(int, args.ksplits.split(",")), map(int, args.prefetch.split(","))))
    print("cell   dtype    D    ks p  warps cap  ktw  rs (least feasible)  r_regs ptxas  rest <=")
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(family, keys):
            if row is None:
                continue
            rows.append(row)
            tail = (f"{row['r_regs']:<6} {row['registers']:<5} {row['cap'] - row['r_regs']}" if "r_regs" in row
                    else "spills with every k-tile in shared memory")
            print(f"{row['function']:6} {row['dtype']:8} {row['D']:<4} {row['ks']:<2} {row['prefetch']:<2} "
                  f"{row['warps']:<5} {row['cap']:<4} {row['ktw']:<4} {row['rs']:<3} ({row['rs_min_feasible']:<3})"
                  f"             {tail}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
