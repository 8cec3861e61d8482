"""The tuning cache: solved (and measured) fused-kernel parameters on disk, one JSON file per key.

Where: ``$FLASHRNN_CORE_CACHE/tuning/`` else ``~/.cache/flashrnn_core/<version>/tuning/`` — beside the kernel
(module) cache, so one directory holds everything a version derived for a machine, and an upgrade starts
fresh (the version is in the default path; the model version is in every key, so a changed latency model or
kernel never reads an old choice either).

Key: GPU name, compute capability, SM count (a MIG slice or a partitioned GPU is a different machine), cell,
dtype, direction, B, N, D. The file holds the solver's choice (``source: "solver"``) or a measured one
(``source: "measured"``, written by ``store(..., measured_us=...)``, e.g. by a tuning sweep); a measured entry
is never overwritten by a solver entry. Writes are atomic (a temporary file in the same directory, then
``os.replace``), so concurrent processes never read half an entry; an unreadable entry is a miss.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .hardware import Hardware
from .problems import MODEL_VERSION, FusedParams, Infeasible, _dtype_name, solve_fused

TUNING_DIR = "tuning"


def cache_root() -> Path:
    """``<runtime cache directory>/tuning`` (``runtime.env.cache_dir``: ``$FLASHRNN_CORE_CACHE`` or
    ``~/.cache/flashrnn_core/<version>``); not created here."""
    from ..runtime.env import cache_dir

    return cache_dir() / TUNING_DIR


def key(hardware: Hardware, function: str, dtype, B: int, N: int, D: int, direction: str = "forward") -> dict:
    """The cache key as a dict (stored inside the entry too, so a file can be checked against its name)."""
    return {"gpu": hardware.name, "cc": f"{hardware.cc[0]}.{hardware.cc[1]}", "sms": hardware.sm_count,
            "cell": function, "dtype": _dtype_name(dtype), "direction": direction,
            "B": int(B), "N": int(N), "D": int(D), "model": MODEL_VERSION}


def path_for(k: dict) -> Path:
    """``<cache>/tuning/<readable prefix>-<digest>.json``."""
    digest = hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:16]
    gpu = "".join(ch if ch.isalnum() else "_" for ch in k["gpu"])[:40]
    name = f"{gpu}-sm{k['cc'].replace('.', '')}-{k['cell']}-{k['dtype']}-{k['direction']}-B{k['B']}-N{k['N']}-D{k['D']}"
    return cache_root() / f"{name}-{digest}.json"


#: path -> ((mtime_ns, size), parsed entry): every launch of the fused backend asks ``choose``, so a file read
#: and a JSON parse per call would cost more than the kernel at small T; a stat (a few microseconds) tells
#: whether the file changed since (another process may have stored a measured entry).
_parsed: dict[Path, tuple[tuple[int, int], tuple[FusedParams, dict] | None]] = {}


def load(hardware: Hardware, function: str, dtype, B: int, N: int, D: int,
         direction: str = "forward") -> tuple[FusedParams, dict] | None:
    """The cached parameters and the entry's metadata, or None (missing, unreadable or another key)."""
    k = key(hardware, function, dtype, B, N, D, direction)
    path = path_for(k)
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    seen = _parsed.get(path)
    if seen is not None and seen[0] == stamp:
        return seen[1]
    try:
        entry = json.loads(path.read_text())
        found = None
        if entry.get("key") == k:
            found = (FusedParams.from_dict(entry["params"]),
                     {x: entry[x] for x in entry if x not in ("params", "key")})
    except (OSError, ValueError, KeyError, TypeError):
        found = None
    _parsed[path] = (stamp, found)
    return found


def store(hardware: Hardware, function: str, dtype, B: int, N: int, D: int, params: FusedParams,
          direction: str = "forward", measured_us: float | None = None, note: str = "") -> Path | None:
    """Write an entry atomically; returns its path, or None when the directory cannot be written (a cache is
    an optimisation: failing to write one is not an error). A solver entry never replaces a measured one."""
    k = key(hardware, function, dtype, B, N, D, direction)
    path = path_for(k)
    source = "measured" if measured_us is not None else "solver"
    if source == "solver":
        existing = load(hardware, function, dtype, B, N, D, direction)
        if existing is not None and existing[1].get("source") == "measured":
            return path
    entry: dict[str, Any] = {"key": k, "params": params.to_dict(), "source": source, "note": note}
    if measured_us is not None:
        entry["measured_us"] = float(measured_us)
    from ..runtime.env import atomic_write

    try:
        atomic_write(path, json.dumps(entry, indent=1, sort_keys=True))
    except OSError:
        return None
    return path


#: Solver results of this process, by (hardware, cell, dtype, B, N, D, direction): every launch of the fused
#: backend (and every ``auto`` resolution, for shapes it refuses) asks ``choose``; a solve takes ~20 ms, and an
#: infeasible shape or an unwritable cache directory would otherwise pay it on every call.
_solved: dict[tuple, FusedParams | Infeasible] = {}


def choose(hardware: Hardware, function: str, dtype, B: int, N: int, D: int, direction: str = "forward",
           use_cache: bool = True) -> FusedParams | Infeasible:
    """The cached choice for this key, else ``solve_fused``'s (stored when feasible). Infeasible results are
    not written to disk (the explanation stays current with the model), only remembered in this process."""
    if use_cache:
        hit = load(hardware, function, dtype, B, N, D, direction)
        if hit is not None:
            return hit[0]
    memo = (hardware, function, _dtype_name(dtype), int(B), int(N), int(D), direction)
    result = _solved.get(memo)
    if result is None:
        result = _solved[memo] = solve_fused(hardware, function, dtype, B, N, D, direction=direction)
    if use_cache and isinstance(result, FusedParams):
        store(hardware, function, dtype, B, N, D, result, direction)  # (again, if the file went missing)
    return result


def choose_for_device(function: str, dtype, B: int, N: int, D: int, direction: str = "forward",
                      device: int | None = None) -> FusedParams | Infeasible:
    """``choose`` on the current (or given) GPU, read through cuda.core once per process."""
    from .hardware import current

    return choose(current(device), function, dtype, B, N, D, direction)


def entries() -> list[dict]:
    """Every readable entry in the cache (for a report or a sweep)."""
    root = cache_root()
    found = []
    for p in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            found.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return found

