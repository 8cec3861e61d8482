"""What a step's exchange of h costs when a head spans one cluster or several: the in-cluster exchange of the
fused kernels (st.async + mbarrier) against a hand-off between clusters through global memory, alone, in cycles
a step. The question behind it: a 1x768 head on two 16-block clusters halves R a block (so most of it fits in
registers and the step's ~147 KB of shared-memory reads of R shrink to ~50 KB, ~-1200 cycles a step by
bench/results/phases/2026-12-01-h200-matvec-bound.txt) but pays a global-memory hand-off every step. The split
pays only if that hand-off, once overlapped with the product of the own cluster's half of h, costs well under
those ~1200 cycles.

Expected, written before any run (H200): one cluster with 768-byte slices (the 1x768 head as it runs) 700-900
cycles a step (the 16-block 3x256 forward's "wait h" + "send h" phases, ~780); the in-cluster half of a two-
cluster head (384 bytes) 600-800; the hand-off alone 1500-2500 with one counter (16 reductions on one L2 address,
then a poll), 1200-1800 with a flag a block, 900-1300 with tagged words (no fence, no separate signal); both
exchanges together about the hand-off's (they overlap). The split is worth building only if (two clusters, both,
tagged words) minus (one cluster) comes out below ~600 cycles, half the product's saving: the other half goes to
the product of the remote half of h, which can only start once it has landed.

    python bench/cluster_exchange.py [--steps 1000] [--repeat 3]
    compute-sanitizer --tool synccheck python bench/cluster_exchange.py --sync-repro

--sync-repro runs the in-cluster exchange alone (the library's exchange_barriers_init / st.async / mbarrier wait /
exchange_barriers_exit pattern, a few steps) at one and at several blocks an SM, in one wave and in many: the
minimal case of the "Missing wait" that synccheck reported on two-blocks-an-SM fused forwards
(bench/results/sanitizer/README.md). A report there with this kernel, whose mbarrier phases are all waited for,
would say the tool, not the fused kernels. Measured (stop 55, H200): it reports, in exactly the cases where blocks of
one rank from different clusters share an SM (the placement each case prints), memcheck clean and the data correct;
--stagger moves the report instead of removing it
(bench/results/sanitizer/2026-12-05-h200-synccheck-exchange-repro.txt).

Kernel: bench/kernels/cluster_exchange.cu (not part of the library; it includes the library's common/pieces.cuh).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashrnn_core.runtime import env  # noqa: E402
from flashrnn_core.runtime.compile import KernelSpec  # noqa: E402
from flashrnn_core.runtime.launch import get_kernel, launch  # noqa: E402

KERNEL = Path(__file__).resolve().parent / "kernels" / "cluster_exchange.cu"
THREADS = 256
SIGNALS = {0: "counter", 1: "flags", 2: "ll"}


@dataclass(frozen=True)
class Case:
    """One exchange: GROUPS clusters of CL blocks a head, each block's slice SLICE 16-byte chunks (1x768 at 8
    sequences: 48 with one cluster, 24 with two, 12 with four); heads: how many heads at once (B=16 is two
    batch tiles of 8, so two); work: cycles of spin a step standing in for the product and cells."""

    groups: int
    slice: int
    local: bool = True
    remote: bool = False
    signal: int = 1
    cl: int = 16
    heads: int = 1
    work: int = 0
    stagger: bool = False

    def label(self) -> str:
        what = "+".join(w for w, on in (("local", self.local), (f"remote/{SIGNALS[self.signal]}", self.remote)) if on)
        return (f"{self.heads}x{self.groups} cl{self.cl} slice {self.slice * 16:4d} B {what:20s} "
                f"work {self.work}")

    def defines(self) -> dict[str, int]:
        return dict(CX_CL=self.cl, CX_GROUPS=self.groups, CX_SLICE=self.slice, CX_LOCAL=int(self.local),
                    CX_REMOTE=int(self.remote), CX_SIGNAL=self.signal, CX_STAGGER=int(self.stagger))

    def blocks(self) -> int:
        return self.heads * self.groups * self.cl

    def smem(self) -> int:
        return 2 * self.groups * self.cl * self.slice * 16 + 16


def spec(case: Case) -> KernelSpec:
    root = env.source_root()
    return KernelSpec(os.path.relpath(KERNEL, root), "cluster_exchange",
                      tuple((k, str(v)) for k, v in sorted(case.defines().items())), min_sm=90)


#: The timing table: the 1x768 head as it runs (one cluster), its two halves on two clusters (each exchange
#: alone, then both, with each signal), four clusters, and two heads of two clusters (B=16's two batch tiles),
#: without and with 1000 cycles of work a step (which a hand-off could overlap only in a real kernel).
CASES = (
    Case(groups=1, slice=48),
    Case(groups=1, slice=48, heads=2),
    Case(groups=2, slice=24),
    *(Case(groups=2, slice=24, local=False, remote=True, signal=s) for s in (0, 1, 2)),
    *(Case(groups=2, slice=24, remote=True, signal=s) for s in (0, 1, 2)),
    *(Case(groups=2, slice=24, remote=True, signal=s, heads=2) for s in (1, 2)),
    *(Case(groups=4, slice=12, remote=True, signal=s) for s in (1, 2)),
    Case(groups=1, slice=48, work=1000),
    *(Case(groups=2, slice=24, remote=True, signal=s, work=1000) for s in (1, 2)),
)


def run_case(cp, case: Case, steps: int, verify: bool, smem: int | None = None,
             placement: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One launch: (cycles of every block's step loop, errors [data, polls given up]); `placement` receives
    each block's (SM, rank, start ns, end ns) when given."""
    kernel = get_kernel(spec(case))
    signals = cp.zeros(case.heads * case.groups * case.cl, cp.uint32)
    gbuf = cp.zeros(case.blocks() * 2 * case.slice * 32, cp.uint8)  # room for SIGNAL 2's doubled words
    errors = cp.zeros(2, cp.uint32)
    cycles = cp.zeros(case.blocks(), cp.int64)
    where = cp.zeros((case.blocks(), 4), cp.uint64)
    launch(kernel, case.blocks(), THREADS, np.int32(steps), np.int32(case.work), np.int32(verify), signals, gbuf,
           errors, cycles, where, shmem=smem or case.smem(), cluster=case.cl)
    cp.cuda.runtime.deviceSynchronize()
    if placement is not None:
        placement.extend(where.get().tolist())
    return cycles.get(), errors.get()


def same_rank_neighbours(placement: list, cl: int) -> list[tuple[int, int, int]]:
    """(block, other block, rank) for blocks of different clusters with the same rank on one SM at once: they
    address their shared memory (and mbarriers) at the same cluster-window address, rank << 24 | offset."""
    pairs = []
    for a, (sm_a, rank_a, t0_a, t1_a) in enumerate(placement):
        for b in range(a + 1, len(placement)):
            sm_b, rank_b, t0_b, t1_b = placement[b]
            if sm_a == sm_b and rank_a == rank_b and a // cl != b // cl and t0_a < t1_b and t0_b < t1_a:
                pairs.append((a, b, int(rank_a)))
    return pairs


def time_case(cp, case: Case, steps: int, repeat: int) -> tuple[float, float, np.ndarray]:
    """(median cycles a step of the slowest block, of the fastest, errors of a verifying run): the difference
    of `steps` and `steps / 2` steps drops the start and the exit."""
    _, errors = run_case(cp, case, 64, True)
    slow, fast = [], []
    for _ in range(repeat):
        a, _ = run_case(cp, case, steps // 2, False)
        b, _ = run_case(cp, case, steps, False)
        per = (b - a) / (steps - steps // 2)
        slow.append(per.max())
        fast.append(per.min())
    return float(np.median(slow)), float(np.median(fast)), errors


def sync_repro(cp, only: str = "", stagger: bool = False) -> int:
    """The in-cluster exchange at 1, 2 and 4 blocks an SM, one wave and many (a later block on an SM reuses
    the shared memory, and the mbarriers, of an earlier one), clusters of 13 and 16; errors counted. `only`:
    "CL,PER_SM,CLUSTERS" runs that case alone (a synccheck report aborts the launch, and the process with it).
    Each case also says which blocks shared an SM with a block of another cluster and the same rank; `stagger`
    moves each cluster's mbarriers to its own offset (CX_STAGGER)."""
    failures = 0
    for cl in (13, 16):
        case = Case(groups=1, slice=48 if cl == 16 else 4, cl=cl, stagger=stagger)
        for per_sm, smem in ((1, 120 * 1024), (2, 100 * 1024), (4, 50 * 1024)):
            for clusters in (2, 40):
                if only and only != f"{cl},{per_sm},{clusters}":
                    continue
                big = Case(**{**case.__dict__, "heads": clusters})
                placement: list = []
                _, errors = run_case(cp, big, 5, True, smem=smem, placement=placement)
                pairs = same_rank_neighbours(placement, cl)
                ranks = sorted({rank for _, _, rank in pairs})
                print(f"sync repro cl{cl} {per_sm} blocks an SM, {clusters} clusters: errors {errors.tolist()}; "
                      f"{len(pairs)} same-rank pairs on an SM at once, ranks {ranks}, first blocks "
                      f"{[(a, b) for a, b, _ in pairs[:12]]}", flush=True)
                failures += int(errors.sum() > 0)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sync-repro", action="store_true", help="the synccheck repro instead of the timings")
    parser.add_argument("--only", default="", metavar="CL,PER_SM,CLUSTERS", help="--sync-repro: one case")
    parser.add_argument("--stagger", action="store_true", help="--sync-repro: each cluster's mbarriers apart")
    parser.add_argument("--compile-only", action="store_true", help="build every case for sm_90, no GPU")
    args = parser.parse_args(argv)
    if args.compile_only:
        from flashrnn_core.runtime.compile import compile_spec

        for case in CASES:
            r = compile_spec(spec(case), "sm_90").resources
            print(f"{case.label()}: {r.registers} registers, {r.spill_stores} B spilled")
        return 0
    import cupy as cp

    if args.sync_repro:
        return int(sync_repro(cp, args.only, args.stagger) > 0)
    print(f"{'case':74s} cycles a step: slowest block, fastest; errors [data, polls given up]")
    for case in CASES:
        try:
            slow, fast, errors = time_case(cp, case, args.steps, args.repeat)
            print(f"{case.label():74s} {slow:7.0f} {fast:7.0f}  {errors.tolist()}", flush=True)
        except Exception as exc:  # one that does not launch (clusters not co-resident...): say so, go on
            print(f"{case.label():74s} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
