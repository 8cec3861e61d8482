"""Summarise ncu's per-SASS-line CSV (``ncu -i rep --page source --csv --print-source sass``): per kernel, the
instruction mix per warp and the lines with the most stall samples.

    python bench/ncu_summary.py profile/source_sass.csv [--top 20]
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys


def kernels(path: str) -> dict[str, list[dict[str, str]]]:
    """kernel name -> rows of its SASS table."""
    out: dict[str, list[dict[str, str]]] = {}
    kernel, header = None, None
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "Kernel Name":
                kernel = row[1]
                out[kernel] = []
            elif row and row[0] == "Address":
                header = row
            elif kernel and header and len(row) == len(header):
                out[kernel].append(dict(zip(header, row)))
    return out


def opcode(sass: str) -> str:
    words = [w for w in sass.split() if not w.startswith("@")]
    return words[0].split(".")[0] if words else "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    for name, rows in kernels(args.csv).items():
        samples = lambda r: int(r.get("Warp Stall Sampling (All Samples)") or 0)  # noqa: E731
        executed = lambda r: int(r.get("Instructions Executed") or 0)  # noqa: E731
        total_s, total_i = sum(map(samples, rows)) or 1, sum(map(executed, rows))
        mix = collections.Counter()
        for r in rows:
            mix[opcode(r["Source"])] += executed(r)
        print(f"== {name}: {total_i} instructions executed, {total_s} stall samples")
        print("   mix (% of instructions): " + ", ".join(f"{op} {n / total_i * 100:.0f}" for op, n in mix.most_common(16)))
        for r in sorted(rows, key=samples, reverse=True)[: args.top]:
            print(f"   {samples(r) / total_s * 100:5.1f}%  {r['Address'][-5:]}  {r['Source'][:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
