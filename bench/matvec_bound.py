"""What bounds the 1x768 forward's matrix-vector product: one block's step (192 gate rows x 768, 8 sequences) alone,
through mma.sync (the fused forward's path) and through wgmma (sm_90a), with R's k-tiles split between registers
and shared memory as the solver splits them, and (matvec_split) with the register file shared out otherwise: more
compute warps, K split in four, a producer warpgroup's registers given to them by setmaxnreg. Cycles a step by
clock64, one block (one SM). Results: bench/results/phases/2026-12-01-h200-matvec-bound.txt and
2026-12-06-h100-matvec-split.txt.

    python bench/matvec_bound.py [--steps 2000]

Kernel: bench/kernels/matvec_bound.cu (not part of the library). First checks wgmma's operand layouts against NumPy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashrnn_core.runtime.compile import KernelSpec  # noqa: E402
from flashrnn_core.runtime.launch import get_kernel, launch  # noqa: E402

ROOT = Path(__file__).resolve().parent / "kernels"
SOURCE = "matvec_bound.cu"
KT, ROWS = 48, 192

#: (label, defines): the fused forward's split (29 of 48 k-tiles of A in shared memory), and the bounds around it.
VARIANTS = (
    ("mma.sync 6 warps, A 29 smem, h smem", dict(KIND=0, A_SMEM=29, H_SMEM=1)),
    ("mma.sync 6 warps, A 0 smem, h smem", dict(KIND=0, A_SMEM=0, H_SMEM=1)),
    ("mma.sync 6 warps, A 29 smem, h regs", dict(KIND=0, A_SMEM=29, H_SMEM=0)),
    ("mma.sync 6 warps, A 0 smem, h regs", dict(KIND=0, A_SMEM=0, H_SMEM=0)),
    ("mma.sync 6 warps, A 0 smem, h regs, 2 chains", dict(KIND=0, A_SMEM=0, H_SMEM=0, CHAINS=2)),
    ("mma.sync 12 warps, A 29 smem, h smem", dict(KIND=0, A_SMEM=29, H_SMEM=1, WARPS=12)),
    ("wgmma 3 wg, A 0 smem", dict(KIND=1, A_SMEM=0)),
    ("wgmma 3 wg, A 0 smem, 2 chains", dict(KIND=1, A_SMEM=0, CHAINS=2)),
    ("wgmma 3 wg, A 16 smem", dict(KIND=1, A_SMEM=16)),
    ("wgmma 3 wg, A 16 smem, 2 chains", dict(KIND=1, A_SMEM=16, CHAINS=2)),
    ("wgmma 3 wg, A 29 smem", dict(KIND=1, A_SMEM=29)),
    ("wgmma 3 wg, A 29 smem, 2 chains", dict(KIND=1, A_SMEM=29, CHAINS=2)),
    # KIND 2 (matvec_split): R's register fragments real, "A n smem" of a warp's k-tiles; warps m x k (+ idle ones
    # first: the DMA warps' place); "regs 232" gives the idle warpgroup's registers to the compute warps.
    ("split 3x2 +2 idle, A 12/24 smem (today's)", dict(KIND=2, M_WARPS=3, K_WARPS=2, IDLE_WARPS=2, A_SMEM=12)),
    ("split 3x2 +2 idle, A 16/24 smem", dict(KIND=2, M_WARPS=3, K_WARPS=2, IDLE_WARPS=2, A_SMEM=16)),
    ("split 4x2 +4 idle, regs 232, A 12/24", dict(KIND=2, M_WARPS=4, K_WARPS=2, IDLE_WARPS=4, REGS=232, A_SMEM=12)),
    ("split 4x2 +4 idle, regs 232, A 10/24", dict(KIND=2, M_WARPS=4, K_WARPS=2, IDLE_WARPS=4, REGS=232, A_SMEM=10)),
    ("split 2x4 +4 idle, regs 232, A 6/12", dict(KIND=2, M_WARPS=2, K_WARPS=4, IDLE_WARPS=4, REGS=232, A_SMEM=6)),
    ("split 4x2 no idle, A 12/24", dict(KIND=2, M_WARPS=4, K_WARPS=2, IDLE_WARPS=0, A_SMEM=12)),
    ("split 4x2 no idle, A 8/24", dict(KIND=2, M_WARPS=4, K_WARPS=2, IDLE_WARPS=0, A_SMEM=8)),
)


def launch_shape(defines: dict[str, int]) -> tuple[str, int, int]:
    """(entry, threads, dynamic shared memory) of a variant."""
    if defines["KIND"] == 2:
        warps = defines["M_WARPS"] * defines["K_WARPS"] + defines["IDLE_WARPS"]
        r_tiles = max(defines["A_SMEM"], 1) * defines["K_WARPS"] * (ROWS // 16)
        return "matvec_split", 32 * warps, KT * 256 + r_tiles * 512
    threads = 32 * (defines.get("WARPS", 6) if defines["KIND"] == 0 else 12)
    return "matvec_bound", threads, KT * 256 + defines["A_SMEM"] * ROWS * 32


def spec(entry: str, defines: dict[str, int]) -> KernelSpec:
    return KernelSpec(SOURCE, entry, tuple((k, str(v)) for k, v in sorted(defines.items())), min_sm=90,
                      arch_suffix="a")


def check_wgmma(cp) -> None:
    """One m64n8k16 product, A from registers and from shared memory, against NumPy (exact in float32)."""
    rng = np.random.default_rng(0)
    a = rng.integers(-4, 5, (64, 16)).astype(np.float32)
    bt = rng.integers(-4, 5, (8, 16)).astype(np.float32)
    # Small integers are exact in bfloat16: its bits are the float32's upper half.
    a_bits, b_bits = ((cp.asarray(x).view(cp.uint32) >> 16).astype(cp.uint16) for x in (a, bt))
    kernel = get_kernel(spec("wgmma_check", {}), root=ROOT)
    for a_from_smem in (0, 1):
        d = cp.full((64, 8), np.nan, dtype=cp.float32)
        launch(kernel, 1, 128, a_bits, b_bits, d, np.int32(a_from_smem))
        got = cp.asnumpy(d)
        ok = np.array_equal(got, a @ bt.T)
        print(f"wgmma_check A from {'smem' if a_from_smem else 'registers'}: {'ok' if ok else 'MISMATCH'}")
        if not ok:
            print(got - a @ bt.T)


def time_variant(cp, defines: dict[str, int], steps: int) -> float:
    entry, threads, smem = launch_shape(defines)
    kernel = get_kernel(spec(entry, defines), root=ROOT)
    sink = cp.zeros(threads, cp.float32)
    cycles = cp.zeros(1, cp.int64)
    per_step = []
    for n in (steps // 2, steps):  # the difference drops the fill and the last wait
        launch(kernel, 1, threads, np.int32(n), sink, cycles, shmem=smem)
        cp.cuda.runtime.deviceSynchronize()
        per_step.append(int(cycles.get()[0]))
    return (per_step[1] - per_step[0]) / (steps - steps // 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    import cupy as cp

    check_wgmma(cp)
    print(f"{'variant':50s} cycles a step")
    for label, defines in VARIANTS:
        try:
            print(f"{label:50s} {time_variant(cp, defines, args.steps):8.0f}", flush=True)
        except Exception as exc:  # a variant that does not build or launch: say so, time the others
            print(f"{label:50s} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)


if __name__ == "__main__":
    main()
