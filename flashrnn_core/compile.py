"""Precompile every kernel variant and check its resources: ``python -m flashrnn_core.compile``.

    python -m flashrnn_core.compile --arch sm_80,sm_90 [--check] [--jobs N]
    python -m flashrnn_core.compile --arch sm_90 --list > labels.txt   # the variants' labels, nothing compiled

Compiles, into the kernel cache, every variant any backend can launch (``backends.all_kernel_variants()``)
for each architecture; no GPU is needed. With ``--check`` it fails (exit 1) on any spill, more than 255
registers a thread, or more shared memory a block (ptxas's static amount plus the dynamic amount the variant
launches with) than the architecture allows after opting in; it always prints a table of what ptxas reported.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

from .runtime import KernelSpec, Resources, compile_spec
from .runtime.compile import sm_number, target_arch

#: Shared memory one block may use after opting in, bytes (CUDA C++ Programming Guide, "Technical
#: Specifications per Compute Capability": sharedMemPerBlockOptin).
SMEM_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024,
                  100: 227 * 1024, 103: 227 * 1024, 120: 99 * 1024}
MAX_REGISTERS = 255


class Outcome(NamedTuple):
    """One compile: the variant, the architecture compiled for, ptxas's report, whether it was cached, and the
    error text when it did not compile."""

    spec: KernelSpec
    arch: str
    resources: Resources | None
    cached: bool
    error: str | None


def smem_limit(arch: str) -> int:
    """Opt-in shared memory per block of ``arch`` (48 KB, the portable amount, for one not in the table)."""
    return SMEM_PER_BLOCK.get(sm_number(arch), 48 * 1024)


def problems(spec: KernelSpec, arch: str, resources: Resources | None) -> list[str]:
    """Why this variant cannot launch on ``arch`` or should not ship (empty when it is fine)."""
    if resources is None:
        return ["no ptxas report in the compile log"]
    found = []
    if resources.spill_stores or resources.spill_loads:
        found.append(f"spills {resources.spill_stores} B stored / {resources.spill_loads} B loaded")
    if resources.registers > MAX_REGISTERS:
        found.append(f"{resources.registers} registers > {MAX_REGISTERS}")
    smem, limit = resources.smem_static + spec.smem_dynamic, smem_limit(arch)
    if smem > limit:
        found.append(f"shared memory {smem} B > {limit} B")
    return found


def all_variants(processes: int = 1) -> tuple[list[KernelSpec], str | None]:
    """Every variant the package can launch, and why the list is empty when there is no registry yet; the fused
    backend's list solved in ``processes`` processes where it is not on disk yet."""
    try:
        from .backends import all_kernel_variants
        from .backends.fused import store_solver_variants
    except ImportError as err:  # no backend registry in this version of the package
        return [], f"no kernel-variant registry ({err})"
    store_solver_variants(processes)
    return list(all_kernel_variants()), None


def compile_one(job: tuple[KernelSpec, str]) -> Outcome:
    """Compile one (variant, arch) into the cache; an error is reported, not raised, so every failure shows."""
    spec, arch = job
    try:
        result = compile_spec(spec, arch)
        return Outcome(spec, target_arch(spec, arch), result.resources, result.cached, None)
    except Exception as err:
        first = (str(err).splitlines() or [""])[0]
        return Outcome(spec, arch, None, False, f"{type(err).__name__}: {first[:200]}")


def run_jobs(jobs: list[tuple[KernelSpec, str]], processes: int) -> list[Outcome]:
    """Compile ``jobs`` in ``processes`` worker processes (in this one for 1). Workers are spawned, not
    forked: a fork of a process that has touched CUDA is not safe."""
    if processes <= 1 or len(jobs) <= 1:
        return [compile_one(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        return list(pool.map(compile_one, jobs, chunksize=max(1, len(jobs) // (8 * processes))))


def table(outcomes: Iterable[Outcome], check: bool) -> tuple[list[str], int]:
    """The report's lines (kernel, arch, registers, shared memory, spills, stack, status) and the failures."""
    lines = [f"{'kernel':56s} {'arch':7s} {'regs':>4s} {'smem B':>7s} {'spill B':>7s} {'stack':>5s}  status"]
    failures = 0
    for o in sorted(outcomes, key=lambda o: (o.spec.name(), o.arch)):
        found = [o.error] if o.error else (problems(o.spec, o.arch, o.resources) if check else [])
        failures += bool(found)
        r = o.resources
        if r is not None:
            numbers = (f"{r.registers:4d} {r.smem_static + o.spec.smem_dynamic:7d} "
                       f"{r.spill_stores + r.spill_loads:7d} {r.stack:5d}")
        else:
            numbers = f"{'-':>4s} {'-':>7s} {'-':>7s} {'-':>5s}"
        status = "; ".join(found) if found else ("ok (cached)" if o.cached else "ok")
        lines.append(f"{o.spec.name()[:56]:56s} {o.arch:7s} {numbers}  {status}")
    return lines, failures


def label_matches(label: str, match: str) -> bool:
    """Whether a variant's ``label`` has every comma-separated word of ``match`` and none of its "~word"s
    ("fw,~cluster": the one-block forward variants). An empty ``match`` takes every label."""
    words = [w for w in match.split(",") if w]
    return all((w[1:] not in label) if w.startswith("~") else (w in label) for w in words)


def read_labels(path: str) -> set[str]:
    """The variant labels listed in a file, one a line as this command prints them (the kernels a change added)."""
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def main(argv: list[str] | None = None) -> int:
    """The command; returns the exit status (0 all compiled and, with --check, within limits; 1 otherwise)."""
    parser = argparse.ArgumentParser(prog="python -m flashrnn_core.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="comma-separated architectures, e.g. sm_80,sm_90")
    parser.add_argument("--check", action="store_true", help="fail on spills, > 255 registers or too much smem")
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes (default 2)")
    parser.add_argument("--match", default="", help="only variants whose label contains every comma-separated "
                        "word and none of those written ~word, e.g. 'slstm,bfloat16,~cluster' (while iterating "
                        "on one kernel)")
    parser.add_argument("--labels", metavar="FILE", default=None,
                        help="only the variants whose label is a line of FILE (the kernels a change added)")
    parser.add_argument("--list", action="store_true",
                        help="print the labels of the variants built for these architectures, one a line, and "
                             "compile nothing (the list of two commits, compared, is what a change added)")
    args = parser.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    try:
        for arch in archs:
            sm_number(arch)
    except ValueError as err:
        parser.error(f"--{err}")

    try:
        variants, why_none = all_variants(args.jobs)
    except Exception as err:  # a backend that cannot list its kernels is a failure, not "nothing to do"
        print(f"cannot list the kernel variants: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    variants = [spec for spec in variants if label_matches(spec.label, args.match)]
    if args.labels:
        wanted = read_labels(args.labels)
        variants = [spec for spec in variants if spec.label in wanted]
    jobs = [(spec, arch) for arch in archs for spec in variants if sm_number(arch) >= spec.min_sm]
    if args.list:
        print("\n".join(sorted({spec.label for spec, _ in jobs})))
        return 0
    print(f"{len(variants)} kernel variants, {len(jobs)} compiles for {', '.join(archs)}"
          + (f": {why_none}" if why_none else ""), flush=True)
    start = time.perf_counter()
    outcomes = run_jobs(jobs, args.jobs)
    lines, failures = table(outcomes, args.check)
    if outcomes:
        print("\n".join(lines))
    cached = sum(o.cached for o in outcomes)
    compiled = sum(not o.cached and o.error is None for o in outcomes)
    print(f"{len(outcomes) - failures} ok, {failures} failed; {compiled} compiled, {cached} from the cache, "
          f"{time.perf_counter() - start:.1f} s with {max(1, args.jobs)} processes")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
