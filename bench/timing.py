"""Timing and memory measurement, the one implementation of ../shared/BENCH.md's protocol.

- GPU (CuPy or torch): CUDA events (CuPy's through ``flashrnn_core.runtime.timing``, the one home of the
  event loop and the spin kernel) recorded on the current stream of the library that runs the call (CuPy's
  for flashrnn_core, torch's for the baselines); both default to the legacy null stream, so a CuPy spin
  kernel and a torch call order correctly.
- Warm-up: at least 3 calls, never timed; the first call of a shape may compile, load or autotune.
- Before each timed call a spin kernel keeps the GPU busy for a few ms while the host enqueues the call, so the
  events time the device work, not the Python in front of it (a call whose host side takes longer than the
  spin, such as a per-step launch loop, still shows its host time).
- Median and p10/p90 of at least ``MIN_RUNS`` timed runs.
- Peak memory of one extra, untimed call: CuPy's pool (a memory hook adds up what the pool hands out and gets
  back during the call), ``torch.cuda.max_memory_allocated`` for torch, ``tracemalloc`` on the CPU (NumPy reports
  its buffers there). Arrays alive before the call (the inputs) are not counted; what the call returns is.
- CPU (``--dry-run``): ``time.perf_counter`` around the call; the same statistics.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from flashrnn_core.runtime.timing import SPIN_MS, event_times_ms

MIN_RUNS = 20
MIN_WARMUP = 3

#: Where a call runs and so how it is timed: "cpu" (perf_counter), "cupy" or "torch" (CUDA events).
DEVICES = ("cpu", "cupy", "torch")


@dataclass
class Timing:
    """Statistics of the timed runs of one call, in milliseconds, and the peak memory of one call in bytes."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    peak_mem_bytes: int

    def fields(self, prefix: str = "") -> dict[str, float | int]:
        """The row fields, ``median_ms`` ... or ``<prefix>_ms`` ... for a baseline."""
        if not prefix:
            return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                    "peak_mem_bytes": self.peak_mem_bytes, "runs": self.runs}
        return {f"{prefix}_ms": self.median_ms, f"{prefix}_p10_ms": self.p10_ms, f"{prefix}_p90_ms": self.p90_ms,
                f"{prefix}_peak_mem_bytes": self.peak_mem_bytes}


def statistics(times_ms: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90) of a list of times."""
    a = np.asarray(times_ms, dtype=np.float64)
    return float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90))


def measure(fn: Callable[[], Any], device: str, runs: int = MIN_RUNS, warmup: int = MIN_WARMUP,
            spin_ms: float = SPIN_MS, strict: bool = True) -> Timing:
    """Warm ``fn`` up, measure its peak memory once, then time ``runs`` calls.

    ``strict`` (every real measurement) raises runs and warm-up to the protocol's minimums; only the CPU dry
    run, which checks the pipeline and measures nothing, turns it off to finish in seconds.
    """
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    if strict:
        runs, warmup = max(runs, MIN_RUNS), max(warmup, MIN_WARMUP)
    runs, warmup = max(runs, 1), max(warmup, 1)  # the first call is never timed
    for _ in range(warmup):
        fn()
    _synchronize(device)
    peak = peak_memory(fn, device)
    times = _TIMERS[device](fn, runs, spin_ms)
    return Timing(*statistics(times), runs=runs, peak_mem_bytes=peak)


# ------------------------------------------------------------------------------------------------ timers


def _time_cpu(fn: Callable[[], Any], runs: int, spin_ms: float) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _time_cupy(fn: Callable[[], Any], runs: int, spin_ms: float) -> list[float]:
    return event_times_ms(fn, runs, spin_ms)


def _time_torch(fn: Callable[[], Any], runs: int, spin_ms: float) -> list[float]:
    """CuPy's events on torch's current stream (torch reports no clock rate for the spin, and one timer serves)."""
    import torch

    from flashrnn_core._arrays import cupy_stream

    stream = cupy_stream(torch.cuda.current_stream().cuda_stream, torch.cuda.current_device())
    return event_times_ms(fn, runs, spin_ms, stream)


_TIMERS = {"cpu": _time_cpu, "cupy": _time_cupy, "torch": _time_torch}


def _synchronize(device: str) -> None:
    if device == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()
    elif device == "torch":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ memory


def peak_memory(fn: Callable[[], Any], device: str) -> int:
    """Peak bytes allocated during one call of ``fn`` above what was allocated before it (returned arrays count)."""
    if device == "cupy":
        return _peak_cupy(fn)
    if device == "torch":
        return _peak_torch(fn)
    return _peak_cpu(fn)


def _peak_cpu(fn: Callable[[], Any]) -> int:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    del result
    if not was_tracing:
        tracemalloc.stop()
    return int(peak)


def _peak_torch(fn: Callable[[], Any]) -> int:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del result
    return int(peak)


def _peak_cupy(fn: Callable[[], Any]) -> int:
    import cupy

    hook = _pool_peak_hook()
    cupy.cuda.Device().synchronize()
    with hook:
        result = fn()
        cupy.cuda.Device().synchronize()
    del result
    return int(hook.peak)


def _pool_peak_hook() -> Any:
    """A CuPy memory hook that tracks the peak of bytes the pool has handed out since it was entered.

    Built on first use so that importing this module needs no CuPy. Allocations outside CuPy's pool (cuBLAS
    workspaces, a backend's own buffers kept from an earlier call) are not seen.
    """
    from cupy.cuda.memory_hook import MemoryHook

    class PoolPeak(MemoryHook):
        name = "bench_pool_peak"

        def __init__(self) -> None:
            self.current = 0
            self.peak = 0

        def malloc_postprocess(self, **kw: Any) -> None:
            if kw.get("mem_ptr"):
                self.current += kw["mem_size"]
                self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kw: Any) -> None:
            # Memory allocated before the hook was entered and freed during the call would go negative.
            self.current = max(0, self.current - kw["mem_size"])

    return PoolPeak()


class ProgressBar:
    """A one-line progress bar on stderr (no dependency), redrawn at most ten times a second."""

    def __init__(self, total: int, label: str = "", width: int = 28, stream: Any = None):
        import sys

        self.total, self.label, self.width = total, label, width
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.start, self.last = 0, time.perf_counter(), -1.0

    def advance(self, note: str = "", n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done < self.total and now - self.last < 0.1:
            return
        self.last = now
        filled = int(self.width * self.done / max(self.total, 1))
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        self.stream.write(f"\r{self.label}[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}"
                          f" {elapsed:5.0f}s eta {eta:4.0f}s {note[:48]:48s}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
