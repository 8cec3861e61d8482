"""The data behind ConstrINT's scatter-kernel register rule (``constrint/backward.py`` ``SCATTER_REGISTER_DATA``,
``KernelModel.bw_scatter_reg_rest``): NVRTC only, no GPU.

    python bench/scatter_register_data.py [--cells lstm,slstm,gru,elman] [--warps 6,8,12]
                                          [--dtype float32 --d 512 --cluster 16 --prefetch 3]

For each cell and warps count, fused_bw.cu's scatter kernel at D = 768 (``--d``) on 16 blocks (``--cluster``;
bf16, ``--dtype``; prefetch 1, ``--prefetch``) is compiled for sm_90 with FLASHRNN_R_SMEM bisected for the fewest
R^T tiles in shared memory that ptxas compiles without a spill; the row gives the register tiles that leaves
(KRF), the registers besides them under the cap (cap - 4 KRF, float32's two parts 8 a tile: the model's "rest")
and ptxas's count with every tile in shared memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashrnn_core.backends.fused import BW_ENTRY, BW_SOURCE, CELL_STRUCTS  # noqa: E402
from flashrnn_core.runtime import KernelSpec, compile_spec  # noqa: E402

from bench.bw_smem_register_data import fewest_clean, spills  # noqa: E402

GATES_R = {"lstm": 4, "slstm": 4, "gru": 3, "elman": 1}
#: (type, fast activations, more defines): "float32-half" is float32 storage with fp16 operands (FLASHRNN_F32_HALF)
STORAGE = {"bfloat16": ("__nv_bfloat16", "1", ()), "float32": ("float", "0", ()),
           "float32-half": ("float", "0", (("FLASHRNN_F32_HALF", "1"),))}


def resources(function: str, warps: int, r_smem: int, D: int = 768, dtype: str = "bfloat16", cluster: int = 16,
              prefetch: int = 1):
    storage, fast, more = STORAGE[dtype]
    defines = (("FLASHRNN_CELL", CELL_STRUCTS[function]), ("FLASHRNN_STORAGE", storage),
               ("FLASHRNN_FAST_ACTIVATIONS", fast), ("FLASHRNN_D", str(D)), ("FLASHRNN_SCATTER", "1"),
               ("FLASHRNN_WARPS", str(warps)), ("FLASHRNN_PREFETCH", str(prefetch)), ("FLASHRNN_CLUSTER", str(cluster)),
               ("FLASHRNN_R_SMEM", str(r_smem)), ("FLASHRNN_STORE_DRS", "1" if function == "gru" else "0"), *more)
    spec = KernelSpec(source=BW_SOURCE, entry=BW_ENTRY, defines=defines, label=f"{function} scatter {dtype} "
                      f"D{D} w{warps} rsmem{r_smem}", min_sm=90)
    return compile_spec(spec, "sm_90").resources


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="lstm,slstm,gru,elman")
    ap.add_argument("--warps", default="6,8,12")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(STORAGE))
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--cluster", type=int, default=16)
    ap.add_argument("--prefetch", type=int, default=1)
    args = ap.parse_args(argv)
    D, split = args.d, 2 if args.dtype == "float32" else 1
    print("cell   warps cap  max KRF of tiles  rest   (ptxas with KRF = 0)")
    for function in args.cells.split(","):
        for warps in map(int, args.warps.split(",")):
            tiles = D // 16 // warps * GATES_R[function] * (D // args.cluster // 16)
            # the fewest shared-memory tiles without a spill (every tile there never spills)
            shape = (D, args.dtype, args.cluster, args.prefetch)
            lo = fewest_clean(lambda n: spills(resources(function, warps, n, *shape)), 0, tiles)
            cap = 255 if 32 * warps * 255 <= 65536 else 65536 // (32 * warps) // 8 * 8
            krf = tiles - lo
            rest = str(cap - 4 * split * krf) if krf < tiles else "-"
            all_shared = resources(function, warps, tiles, *shape).registers
            print(f"{function:6} {warps:<5} {cap:<4} {krf} of {tiles:<11} {rest:6} {all_shared}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
