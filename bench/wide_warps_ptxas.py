"""ptxas (sm_90) of the wide-warp lstm/slstm D = 768 forwards (fused_fw.cu Tile::WIDE) over R's k-tiles in shared
memory and the prefetch depth: the data ``KernelModel.reg_rest_with_smem_wide`` is fitted to
(``constrint.problems.WIDE_WARPS``). NVRTC only, no GPU:

    python bench/wide_warps_ptxas.py > bench/results/constrint/<date>-wide-warps-ptxas.jsonl

One JSON line a launch (B=16, N=1, 16-block clusters, split K under DMA warps): cell, dtype, direction, k-tiles
in shared memory (of a warp's 24), prefetch, registers, spill bytes, shared memory; or "infeasible" where the
block's shared memory does not hold it. The register rule is switched off to build them (``assess``).
"""

from __future__ import annotations

import itertools
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashrnn_core.backends.fused import launch_of  # noqa: E402
from flashrnn_core.constrint import H100  # noqa: E402
from flashrnn_core.constrint.problems import DEFAULT_MODEL, assess  # noqa: E402
from flashrnn_core.runtime import compile_spec  # noqa: E402

ANY_REGISTERS = replace(DEFAULT_MODEL, wide_warps=True, reg_rest_with_smem_wide=Fraction(1, 4))


def one(job: tuple) -> str:
    function, dtype, direction, r_smem, prefetch = job
    row = dict(fn=function, dt=dtype, d=direction, rs=r_smem, p=prefetch)
    choice = assess(H100, function, dtype, 16, 1, 768, blocks_per_head=16, k_split=2, prefetch_steps=prefetch,
                    r_ktiles_in_smem=r_smem, dma_warps=2, direction=direction, model=ANY_REGISTERS, explain=False)
    if not choice:
        return json.dumps({**row, "infeasible": True})
    res = compile_spec(launch_of(choice).spec, "sm_90", use_cache=False).resources
    return json.dumps({**row, "regs": res.registers, "spill": res.spill_stores, "smem": choice.smem_bytes})


def main() -> None:
    jobs = itertools.product(("lstm", "slstm"), ("bfloat16", "float16"), ("forward", "inference"),
                             range(10, 16), (1, 2, 4, 8))
    with ProcessPoolExecutor(2) as pool:
        for line in pool.map(one, jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
