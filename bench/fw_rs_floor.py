"""How far ptxas lets the 16-bit forwards move R's k-tiles from shared memory into registers: for each chosen
variant with R partly in shared memory (``FLASHRNN_R_SMEM`` > 0), its R_SMEM lowered one k-tile at a time (the
block's shared memory with it) until ptxas (sm_90) spills. NVRTC only, no GPU. Data for refitting
``KernelModel.reg_rest_with_smem`` (``constrint.problems.PAIRED_R_LOADS``):

    python bench/fw_rs_floor.py [--match bfloat16] [--jobs 2] > bench/results/constrint/<date>-fw-rs-floor.jsonl

One JSON line a variant: its label, the solver's R_SMEM, and [R_SMEM, registers, spill bytes] down to the first
spill (or 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashrnn_core.backends import all_kernel_variants  # noqa: E402
from flashrnn_core.backends.fused import CELL_STRUCTS  # noqa: E402
from flashrnn_core.compile import label_matches  # noqa: E402
from flashrnn_core.constrint.problems import geometry  # noqa: E402
from flashrnn_core.runtime import KernelSpec, compile_spec  # noqa: E402

FUNCTION_OF_STRUCT = {struct: function for function, struct in CELL_STRUCTS.items()}


def with_r_smem(spec: KernelSpec, r_smem: int) -> KernelSpec:
    """``spec`` with ``r_smem`` of a warp's k-tiles of R in shared memory (512 bytes a fragment, as Tile::R_BYTES)."""
    d = dict(spec.defines)
    compute_warps = int(d["FLASHRNN_THREADS"]) // 32 - int(d.get("FLASHRNN_DMA_WARPS", 0))
    wide = d.get("FLASHRNN_WIDE_WARPS") == "1"
    m_tiles = geometry(FUNCTION_OF_STRUCT[d["FLASHRNN_CELL"]], "bfloat16", int(d["FLASHRNN_D"]), wide=wide).mt
    smem = int(d["FLASHRNN_SMEM_BYTES"]) + (r_smem - int(d["FLASHRNN_R_SMEM"])) * compute_warps * m_tiles * 512
    d.update(FLASHRNN_R_SMEM=str(r_smem), FLASHRNN_SMEM_BYTES=str(smem))
    return dataclasses.replace(spec, defines=tuple(d.items()), smem_dynamic=smem)


def scan(spec: KernelSpec) -> str:
    chosen = int(dict(spec.defines)["FLASHRNN_R_SMEM"])
    rows = []
    for r_smem in range(chosen, -1, -1):
        res = compile_spec(with_r_smem(spec, r_smem), "sm_90", use_cache=False).resources
        rows.append([r_smem, res.registers, res.spill_stores])
        if res.spill_stores:
            break
    return json.dumps({"label": spec.label, "r_smem": chosen, "rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--match", default="", help="compile --match's words, e.g. bfloat16,lstm")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    specs = [s for s in all_kernel_variants() if "cuda_fused fw" in s.label and label_matches(s.label, args.match)
             and dict(s.defines)["FLASHRNN_STORAGE"] != "float" and int(dict(s.defines).get("FLASHRNN_R_SMEM", 0))]
    with ProcessPoolExecutor(args.jobs) as pool:
        for line in pool.map(scan, specs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
