"""A head on two clusters (fused_fw.cu FLASHRNN_HEAD_CLUSTERS: Tile::G, HeadHandoff), built and launched by hand
(not a solver geometry yet): the 1x768 forward checked against vanilla from NaN-poisoned outputs and timed
against the solver's kernel in the same process.

    python bench/head_split.py [--cell lstm] [--rs 7 8 10] [--prefetch 4] [--runs 30] [--T 1024] [--inference]
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashrnn_core.cells import CELLS  # noqa: E402
from flashrnn_core.runtime.compile import KernelSpec  # noqa: E402

CELL_STRUCTS = {"lstm": "LstmCell", "slstm": "SlstmCell", "gru": "GruCell", "elman": "ElmanCell"}


@dataclass(frozen=True)
class Split:
    """One hand-built geometry: a head of D dims on `clusters` clusters of `cluster` blocks, 16-bit storage, one
    batch n-tile (8 sequences) a block, `k_split` 2 with DMA warps (interleaved k-tiles), 8 dims a warp, `rs` of
    a warp's k-tiles of R in shared memory, Wx `prefetch` steps ahead."""

    cell: str = "lstm"
    D: int = 768
    clusters: int = 2
    cluster: int = 16
    rs: int = 4
    prefetch: int = 4
    dma_warps: int = 2
    k_split: int = 2
    save: bool = True  # False: the inference forward (FLASHRNN_SAVE=0, states only)
    extra: tuple[tuple[str, str], ...] = ()  # measurement knobs: (FLASHRNN_HANDOFF_BATCH, "8"), ...

    @property
    def dims_per_block(self) -> int:
        return self.D // (self.cluster * self.clusters)

    @property
    def dims_per_warp(self) -> int:
        return 8 if CELLS[self.cell].gates_r % 2 == 0 else 16

    @property
    def threads(self) -> int:
        return 32 * (self.dims_per_block // self.dims_per_warp * self.k_split + self.dma_warps)

    @property
    def words(self) -> int:
        """HeadHandoff::WORDS: 8-byte words a block's slice takes (8 rows, 4 data bytes a word)."""
        return 8 * self.dims_per_block * 2 // 4

    def smem_bytes(self) -> int:
        """Tile::SMEM_BYTES (fused_fw.cu) for this geometry, bf16/fp16 storage, NBT = 1."""
        cell, db, bt, e = CELLS[self.cell], self.dims_per_block, 8, 2
        warps_d = db // self.dims_per_warp
        mt = self.dims_per_warp * cell.gates_r // 16
        h = 2 * bt * (self.D + 8) * e
        x = (self.prefetch + 1) * bt * (cell.gates_w * db + 16 // e) * e
        partials = self.k_split * warps_d * mt * 4 * 32 * 4
        outputs = 2 * (cell.states + cell.n_saved) * bt * (db + 16 // e) * e
        bars = 16 * (min(3, self.cluster - 1) + 1)
        r = warps_d * self.k_split * mt * self.rs * 512
        return h + x + partials + outputs + bars + r

    def spec(self, dtype: str = "bfloat16") -> KernelSpec:
        defines = dict(FLASHRNN_CELL=CELL_STRUCTS[self.cell],
                       FLASHRNN_STORAGE={"bfloat16": "__nv_bfloat16", "float16": "__half"}[dtype],
                       FLASHRNN_FAST_ACTIVATIONS=1, FLASHRNN_D=self.D, FLASHRNN_NBT=1, FLASHRNN_PREFETCH=self.prefetch,
                       FLASHRNN_CLUSTER=self.cluster, FLASHRNN_KSPLIT=self.k_split, FLASHRNN_DMA_WARPS=self.dma_warps,
                       FLASHRNN_R_SMEM=self.rs, FLASHRNN_HEAD_CLUSTERS=self.clusters,
                       FLASHRNN_THREADS=self.threads, FLASHRNN_SMEM_BYTES=self.smem_bytes())
        if not self.save:
            defines["FLASHRNN_SAVE"] = 0
        defines.update(self.extra)
        label = (f"{self.cell} fw {dtype} D{self.D} {self.clusters}x cluster{self.cluster} ksplit{self.k_split} "
                 f"dma{self.dma_warps} p{self.prefetch} rsmem{self.rs}" + ("" if self.save else " infer")
                 + "".join(f" {k}={v}" for k, v in self.extra))
        return KernelSpec("fused_fw.cu", "flashrnn_fused_fw", tuple((k, str(v)) for k, v in defines.items()),
                          label=label, min_sm=90, smem_dynamic=self.smem_bytes())


def run_split(cp, split: Split, Wx, R, b, s0):
    """The hand-built kernel's states and saved values ([S,B,T,N,D], [B,T,NSAVED,N,D]) from NaN-poisoned buffers."""
    from flashrnn_core.runtime.launch import get_kernel, launch

    B, T, _, N, D = Wx.shape
    cell, tiles = CELLS[split.cell], -(-B // 8)
    states = cp.full((cell.states, B, T, N, D), np.nan, Wx.dtype)
    saved = cp.full((B, T, cell.n_saved, N, D), np.nan, Wx.dtype)
    handoff = cp.zeros(tiles * N * split.clusters * split.cluster * 2 * split.words, cp.uint64)
    kernel = get_kernel(split.spec(np.dtype(Wx.dtype).name))

    def call():
        handoff.fill(0)  # tags are the step + 1: none may stay from the last launch
        launch(kernel, (N * split.cluster * split.clusters, tiles), split.threads, Wx, R, b, s0, states, saved,
               np.int32(B), np.int32(T), np.int32(N), None, handoff, shmem=split.smem_bytes(), cluster=split.cluster)

    return call, states, saved


def relative_error(a, ref) -> float:
    a, ref = (np.asarray(x, np.float64) for x in (a, ref))
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=("lstm", "slstm"))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--rs", type=int, nargs="+", default=[7, 8, 10])
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
    splits = [Split(cell=args.cell, rs=rs, prefetch=args.prefetch, save=not args.inference, extra=extra)
              for rs in args.rs]
    if args.compile_only:
        from flashrnn_core.runtime.compile import compile_spec

        for split in splits:
            r = compile_spec(split.spec(args.dtype), "sm_90").resources
            print(f"{split.spec().label}: {split.threads} threads, {split.smem_bytes()} B shared, "
                  f"{r.registers} registers, {r.spill_stores} B spilled", flush=True)
        return 0
    return measure(splits, args)


def measure(splits: list[Split], args) -> int:
    import cupy as cp

    from bench.timing import measure as time_call
    from flashrnn_core import forward

    cell, D, B, T = CELLS[args.cell], 768, args.B, args.T
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
    save = not args.inference
    fused = forward(Wx, R, b, s0, function=args.cell, backend="cuda_fused", save_for_backward=save)
    ref_states = cp.asnumpy(reference.states)
    print(f"{args.cell} 1x768 {args.dtype} B={B} T={T}: the solver's cuda_fused, states' error against vanilla "
          f"{relative_error(cp.asnumpy(fused.states), ref_states):.2e}", flush=True)
    failures = 0
    if args.runs:
        t = time_call(lambda: forward(Wx, R, b, s0, function=args.cell, backend="cuda_fused", save_for_backward=save),
                      "cupy", args.runs)
        print(f"  solver's kernel {t.median_ms:.3f} ms", flush=True)
    for split in splits:
        try:
            call, states, saved = run_split(cp, split, Wx, R, b, s0)
            call()
            cp.cuda.runtime.deviceSynchronize()
            nan = int(cp.isnan(states).sum()) + (int(cp.isnan(saved).sum()) if save else 0)
            err = relative_error(cp.asnumpy(states), ref_states)
            line = f"  {split.spec().label}: NaN left {nan}, error {err:.2e}"
            if save:
                line += f", saved against the solver's {relative_error(cp.asnumpy(saved), cp.asnumpy(fused.saved)):.2e}"
            if args.runs:
                line += f", {time_call(call, 'cupy', args.runs).median_ms:.3f} ms"
            failures += int(nan > 0 or not err < 5e-2)
            print(line, flush=True)
        except Exception as exc:  # one that does not build or launch: say so, run the others
            failures += 1
            print(f"  {split.spec().label}: failed: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(main())
