"""Benchmark of the ``cuda`` backend (cuBLAS matmul + pointwise kernel per step) beside cuDNN in one process.

    python bench/bench_alternating.py --out bench/results/<date>-<gpu>-alternating.json [--runs 25]

bfloat16, B=16, T=1024, hidden 768 as 12x64 and 1x768; lstm and gru (and slstm, whose cuDNN row is nn.LSTM);
``fw`` (forward, all states) and ``fwbw`` (forward + backward with upstream gradients on all states).
Protocol (../shared/BENCH.md): CUDA events on the stream the call runs on, 3 warm-up calls excluded (the first
compiles, the second captures the CUDA graph), median and p10/p90 of the timed runs. The graph rows (and cuDNN)
start behind a short GPU spin so that the events time device work, not the Python in front of the call.
The ``graph: false`` rows are the same backend launching step by step from the host: they are timed WITHOUT
the spin, because there the host is the bottleneck and its time is the cost a caller sees.
Launches a step: the captured graph's nodes over T (what the host would launch a step without the graph).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flashrnn_core import _arrays  # noqa: E402
from flashrnn_core.backends.alternating import AlternatingBackend  # noqa: E402
from flashrnn_core.cells import CELLS  # noqa: E402
from flashrnn_core.validate import validate  # noqa: E402

B, T = 16, 1024
HEADS = [(12, 64), (1, 768)]
FUNCTIONS = ("lstm", "gru", "slstm")
SPIN_MS = 2.0
_spin_kernel = None


def spin(ms: float = SPIN_MS) -> None:
    """Keep the GPU busy for about ``ms`` so that the host has queued the timed call before it starts."""
    import cupy

    global _spin_kernel
    if _spin_kernel is None:
        _spin_kernel = cupy.RawKernel(
            'extern "C" __global__ void spin(long long n) { long long s = clock64(); while (clock64() - s < n) {} }',
            "spin")
    _spin_kernel((1,), (1,), (np.int64(ms * cupy.cuda.Device().attributes["ClockRate"]),))


def time_call(fn, runs: int, use_spin: bool = True, warmup: int = 3) -> tuple[float, float, float]:
    """(median, p10, p90) in ms of ``fn`` between CUDA events on the current stream."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(runs):
        if use_spin:
            spin()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return float(np.median(times)), float(np.percentile(times, 10)), float(np.percentile(times, 90))


def inputs(function: str, N: int, D: int, dtype=_arrays.bfloat16, seed: int = 0):
    import cupy

    cell = CELLS[function]
    rng = cupy.random.default_rng(seed)
    Wx = rng.standard_normal((B, T, cell.gates_w, N, D), dtype=np.float32).astype(dtype)
    R = (rng.standard_normal((cell.gates_r, N, D, D), dtype=np.float32) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal((cell.gates_b, N, D), dtype=np.float32).astype(dtype)
    dstates = rng.standard_normal((cell.states, B, T, N, D), dtype=np.float32).astype(dtype)
    return Wx, R, b, dstates


def time_ours(function: str, N: int, D: int, passes: str, graphs: bool, runs: int) -> dict:
    import cupy

    Wx, R, b, dstates = inputs(function, N, D)
    problem = validate(Wx, R, b, function=function, backend="cuda")
    backend = AlternatingBackend(graphs=graphs)

    def fw():
        return backend.forward(problem, Wx, R, b, None)

    def fwbw():
        states, saved = backend.forward(problem, Wx, R, b, None)
        return backend.backward(problem, Wx, R, b, None, states, saved, dstates, None)

    fn = fw if passes == "fw" else fwbw
    pool = cupy.get_default_memory_pool()
    fn()
    fn()
    cupy.cuda.Device().synchronize()
    used = pool.used_bytes()
    keep = fn()
    cupy.cuda.Device().synchronize()
    mem = pool.used_bytes() - used  # what one call leaves allocated (its outputs), beside the graphs' scratch
    del keep
    med, p10, p90 = time_call(fn, runs, use_spin=graphs)
    nodes = _nodes(backend, problem, passes)
    if not graphs:  # the same kernels, launched from the host: count them from a graph of the same shape
        counter = AlternatingBackend(graphs=True)
        for _ in range(2):
            states, saved = counter.forward(problem, Wx, R, b, None)
            if passes == "fwbw":
                counter.backward(problem, Wx, R, b, None, states, saved, dstates, None)
        nodes = _nodes(counter, problem, passes)
    return {"median_ms": med, "p10_ms": p10, "p90_ms": p90, "peak_mem_bytes": int(mem), "graph": graphs,
            "launches_per_step": nodes / T, "host_launches_per_step": 0.0 if graphs else nodes / T,
            "per_step_us": med * 1e3 / T}


def _nodes(backend, problem, passes: str) -> int:
    """Graph nodes of the captured step loops (forward, and backward for fwbw)."""
    directions = ("fw", "bw") if passes == "fwbw" else ("fw",)
    return sum(backend.captured(problem, d)[1] for d in directions)


def time_cudnn(function: str, N: int, D: int, passes: str, dtype_name: str, runs: int) -> float:
    import torch

    H = N * D
    module = torch.nn.GRU if function == "gru" else torch.nn.LSTM
    dtype = getattr(torch, dtype_name)
    net = module(H, H, batch_first=True).to(device="cuda", dtype=dtype)
    net.flatten_parameters()
    x = torch.randn(B, T, H, device="cuda", dtype=dtype, requires_grad=(passes == "fwbw"))
    if passes == "fw":
        with torch.no_grad():
            return time_call(lambda: net(x), runs)[0]

    def fwbw():
        out, _ = net(x)
        out.sum().backward()

    return time_call(fwbw, runs)[0]


def environment() -> dict:
    import cupy

    env = {"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
           "driver": str(cupy.cuda.runtime.driverGetVersion()),
           "cuda_runtime": str(cupy.cuda.runtime.runtimeGetVersion()), "cupy": cupy.__version__}
    try:
        from cuda.bindings import nvrtc

        _, major, minor = nvrtc.nvrtcVersion()
        env["nvrtc"] = f"{major}.{minor}"
    except Exception:
        env["nvrtc"] = "unknown"
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    return env


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:
        return os.environ.get("FLASHRNN_COMMIT", "unknown")


def bench(out: str, runs: int, functions, eager: bool) -> list[dict]:
    import cupy

    rows, cudnn = [], {}
    for function in functions:
        for N, D in HEADS:
            for passes in ("fw", "fwbw"):
                for graphs in ((True, False) if eager else (True,)):
                    row = {"function": function, "backend": "cuda", "dtype": "bfloat16", "pass": passes,
                           "B": B, "T": T, "N": N, "D": D}
                    try:
                        row.update(time_ours(function, N, D, passes, graphs, runs if graphs else max(runs // 2, 20)))
                    except Exception as err:  # a failed row is recorded, not fatal
                        row["error"] = f"{type(err).__name__}: {err}"[:500]
                    base = "gru" if function == "gru" else "lstm"
                    try:
                        key = (base, N, D, passes)
                        if key not in cudnn:
                            cudnn[key] = {dt: time_cudnn(base, N, D, passes, dt, runs)
                                          for dt in ("bfloat16", "float16", "float32")}
                        times = cudnn[key]
                        best = min(times, key=times.get)
                        row.update(baseline="cudnn" if function != "slstm" else "cudnn lstm",
                                   baseline_ms=times["bfloat16"], baseline_best_ms=times[best],
                                   baseline_best_dtype=best, baseline_all_ms=times)
                        if "median_ms" in row:
                            row["ratio"] = row["baseline_ms"] / row["median_ms"]
                            row["ratio_best"] = row["baseline_best_ms"] / row["median_ms"]
                    except Exception as err:
                        row["baseline_error"] = f"{type(err).__name__}: {err}"[:300]
                    rows.append(row)
                    print(_fmt(row), flush=True)
                    cupy.get_default_memory_pool().free_all_blocks()
    doc = {"suite": "alternating", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "commit": git_commit(), **environment(), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    return rows


def _fmt(row: dict) -> str:
    shape = f"{row['function']:5s} {row['pass']:4s} {row['N']}x{row['D']} {'graph' if row.get('graph', True) else 'eager'}"
    if "error" in row:
        return f"{shape:28s} ERROR {row['error'][:300]}"
    s = (f"{shape:28s} {row['median_ms']:8.3f} ms ({row['per_step_us']:.2f} us/step, "
         f"{row['launches_per_step']:.2f} launches/step, host {row['host_launches_per_step']:.2f})")
    if "ratio" in row:
        s += (f"  cudnn bf16 {row['baseline_ms']:8.3f} (x{row['ratio']:.2f})  best {row['baseline_best_dtype']}"
              f" {row['baseline_best_ms']:7.3f} (x{row['ratio_best']:.2f})")
    elif "baseline_error" in row:
        s += f"  cudnn: {row['baseline_error'][:120]}"
    return s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=f"bench/results/{datetime.date.today()}-alternating.json")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--functions", default=",".join(FUNCTIONS))
    parser.add_argument("--no-eager", action="store_true", help="skip the step-by-step (graph off) rows")
    args = parser.parse_args(argv)
    bench(args.out, args.runs, [f for f in args.functions.split(",") if f], not args.no_eager)
    return 0


if __name__ == "__main__":
    sys.exit(main())
