"""A/B of the two ways dR is summed after the fused backward kernel (flashrnn_core/backends/recurrent_grad.py):
the whole backward with each path forced (``FLASHRNN_DR_PATH``), and ``sum_dr`` alone against what it replaced
(a copy of states with h0 in front, then per-gate cuBLAS GEMMs), with its relative error against that.

    python bench/dr_paths.py                       # the reference shapes
    python bench/dr_paths.py lstm:6:128 gru:6:128  # cell:heads:head_dim
    python bench/dr_paths.py --dtype float32       # the kernel's hi + lo products against cuBLAS's SGEMMs

bfloat16 unless --dtype, B=16, T=1024; CUDA events, median of --runs after a warm-up (runtime.timing.median_ms,
behind a spin: ../shared/BENCH.md). ``sum_dr`` alone is timed as the host issues it, so a path whose launches cost
more host time than its GPU work reads slower than it runs inside a backward; the backward rows are the ones that
decide.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a source checkout

REFERENCE = ("lstm:12:64", "lstm:3:256", "lstm:1:768", "gru:12:64", "gru:3:256", "gru:1:768", "slstm:12:64",
             "elman:12:64")


def replaced_dr(drs, h, dtype):
    """What recurrent_grad replaced: h_prev as a copy (zeros in front), then per gate a GEMM over the heads."""
    import cupy

    from flashrnn_core.backends.recurrent_grad import gemm

    B, T, G, N, D = drs.shape
    e = np.dtype(dtype).itemsize
    h_prev = cupy.concatenate([cupy.zeros((B, 1, N, D), dtype), h[:, :-1]], axis=1)
    dR = cupy.empty((G, N, D, D), np.float32)
    for g in range(G):
        gemm(0, 1, D, D, B * T, h_prev.data.ptr, N * D, D, drs.data.ptr + g * N * D * e, G * N * D, D,
             dR.data.ptr + g * N * D * D * 4, D, D * D, N, dtype)
    return dR


def measure(function: str, N: int, D: int, runs: int, dtype_name: str = "bfloat16") -> str:
    import cupy

    import flashrnn_core as fc
    from flashrnn_core import _arrays
    from flashrnn_core.backends import recurrent_grad as rg
    from flashrnn_core.cells import CELLS
    from flashrnn_core.runtime.timing import median_ms

    B, T, dtype, cell = 16, 1024, _arrays.dtype_named(dtype_name), CELLS[function]
    rng = np.random.default_rng(0)

    def normal(*shape, scale=1.0):
        return cupy.asarray((rng.standard_normal(shape) * scale).astype(np.float32)).astype(dtype)

    Wx, R = normal(B, T, cell.gates_w, N, D), normal(cell.gates_r, N, D, D, scale=D ** -0.5)
    b = normal(cell.gates_b, N, D)
    result = fc.forward(Wx, R, b, function=function, backend="cuda_fused")
    dstates = normal(*result.states.shape)
    paths = ("kernel", "cublas")
    forward_ms = median_ms(lambda: fc.forward(Wx, R, b, function=function, backend="cuda_fused"), runs)
    line = f"{function} {N}x{D} {dtype_name}: forward (saving) {forward_ms:.4f} ms, backward"
    for path in ("",) + paths:
        os.environ[rg.PATH_ENV] = path
        line += f" [{path or 'default'}] {median_ms(lambda: fc.backward(result, dstates=dstates), runs):.4f}"
    drs, h = normal(B, T, cell.gates_r, N, D), result.states[0]
    before = replaced_dr(drs, h, dtype)
    line += f" ms | dR alone: replaced {median_ms(lambda: replaced_dr(drs, h, dtype), runs):.4f}"
    for path in paths:
        os.environ[rg.PATH_ENV] = path
        err = float(abs(rg.sum_dr(drs, h, None) - before).max() / abs(before).max())
        line += f" {path} {median_ms(lambda: rg.sum_dr(drs, h, None), runs):.4f} (rel. err {err:.1e})"
    os.environ[rg.PATH_ENV] = ""
    return line + " ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shapes", nargs="*", default=REFERENCE, help="cell:heads:head_dim")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    args = p.parse_args(argv)
    for shape in args.shapes:
        function, N, D = shape.split(":")
        print(measure(function, int(N), int(D), args.runs, args.dtype), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
