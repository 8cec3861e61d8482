"""One suite split over several processes, one a GPU (``bench/device_check.sh`` on a multi-GPU machine).

Shard ``K/M`` takes items K, K+M, K+2M, ... of the suite's list: every shard gets a mix of small and large
shapes, so M shards finish at about the same time. ``merge`` puts the shards' result files back into the one
document of the run, rows in the order a single process would have written them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence, TypeVar

Item = TypeVar("Item")

#: The fields of a row that name its problem: a shard's rows for one problem are contiguous.
SHAPE_FIELDS = ("function", "dtype", "B", "T", "N", "D")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/M"`` -> (K, M) with 0 <= K < M; None for None or "" (no sharding)."""
    if not text:
        return None
    try:
        k, m = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected K/M (e.g. 0/2), got {text!r}") from None
    if not 0 <= k < m:
        raise ValueError(f"--shard: expected 0 <= K < M, got {text!r}")
    return k, m


def take_shard(items: Sequence[Item], shard: tuple[int, int] | None) -> list[Item]:
    """The shard's items (every item without a shard)."""
    if shard is None:
        return list(items)
    k, m = shard
    return list(items[k::m])


def shard_path(out: Path, shard: tuple[int, int] | None) -> Path:
    """``x.json`` -> ``x-shard0of2.json`` for shard 0/2; ``out`` itself without a shard."""
    if shard is None:
        return out
    return out.with_name(f"{out.stem}-shard{shard[0]}of{shard[1]}{out.suffix}")


def _problem_groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A shard's rows cut into one list per problem, in order."""
    groups: list[list[dict[str, Any]]] = []
    last = None
    for row in rows:
        key = tuple(row.get(f) for f in SHAPE_FIELDS)
        if key != last:
            groups.append([])
            last = key
        groups[-1].append(row)
    return groups


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's document from all M shard documents of it (any order). Rows interleave back: problem i is
    problem i // M of shard i % M. The header is shard 0's with the earliest date and no ``shard`` field.
    Raises unless the documents are the M shards of one suite at one commit on one GPU."""
    by_index = {}
    for doc in docs:
        k, m = parse_shard(doc.get("shard")) or (-1, 0)  # not a shard: fails the check below
        by_index[k] = (m, doc)
    counts = {m for m, _ in by_index.values()}
    if len(counts) != 1 or sorted(by_index) != list(range(counts.pop())) or len(by_index) != len(docs):
        raise ValueError(f"merge: expected shards 0..M-1 of one run, got {sorted(d.get('shard') for d in docs)}")
    for field in ("suite", "commit", "gpu"):
        values = {str(doc.get(field)) for doc in docs}
        if len(values) != 1:
            raise ValueError(f"merge: the shards differ in {field}: {sorted(values)}")
    shards = [_problem_groups(by_index[k][1]["rows"]) for k in range(len(by_index))]
    rows: list[dict[str, Any]] = []
    for i in range(max(len(groups) for groups in shards)):
        for groups in shards:
            rows += groups[i] if i < len(groups) else []
    header = {k: v for k, v in by_index[0][1].items() if k not in ("rows", "shard")}
    header["date"] = min(doc["date"] for doc in docs)
    header["shards"] = len(docs)
    return {**header, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.shard OUT SHARD.json...``: merge shard files into OUT and remove them."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.shard", description=main.__doc__)
    p.add_argument("out")
    p.add_argument("shards", nargs="+")
    p.add_argument("--keep", action="store_true", help="keep the shard files")
    args = p.parse_args(argv)
    doc = merge([json.loads(Path(s).read_text()) for s in args.shards])
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    if not args.keep:
        for s in args.shards:
            Path(s).unlink()
    print(f"wrote {args.out}: {len(doc['rows'])} rows from {len(args.shards)} shards")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
