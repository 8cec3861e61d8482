"""Precompile every kernel variant and check its resources: ``python -m flashrnn_core.compile``.

    python -m flashrnn_core.compile --arch sm_80,sm_90 [--check] [--jobs 2]

Compiles (into the cache) every variant any backend can launch, for each architecture; no GPU is needed. With
``--check`` it fails (exit 1) on any spill, more than 255 registers a thread, or more shared memory (static plus
the dynamic amount the variant launches with) than the architecture allows a block, and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor

from .runtime import KernelSpec, compile_spec

#: Shared memory one block may use after opting in, bytes (CUDA C++ Programming Guide, compute capabilities).
SMEM_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}
MAX_REGISTERS = 255


def sm_number(arch: str) -> int:
    """``sm_90a`` -> 90."""
    digits = "".join(ch for ch in arch.removeprefix("sm_").removeprefix("compute_") if ch.isdigit())
    if not digits:
        raise ValueError(f"--arch: expected names like sm_80 or sm_90a, got {arch!r}")
    return int(digits)


def problems(spec: KernelSpec, arch: str, resources) -> list[str]:
    """What makes this variant unlaunchable or slow on ``arch`` (empty when it is fine)."""
    if resources is None:
        return ["no ptxas report"]
    found = []
    if resources.spill_stores or resources.spill_loads:
        found.append(f"spills {resources.spill_stores}/{resources.spill_loads} bytes")
    if resources.registers > MAX_REGISTERS:
        found.append(f"{resources.registers} registers > {MAX_REGISTERS}")
    smem = resources.smem_static + spec.smem_dynamic
    limit = SMEM_PER_BLOCK.get(sm_number(arch), 48 * 1024)
    if smem > limit:
        found.append(f"shared memory {smem} > {limit}")
    return found


def _compile_one(job: tuple[KernelSpec, str]):
    spec, arch = job
    try:
        result = compile_spec(spec, arch)
        return spec, arch, result.resources, result.cached, None
    except Exception as err:  # report every failure, not only the first
        return spec, arch, None, False, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def all_variants() -> list[KernelSpec]:
    from .backends import all_kernel_variants

    return all_kernel_variants()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashrnn_core.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="comma-separated, e.g. sm_80,sm_90")
    parser.add_argument("--check", action="store_true", help="fail on spills, registers or shared memory")
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes (default 2)")
    args = parser.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    for arch in archs:
        sm_number(arch)

    variants = all_variants()
    jobs = [(spec, arch) for arch in archs for spec in variants if sm_number(arch) >= spec.min_sm]
    print(f"{len(variants)} kernel variants, {len(jobs)} compiles for {', '.join(archs)}", flush=True)
    if not jobs:
        print("nothing to compile: no backend declares a kernel variant")
        return 1 if args.check else 0
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(_compile_one, jobs, chunksize=4))

    failures = 0
    print(f"{'kernel':64s} {'arch':6s} {'regs':>4s} {'smem':>7s} {'spill':>7s} {'stack':>5s}  status")
    for spec, arch, res, cached, error in sorted(results, key=lambda r: (r[0].name(), r[1])):
        found = [error] if error else (problems(spec, arch, res) if args.check else [])
        failures += bool(found)
        if res is not None:
            smem = res.smem_static + spec.smem_dynamic
            row = f"{res.registers:4d} {smem:7d} {res.spill_stores + res.spill_loads:7d} {res.stack:5d}"
        else:
            row = f"{'-':>4s} {'-':>7s} {'-':>7s} {'-':>5s}"
        status = "; ".join(found) if found else ("ok (cached)" if cached else "ok")
        print(f"{spec.name()[:64]:64s} {arch:6s} {row}  {status}")
    print(f"{len(results) - failures} ok, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
