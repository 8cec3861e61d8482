"""CUDA-event timing of a GPU call on CuPy's current stream: the one implementation, used by
``python -m flashrnn_core.tune``, ``bench/sweep_fused.py`` and ``bench/timing.py`` (the benchmark protocol).

Before each timed call a spin kernel keeps the GPU busy for ``spin_ms`` while the host enqueues the call, so the
events time the device work, not the Python in front of it (a call whose host side takes longer than the spin
still shows its host time).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np

SPIN_MS = 3.0

_spin_kernel: Any = None


def spin(ms: float, stream: Any = None) -> None:
    """Keep the GPU busy for about ``ms`` (one thread spinning on ``clock64``) on ``stream``, CuPy's current one
    by default."""
    import cupy

    global _spin_kernel
    if _spin_kernel is None:
        _spin_kernel = cupy.RawKernel(
            'extern "C" __global__ void flashrnn_spin(long long n) {'
            " long long s = clock64(); while (clock64() - s < n) {} }", "flashrnn_spin")
    rate_khz = cupy.cuda.Device().attributes["ClockRate"]  # the maximum clock: the spin lasts at least ``ms``
    with stream if stream is not None else contextlib.nullcontext():  # RawKernel launches on the current stream
        _spin_kernel((1,), (1,), (np.int64(ms * rate_khz),))


def event_times_ms(fn: Callable[[], Any], runs: int, spin_ms: float = SPIN_MS, stream: Any = None) -> list[float]:
    """``runs`` timings of ``fn()`` in milliseconds, each between two CUDA events on ``stream`` (CuPy's current
    one by default; a CuPy view of another framework's stream times that framework's work), behind a spin of
    ``spin_ms`` (0 for none). No warm-up: the caller runs ``fn`` first (compiles, loads)."""
    import cupy

    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(runs):
        if spin_ms > 0:
            spin(spin_ms, stream)
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return times


def median_ms(fn: Callable[[], Any], runs: int = 20, warmup: int = 3, spin_ms: float = SPIN_MS) -> float:
    """The median of ``runs`` event timings after ``warmup`` untimed calls (at least one: the first call of a
    kernel may compile or load it)."""
    for _ in range(max(1, warmup)):
        fn()
    return float(np.median(event_times_ms(fn, max(1, runs), spin_ms)))
