"""One small problem per ``cuda_fused`` kernel variant, so that compute-sanitizer can wrap the whole set:

    compute-sanitizer --tool memcheck --error-exitcode 9 python bench/sanitize_fused.py      # bench/device_check.sh
    python bench/sanitize_fused.py --all        # every variant the backend lists (436 at 3d974fb)
    python bench/sanitize_fused.py --list       # the problems, without running them (no GPU needed)
    python bench/sanitize_fused.py --only forward --resume cut-part1.txt   # what a cut run left

The variants are the backend's fused kernels (``fused.solver_variants()``), forward and backward (the dR kernel
that follows a backward, ``recurrent_grad``, runs inside the backward problems). Each gets a problem of T=5 and
the first (N, B) of the grid the variants were enumerated on (``fused.VARIANT_HEADS`` x ``fused.VARIANT_BATCHES``)
for which the ConstrINT solver picks exactly that variant on this GPU (or, with ``--list`` and no GPU, on the
preset of ``--cc`` with ``--sms`` SMs). A forward variant runs from given initial states and from none (a null
pointer in the kernel); a backward variant runs forward then backward, with upstream gradients on every state and
on the last states; both also with variable lengths. By default one problem per kernel family (every define but
the sizes: cell, dtype, cluster layout, batch tile, k split, dR in the kernel): the smallest and largest D, and
D=48, whose k-tiles are odd; ``--all`` takes every D.
``--shard K/M`` runs every M-th problem (device_check.sh: one shard a GPU, or ``LANES`` processes sharing one);
``--resume LOG...`` leaves out the problems those logs report 'ok' (the rest of a run its time limit cut).
``--one-cluster`` runs each variant on one head and one batch tile (one block, or one cluster), the launch
pinned to that grid: racecheck watches shared memory, which no two clusters share, so the hazards it can see
are all in one cluster, and a B=256 problem of 16 clusters runs 16 times faster under it. (memcheck and
synccheck keep the whole grid: an index wrong only in a later tile or head is theirs to find.) ``--cuda-forward``
runs a backward problem's forward through the ``cuda`` backend: under racecheck the fused forward of a 16-block
cluster is most of such a problem's time, and the forward variants' own problems check it.
Problems run single-block forwards first, so that a ``--budget-s`` cut (default 180 s) leaves out the rarer
variants, and says so. Exit 0 when every problem that ran gave finite results, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a source checkout
from bench.shard import parse_shard, take_shard  # noqa: E402
from flashrnn_core.compile import label_matches, read_labels  # noqa: E402

T = 5


@dataclass(frozen=True)
class Problem:
    function: str
    dtype: Any  # numpy dtype
    B: int
    N: int
    D: int
    label: str  # the kernel variant's label
    params: Any = None  # the solver's choice that launches the variant (constrint.FusedParams), run pinned
    backward: bool = False  # run backward too (a backward variant)

    @property
    def save(self) -> bool:
        """False for the inference kernel (FLASHRNN_SAVE=0): its forward saves nothing."""
        return self.params is None or self.params.direction != "inference"


def variant_fields(spec: Any) -> dict[str, str]:
    return dict(spec.defines)


def load_fused() -> Any:
    """The fused backend module, or None with the reason printed (then there is nothing to sanitize)."""
    try:
        from flashrnn_core.backends import fused
    except ImportError as err:
        print(f"cuda_fused is not available here ({err}): nothing to sanitize")
        return None
    return fused


#: Defines that follow from D (sizes), not what makes a family of kernels.
SIZE_DEFINES = ("FLASHRNN_D", "FLASHRNN_THREADS", "FLASHRNN_SMEM_BYTES", "FLASHRNN_PREFETCH")


def pick_families(variants: list[Any], everything: bool) -> list[Any]:
    """All variants, or per family (entry, cell, storage, cluster, split-K, batch tile: every define but the
    sizes) the smallest and largest D and D=48."""
    if everything:
        return variants
    families: dict[tuple, list[Any]] = {}
    for spec in variants:
        key = (spec.entry, *sorted((k, v) for k, v in spec.defines if k not in SIZE_DEFINES))
        families.setdefault(key, []).append(spec)
    chosen = []
    for specs in families.values():
        dims = sorted(int(variant_fields(s)["FLASHRNN_D"]) for s in specs)
        keep = {dims[0], dims[-1]} | ({48} & set(dims))
        chosen += [s for s in specs if int(variant_fields(s)["FLASHRNN_D"]) in keep]
    return chosen


def find_problem(fused: Any, spec: Any, hardware: Any) -> Problem | str:
    """The first problem of the variant grid for which the solver picks ``spec`` (a forward or a backward
    kernel) on ``hardware`` (``constrint.Hardware``), or why there is none."""
    import itertools

    f = variant_fields(spec)
    try:
        function = {v: k for k, v in fused.CELL_STRUCTS.items()}[f["FLASHRNN_CELL"]]
        dtype = {v: k for k, v in fused.STORAGE_TYPES.items()}[f["FLASHRNN_STORAGE"]]
        D = int(f["FLASHRNN_D"])
    except KeyError as err:
        return f"{spec.name()}: its defines do not say {err} (cell, storage, D): not mapped to a problem"
    direction = ("backward" if spec.entry == fused.BW_ENTRY else
                 "inference" if ("FLASHRNN_SAVE", "0") in spec.defines else "forward")
    # This GPU's choices first; then those of the presets the variants were listed on that this GPU can run
    # (an sm_80 variant the solver picks only for an A100, or one it picks for an H100 and not an H200, still
    # runs here, pinned).
    presets = [hardware] + [hw for hw in fused.VARIANT_HARDWARE if hw.sm <= hardware.sm and hw != hardware]
    reason = f"the solver does not pick it on {', '.join(hw.name for hw in presets)}"
    for hw, n, B in itertools.product(presets, fused.VARIANT_HEADS, fused.VARIANT_BATCHES):
        launch = fused.choose(function, dtype, B, n, D, hardware=hw, direction=direction)
        if isinstance(launch, str):
            if hw is hardware:
                reason = launch  # e.g. a cluster variant on a GPU older than sm_90
            continue
        if launch.spec.entry == spec.entry and launch.spec.defines == spec.defines:
            return Problem(function, dtype, B, n, D, spec.name(), launch.choice, direction == "backward")
    return f"{spec.name()}: {reason}"


def one_cluster(fused: Any, problem: Problem) -> Problem:
    """``problem`` on one head and one batch tile: the same kernel variant (checked), pinned to the grid of one
    block or cluster (``FusedParams.grid`` is what the launch uses; the kernel takes B and N as arguments)."""
    from dataclasses import replace

    choice, B = problem.params, min(problem.B, problem.params.batch_tile)
    small = replace(choice, B=B, N=1, batch_tiles=1, grid=(choice.blocks_per_head, 1), waves=1)
    assert fused.launch_of(small).spec == fused.launch_of(choice).spec, problem.label
    return replace(problem, B=B, N=1, params=small)


def run_order(problem: Problem) -> tuple:
    """Single-block forwards with narrow tiles first, then backward, clusters, wide tiles (each the rarer)."""
    wide = "nbt1" not in problem.label
    cluster = "cluster" in problem.label
    return (wide, cluster, problem.backward)


def random_inputs(problem: Problem, seed: int) -> dict[str, Any]:
    """Wx, R (1/sqrt(D)), b, initial states and upstream gradients on CuPy, in the problem's dtype."""
    import cupy

    from flashrnn_core.cells import CELLS

    cell = CELLS[problem.function]
    rng = np.random.default_rng(seed)
    D, N = problem.D, problem.N

    def normal(*shape: int, scale: float = 1.0) -> Any:
        return cupy.asarray((rng.standard_normal(shape, dtype=np.float32) * scale).astype(problem.dtype))

    states0 = rng.standard_normal((cell.states, problem.B, 1, N, D)).astype(np.float32) * 0.5
    if problem.function == "slstm":
        states0[2] = 1 + np.abs(states0[2])  # a normaliser n >= 1, as the recurrence keeps it
    return {"Wx": normal(problem.B, T, cell.gates_w, N, D), "R": normal(cell.gates_r, N, D, D, scale=D**-0.5),
            "b": normal(cell.gates_b, N, D), "states0": cupy.asarray(states0.astype(problem.dtype)),
            "dstates": normal(cell.states, problem.B, T, N, D)}


def run_problem(problem: Problem, seed: int, cuda_forward: bool = False) -> str | None:
    """None when the problem ran with finite results, else the failure. Forward problems run from given initial
    states and from none; backward problems from given states, with gradients on all states and the last (after
    the `cuda` backend's forward where ``cuda_forward``)."""
    import cupy

    from flashrnn_core.backends import get_backend, why_not
    from flashrnn_core.tune import pinned
    from flashrnn_core.validate import validate

    backend = pinned(problem.params)  # exactly the variant, whatever a tuning cache on this machine says
    a = random_inputs(problem, seed)
    runs = [(a["states0"], None), (a["states0"], variable_lengths(problem.B))]
    if not problem.backward:
        runs.append((None, None))
    for states0, lengths in runs:
        checked = validate(a["Wx"], a["R"], a["b"], states0, function=problem.function, backend="cuda_fused",
                           lengths=lengths)
        # A backward variant whose head the fused forward cannot take (float32 D=256 gru, ...) runs after the
        # `cuda` forward: the saved tensors are the same contract.
        fused_forward = why_not("cuda_fused", checked) is None and not (cuda_forward and problem.backward)
        forward = backend if fused_forward else get_backend("cuda")
        states, saved = forward.forward(checked, a["Wx"], a["R"], a["b"], states0, save=problem.save)
        if not _finite(states):
            return "forward gave non-finite states"
        if problem.backward:
            grads = backend.backward(checked, a["Wx"], a["R"], a["b"], states0, states, saved, a["dstates"],
                                     a["dstates"][:, :, -1:])
            if not all(_finite(g) for g in (grads.dWx, grads.dR, grads.db, grads.dstates_initial)):
                return "backward gave non-finite gradients"
        cupy.cuda.Device().synchronize()
    return None


def variable_lengths(B: int) -> np.ndarray:
    """Lengths 1..T that end some sequences early (the kernels' lengths paths), never all T."""
    return np.array([T if i % 3 == 0 else 1 + i % (T - 1) for i in range(max(B, 2))][:B] if B > 1 else [T - 1])


def _finite(a: Any) -> bool:
    import cupy

    return bool(cupy.isfinite(a.astype(np.float32)).all())


def device_info() -> Any:
    """The current GPU as a ``constrint.Hardware``, or None without one."""
    try:
        from flashrnn_core.constrint.hardware import current

        return current()
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="every variant, not one per family")
    p.add_argument("--only", choices=("forward", "backward"), default=None, help="one direction's variants")
    p.add_argument("--list", action="store_true", help="print the problems only (no GPU needed)")
    p.add_argument("--shard", default=None, metavar="K/M", help="every M-th problem from the K-th")
    p.add_argument("--start", type=int, default=0,
                   help="skip the first START problems of the run order (resume a run cut by its time limit)")
    p.add_argument("--resume", nargs="+", default=(), metavar="LOG",
                   help="skip the problems these logs (of this script, under a sanitizer or not) say ran 'ok': "
                        "the rest of a sharded run that its time limit cut")
    p.add_argument("--match", default="", help="only variants whose label contains every comma-separated word and none "
                                               "written ~word, e.g. 'fw,cluster' or 'fw,~cluster' (a fix to one "
                                               "family, checked first)")
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="only the variants whose label is a line of FILE, every one of them (the kernels a change "
                        "added, a label a line as `python -m flashrnn_core.compile` prints them)")
    p.add_argument("--one-cluster", action="store_true",
                   help="each variant on one head and one batch tile (racecheck: the hazards of one cluster)")
    p.add_argument("--cuda-forward", action="store_true",
                   help="a backward problem's forward through the `cuda` backend (the saved tensors are one contract): "
                        "under racecheck a 16-block cluster's fused forward is most of a backward problem's time, "
                        "and the forward variants' own problems check it")
    p.add_argument("--sms", type=int, default=132, help="with --list and no GPU: multiprocessors (H100: 132)")
    p.add_argument("--cc", default="9.0", help="with --list and no GPU: compute capability")
    p.add_argument("--budget-s", type=float, default=180.0,
                   help="start no problem after this many seconds (first-time compiles count)")
    args = p.parse_args(argv)
    fused = load_fused()
    if fused is None:
        return 0
    info = device_info()
    if info is None and not args.list:
        print("no GPU visible to CuPy: nothing can run (use --list to see the problems)")
        return 2
    if info is None:
        from flashrnn_core.constrint.hardware import preset_for_cc

        info = preset_for_cc(tuple(int(x) for x in args.cc.split("."))).with_(sm_count=args.sms)
    variants = list(fused.solver_variants())
    if args.labels:
        wanted = read_labels(args.labels)
        variants = [s for s in variants if s.label in wanted]
    # --match before the solves that find each family's problem (they are most of a short run's time; select()
    # applies it again to the problems, whose labels are their variants').
    variants = [s for s in variants if label_matches(s.label, args.match)]
    found = [find_problem(fused, s, info) for s in pick_families(variants, args.all or bool(args.labels))]
    problems = sorted((x for x in found if isinstance(x, Problem)), key=run_order)
    if args.only:  # one direction's kernels (a sanitizer run on the kernel just changed)
        problems = [x for x in problems if x.backward == (args.only == "backward")]
    problems = select(problems, args.match, ran_ok(args.resume), args.start, args.shard)
    if args.one_cluster:
        problems = [one_cluster(fused, x) for x in problems]
    for skipped in (x for x in found if isinstance(x, str)):
        print(f"skip {skipped}")
    n_bw = sum(p.backward for p in problems)
    print(f"{len(problems)} problems ({len(problems) - n_bw} forward, {n_bw} backward) of {len(variants)} "
          f"variants; T={T}, {info.name} ({info.sm_count} SMs, {info.arch})", flush=True)
    if args.list:
        for problem in problems:
            print(f"{problem.label}: B={problem.B} N={problem.N} D={problem.D}"
                  f"{' (forward + backward)' if problem.backward else ''}")
        return 0
    return run_all(problems, args.budget_s, args.cuda_forward)


def select(problems: list[Problem], match: str, done: set[str], start: int, shard: str | None) -> list[Problem]:
    """The problems to run, in order: those whose label ``match`` takes (``label_matches``), less those
    ``done`` (labels), from the ``start``-th, and of those the ``shard`` ("K/M") when one is given."""
    kept = [x for x in problems if label_matches(x.label, match) and x.label not in done]
    return take_shard(kept[start:], parse_shard(shard))


#: One problem's line in this script's output: "<variant label> (B=<batch>): ok".
_OK_LINE = re.compile(r"^(?P<label>.+) \(B=\d+\): ok$")


def ran_ok(logs: Iterable[str | Path]) -> set[str]:
    """The labels of the variants whose problem the logs (this script's output) report 'ok'."""
    done = set()
    for log in logs:
        for line in Path(log).read_text().splitlines():
            match = _OK_LINE.match(line.strip())
            if match:
                done.add(match.group("label"))
    return done


def run_all(problems: list[Problem], budget_s: float, cuda_forward: bool = False) -> int:
    """Run each problem (until the budget is spent); print one line each and a summary; the exit status."""
    start, failures, ran = time.perf_counter(), 0, 0
    for i, problem in enumerate(problems):
        if time.perf_counter() - start > budget_s:
            print(f"NOT RUN (time budget {budget_s:.0f} s spent): {len(problems) - i} problems, from "
                  f"{problem.label} on")
            break
        try:
            failure = run_problem(problem, seed=i, cuda_forward=cuda_forward)
        except Exception as err:  # keep going: one report for the whole set
            failure = f"{type(err).__name__}: {err}"
        ran += 1
        failures += failure is not None
        print(f"{problem.label} (B={problem.B}): {failure or 'ok'}", flush=True)
    print(f"{ran - failures} ok, {failures} failed, {len(problems) - ran} not run, "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
