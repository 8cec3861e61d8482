"""The SASS of a fused kernel's step loop, without a GPU: the solver's kernel for one problem (on a preset GPU),
compiled by NVRTC, disassembled by nvdisasm, and the step loop's instructions counted by opcode. The step loop is
the largest loop whose body holds a block barrier (``--loop last``: the last one, where a cell's steady form runs
in a second copy of the loop, fused_fw.cu Tile::STEADY).

    python bench/sass_loop.py slstm backward 48 16                      # counts by opcode
    python bench/sass_loop.py slstm backward 48 16 --define FLASHRNN_LEAN_COPIES --dump   # a knob, every line

What it found: the backward's input copies at slstm 48x16 (stop 62, fused_bw.cu InPieces; 273 instructions a
step against lstm's 184, the difference integer work and branches) and the scatter kernel's partials
(bench/results/phases/2026-12-06-scatter-pairs.txt). Static counts: a branch skipped every step still counts, so
read the dump for the path a step takes.

nvdisasm: the toolkit's, or the ``nvidia-cuda-nvdisasm`` wheel's (``pip install nvidia-cuda-nvdisasm``: it reads
NVRTC 12.9's sm_80/sm_90 cubins), found by cuda.pathfinder.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.phase_clocks import parse_defines  # noqa: E402
from flashrnn_core import _arrays  # noqa: E402
from flashrnn_core.backends import fused  # noqa: E402
from flashrnn_core.constrint.hardware import preset  # noqa: E402
from flashrnn_core.runtime.compile import compile_spec  # noqa: E402

_LABEL = re.compile(r"^\s*\.(L_x_\d+):")
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
_BACK_TARGET = re.compile(r"BRA\s+.*`\(\.(L_x_\d+)\)")
_GUARD = re.compile(r"^@!?U?P\w+\s+")
_BARRIERS = ("BAR.SYNC", "BAR.RED", "BAR.ARV")


@dataclass(frozen=True)
class Loop:
    """Instructions [start, end] of a disassembly: a backward branch at ``end`` to a label at ``start``."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start + 1


def instructions(sass: str) -> tuple[list[str], dict[str, int]]:
    """nvdisasm's text -> (instructions in order, without their addresses; label -> index of the next one)."""
    listed: list[str] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(listed)
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction:
            listed.append(instruction.group(1))
    return listed, labels


def barrier_loops(listed: list[str], labels: dict[str, int]) -> list[Loop]:
    """The loops whose body holds a block barrier, in program order; loops that overlap are one (ptxas may rotate
    a step loop so that its back edge enters mid-body: lstm 12x64's backward has two back edges, to 763 and 811,
    of one loop 763-1177)."""
    loops: list[Loop] = []
    for end, instruction in enumerate(listed):
        target = _BACK_TARGET.search(instruction)
        start = labels.get(target.group(1), end + 1) if target else end + 1
        if start <= end and any(b in x for x in listed[start:end + 1] for b in _BARRIERS):
            if loops and start <= loops[-1].end:
                start = min(start, loops[-1].start)
                loops.pop()
            loops.append(Loop(start, end))
    return loops


def opcode(instruction: str) -> str:
    """``@!P0 IMAD.MOV.U32 R1, ...`` -> ``IMAD``."""
    return _GUARD.sub("", instruction).split()[0].split(".")[0]


def step_loop(sass: str, last: bool = False) -> list[str]:
    """The step loop's instructions: the largest barrier loop, or (``last``) the last one; [] where there is none."""
    listed, labels = instructions(sass)
    loops = barrier_loops(listed, labels)
    if not loops:
        return []
    loop = loops[-1] if last else max(loops, key=len)
    return listed[loop.start:loop.end + 1]


def nvdisasm() -> str:
    """The nvdisasm binary's path; SystemExit saying how to get one where there is none."""
    from cuda.pathfinder import find_nvidia_binary_utility

    path = find_nvidia_binary_utility("nvdisasm")
    if path is None:
        raise SystemExit("nvdisasm not found: install the CUDA toolkit's, or `pip install nvidia-cuda-nvdisasm`")
    return path


def disassemble(cubin: bytes) -> str:
    """nvdisasm's text of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm(), "-c", f.name], capture_output=True, text=True, check=True).stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cell", choices=("elman", "gru", "lstm", "slstm"))
    p.add_argument("direction", choices=("forward", "inference", "backward"))
    p.add_argument("N", type=int, help="heads")
    p.add_argument("D", type=int, help="head dimension")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--gpu", default="H100", help="the preset the solver chooses for (constrint.hardware.preset)")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--define", action="append", default=[], metavar="NAME[=VALUE][,...]",
                   help="-D defines added to the kernel's (measurement knobs), as in phase_clocks.py's variants")
    p.add_argument("--loop", choices=("largest", "last"), default="largest")
    p.add_argument("--dump", action="store_true", help="print the loop's instructions too")
    args = p.parse_args(argv)
    launch = fused.choose(args.cell, _arrays.dtype_named(args.dtype), args.batch, args.N, args.D,
                          hardware=preset(args.gpu), direction=args.direction)
    if isinstance(launch, str):
        raise SystemExit(launch)
    extra = parse_defines(",".join(args.define))
    spec = replace(launch.spec, defines=launch.spec.defines + extra)
    result = compile_spec(spec, args.arch)
    body = step_loop(disassemble(result.cubin), last=args.loop == "last")
    counts = Counter(opcode(x) for x in body)
    knobs = "".join(f" {k}={v}" for k, v in extra)
    print(f"{spec.name()}{knobs} {args.arch}: {result.resources}")
    print(f"step loop: {len(body)} instructions: " + " ".join(f"{k} {v}" for k, v in counts.most_common()))
    if args.dump:
        print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
