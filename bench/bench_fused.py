"""Benchmark of the cuda_fused forward beside cuDNN (torch.nn.LSTM / nn.GRU) in the same process.

    python -m bench.bench_fused --out bench/results/<date>-<gpu>-fused.json [--runs 25] [--quick]
    python bench/bench_fused.py --sanitize      # one small forward per kernel variant (for compute-sanitizer)
    python -m bench.bench_fused --fwbw --out bench/results/<date>-<gpu>-fused-fwbw.json   # forward + backward
    python bench/bench_fused.py --sanitize-bw   # one small forward + fused backward per cell x dtype

Protocol (../shared/BENCH.md): bf16, T=1024, CUDA events on the stream the call runs on, 3 warm-up calls (the
first compiles) excluded, median and p10/p90 of the timed runs. Before each timed call a spin kernel keeps the
GPU busy while the host enqueues the call, so the events time the device work of the call, not the Python
in front of it (the same for cuDNN). cuDNN is timed in bfloat16, float16 and float32; the fastest is
baseline_best_ms. sLSTM has no cuDNN counterpart: its rows compare with nn.LSTM of the same size.
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

import flashrnn_core as fc  # noqa: E402
from flashrnn_core import _arrays  # noqa: E402
from flashrnn_core.cells import CELLS  # noqa: E402

B, T = 16, 1024
HEADS = [(12, 64), (48, 16), (3, 256), (1, 768)]
CONFIGS = ([(f, B, T, N, D) for f in ("lstm", "slstm", "gru") for N, D in HEADS]
           + [("lstm", 64, T, 12, 64), ("lstm", 256, T, 12, 64),
              ("lstm", B, 1, 12, 64)])  # T=1: the fixed cost (launch, prologue), to get the per-step time
SPIN_MS = 3.0

_spin = None


def spin(ms: float = SPIN_MS) -> None:
    """Busy-wait on the GPU for about ``ms`` so that what the host enqueues next starts back to back."""
    import cupy

    global _spin
    if _spin is None:
        _spin = cupy.RawKernel(
            'extern "C" __global__ void spin(long long n) { long long s = clock64(); while (clock64() - s < n) {} }',
            "spin")
    rate_khz = cupy.cuda.Device().attributes["ClockRate"]
    _spin((1,), (1,), (np.int64(ms * rate_khz),))


def time_call(fn, runs: int, warmup: int = 3) -> tuple[float, float, float]:
    """Median, p10, p90 in ms of ``fn`` between CUDA events on the current (null) stream."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(runs):
        spin()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return float(np.median(times)), float(np.percentile(times, 10)), float(np.percentile(times, 90))


def inputs(function: str, Bn: int, Tn: int, N: int, D: int, dtype, seed: int = 0):
    import cupy

    cell = CELLS[function]
    rng = cupy.random.default_rng(seed)
    Wx = rng.standard_normal((Bn, Tn, cell.gates_w, N, D), dtype=np.float32).astype(dtype)
    R = (rng.standard_normal((cell.gates_r, N, D, D), dtype=np.float32) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal((cell.gates_b, N, D), dtype=np.float32).astype(dtype)
    return Wx, R, b


def resolved_backend(function, Bn, Tn, N, D) -> str:
    """The backend ``auto`` runs for this shape (cuda_fused, or what it falls back to)."""
    from flashrnn_core.backends import AUTO_ORDER, why_not
    from flashrnn_core.validate import validate

    Wx, R, b = inputs(function, Bn, 1, N, D, _arrays.bfloat16)
    problem = validate(Wx, R, b, function=function)
    return next(name for name in AUTO_ORDER if why_not(name, problem) is None)


def time_ours(function, Bn, Tn, N, D, backend, runs):
    import cupy

    Wx, R, b = inputs(function, Bn, Tn, N, D, _arrays.bfloat16)
    fc.forward(Wx, R, b, function=function, backend=backend)  # the first call compiles (or loads): not timed
    pool = cupy.get_default_memory_pool()
    used = pool.used_bytes()
    result = fc.forward(Wx, R, b, function=function, backend=backend)
    mem = pool.used_bytes() - used  # the outputs (states and saved) this call allocates
    del result
    med, p10, p90 = time_call(lambda: fc.forward(Wx, R, b, function=function, backend=backend), runs)
    return med, p10, p90, mem


def time_cudnn(function, Bn, Tn, N, D, dtype_name, runs):
    import torch

    H = N * D
    module = torch.nn.GRU if function == "gru" else torch.nn.LSTM
    dtype = getattr(torch, dtype_name)
    net = module(H, H, batch_first=True).to(device="cuda", dtype=dtype)
    net.flatten_parameters()  # one contiguous weight buffer, as cuDNN wants (else it compacts every call)
    x = torch.randn(Bn, Tn, H, device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        net(x)
        torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated() - base
        med, p10, p90 = time_call(lambda: net(x), runs)
    return med, p10, p90, mem


FWBW_CONFIGS = [(f, B, T, N, D) for f in ("lstm", "slstm", "gru") for N, D in HEADS] + [("lstm", B, 1, 12, 64)]


def time_ours_fwbw(function, Bn, Tn, N, D, runs):
    """Forward plus backward with upstream gradients on all states (BENCH.md's fwbw)."""
    import cupy

    Wx, R, b = inputs(function, Bn, Tn, N, D, _arrays.bfloat16)
    ds = cupy.random.default_rng(3).standard_normal((CELLS[function].states, Bn, Tn, N, D),
                                                     dtype=np.float32).astype(_arrays.bfloat16)

    def call():
        return fc.backward(fc.forward(Wx, R, b, function=function, backend="cuda_fused"), dstates=ds)

    call()
    pool = cupy.get_default_memory_pool()
    used = pool.used_bytes()
    out = fc.forward(Wx, R, b, function=function, backend="cuda_fused")
    mem = pool.used_bytes() - used  # what the forward keeps for the backward (states + saved)
    del out
    med, p10, p90 = time_call(call, runs)
    return med, p10, p90, mem


def time_cudnn_fwbw(function, Bn, Tn, N, D, dtype_name, runs):
    import torch

    H = N * D
    module = torch.nn.GRU if function == "gru" else torch.nn.LSTM
    dtype = getattr(torch, dtype_name)
    net = module(H, H, batch_first=True).to(device="cuda", dtype=dtype)
    net.flatten_parameters()
    x = torch.randn(Bn, Tn, H, device="cuda", dtype=dtype, requires_grad=True)

    def call():
        y, _ = net(x)
        y.sum().backward()

    return time_call(call, runs)


def bench_fwbw(out: str, runs: int) -> list[dict]:
    import cupy

    from flashrnn_core.backends import fused

    rows = []
    cudnn_cache: dict = {}
    for function, Bn, Tn, N, D in FWBW_CONFIGS:
        row = {"function": function, "backend": "cuda_fused", "dtype": "bfloat16", "pass": "fwbw",
               "B": Bn, "T": Tn, "N": N, "D": D}
        try:
            if resolved_backend(function, Bn, Tn, N, D) != "cuda_fused":
                raise RuntimeError("cuda_fused cannot take this shape (forward)")
            if fused.bw_unsupported(function, CELLS[function], _arrays.bfloat16, D) is not None:
                row["note"] = "backward delegated to the cuda backend (cluster head: no fused backward yet)"
            med, p10, p90, mem = time_ours_fwbw(function, Bn, Tn, N, D, runs)
            row.update(median_ms=med, p10_ms=p10, p90_ms=p90, saved_bytes=int(mem))
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"[:500]
        base_fn = "gru" if function == "gru" else "lstm"
        try:
            key = (base_fn, Bn, Tn, N, D)
            if key not in cudnn_cache:
                cudnn_cache[key] = {dt: time_cudnn_fwbw(base_fn, Bn, Tn, N, D, dt, 20)
                                    for dt in ("bfloat16", "float16", "float32")}
            times = cudnn_cache[key]
            row.update(baseline="cudnn" if function != "slstm" else "cudnn lstm",
                       baseline_ms=times["bfloat16"][0],
                       baseline_best_ms=min(t[0] for t in times.values()),
                       baseline_best_dtype=min(times, key=lambda k: times[k][0]),
                       baseline_all_ms={k: v[0] for k, v in times.items()})
            if "median_ms" in row:
                row["ratio"] = row["baseline_ms"] / row["median_ms"]
                row["ratio_best"] = row["baseline_best_ms"] / row["median_ms"]
        except Exception as err:
            row["baseline_error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
        print(_fmt(row), flush=True)
        cupy.get_default_memory_pool().free_all_blocks()
    doc = {"suite": "fused-fwbw", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "commit": git_commit(), **environment(), "rows": rows}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    return rows


def sanitize_bw() -> int:
    """One small forward + fused backward per cell x dtype (D = 64, 16, 48), for compute-sanitizer runs."""
    import cupy

    for function, cell in CELLS.items():
        for dtype in (_arrays.bfloat16, _arrays.float16, _arrays.float32):
            for Bn, N, D in ((5, 2, 64), (3, 1, 16), (9, 1, 48)):
                Wx, R, b = inputs(function, Bn, 7, N, D, dtype, seed=1)
                s0 = cupy.zeros((cell.states, Bn, 1, N, D), dtype=dtype)
                out = fc.forward(Wx, R, b, s0, function=function, backend="cuda_fused")
                ds = cupy.ones((cell.states, Bn, 7, N, D), dtype=dtype)
                g = fc.backward(out, dstates=ds)
                cupy.cuda.Device().synchronize()
                ok = bool(cupy.isfinite(g.dR.astype(np.float32)).all())
                print(f"bw {function} {_arrays.dtype_name(dtype)} B{Bn} N{N} D{D}: {'ok' if ok else 'NOT FINITE'}")
    return 0


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


def bench(out: str, runs: int, quick: bool) -> list[dict]:
    import cupy

    rows = []
    configs = CONFIGS[:1] + CONFIGS[-1:] if quick else CONFIGS
    cudnn_cache: dict = {}
    for function, Bn, Tn, N, D in configs:
        row = {"function": function, "backend": "cuda_fused", "dtype": "bfloat16", "pass": "fw",
               "B": Bn, "T": Tn, "N": N, "D": D}
        try:
            backend = resolved_backend(function, Bn, Tn, N, D)
            row["backend"] = backend
            if backend != "cuda_fused":
                row["note"] = "cuda_fused cannot take this shape; auto runs " + backend
            med, p10, p90, mem = time_ours(function, Bn, Tn, N, D, backend, runs)
            row.update(median_ms=med, p10_ms=p10, p90_ms=p90, peak_mem_bytes=int(mem))
        except Exception as err:  # a failed row is recorded, not fatal
            row["error"] = f"{type(err).__name__}: {err}"[:500]
        base_fn = "gru" if function == "gru" else "lstm"
        try:
            key = (base_fn, Bn, Tn, N, D)
            if key not in cudnn_cache:
                cudnn_cache[key] = {dt: time_cudnn(base_fn, Bn, Tn, N, D, dt, max(runs // 2, 20) if dt == "bfloat16" else runs)
                                    for dt in ("bfloat16", "float16", "float32")}
            times = cudnn_cache[key]
            row.update(baseline="cudnn" if function != "slstm" else "cudnn lstm",
                       baseline_ms=times["bfloat16"][0],
                       baseline_best_ms=min(t[0] for t in times.values()),
                       baseline_best_dtype=min(times, key=lambda k: times[k][0]),
                       baseline_all_ms={k: v[0] for k, v in times.items()})
            if "median_ms" in row:
                row["ratio"] = row["baseline_ms"] / row["median_ms"]
                row["ratio_best"] = row["baseline_best_ms"] / row["median_ms"]
        except Exception as err:
            row["baseline_error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
        print(_fmt(row), flush=True)
        cupy.get_default_memory_pool().free_all_blocks()
    _per_step(rows)
    doc = {"suite": "fused", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "commit": git_commit(), **environment(), "rows": rows}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    return rows


def _per_step(rows: list[dict]) -> None:
    """Per-step time of 12x64 lstm (T=1024 minus T=1, over 1023 steps), in us and SM cycles."""
    import cupy

    try:
        t1024 = next(r for r in rows if r["function"] == "lstm" and (r["B"], r["T"], r["N"]) == (16, 1024, 12))
        t1 = next(r for r in rows if r["function"] == "lstm" and (r["B"], r["T"], r["N"]) == (16, 1, 12))
    except StopIteration:
        return
    if "median_ms" not in t1024 or "median_ms" not in t1:
        return
    us = (t1024["median_ms"] - t1["median_ms"]) * 1e3 / 1023
    clock_ghz = cupy.cuda.Device().attributes["ClockRate"] / 1e6
    t1024["per_step_us"] = us
    t1024["per_step_cycles_at_max_clock"] = us * 1e3 * clock_ghz
    print(f"per step (12x64 lstm, B=16): {us:.3f} us = {us * 1e3 * clock_ghz:.0f} cycles at {clock_ghz:.2f} GHz")


def _fmt(row: dict) -> str:
    shape = f"{row['function']:5s} B{row['B']:<3d} T{row['T']:<4d} {row['N']}x{row['D']}"
    if "error" in row:
        return f"{shape:28s} ERROR {row['error'][:200]}"
    s = f"{shape:28s} {row['backend']:10s} {row['median_ms']:8.3f} ms"
    if "baseline_ms" in row:
        s += (f"  cudnn bf16 {row['baseline_ms']:8.3f} (x{row['ratio']:.1f})  best {row['baseline_best_dtype']}"
              f" {row['baseline_best_ms']:7.3f} (x{row['ratio_best']:.2f})")
    return s


def sanitize() -> int:
    """One small forward per kernel variant family (cell x dtype x tile x cluster), for compute-sanitizer runs
    (memcheck reports cuda-python's probing of driver entry points, cuGetProcAddress, as API errors: pass
    --report-api-errors no)."""
    import cupy

    for function in CELLS:
        for dtype in (_arrays.bfloat16, _arrays.float16, _arrays.float32):
            # single block (D = 64, 16, 48: odd k-tiles), 16-32 sequence tiles (B = 300), a cluster (D = 256, or
            # float32 D = 128 for lstm/slstm/gru)
            cluster_d = 128 if dtype == _arrays.float32 and function != "elman" else 256
            for Bn, N, D in ((5, 2, 64), (3, 1, 16), (3, 1, 48), (300, 1, 32), (3, 1, cluster_d)):
                Wx, R, b = inputs(function, Bn, 7, N, D, dtype, seed=1)
                s0 = cupy.zeros((CELLS[function].states, Bn, 1, N, D), dtype=dtype)
                out = fc.forward(Wx, R, b, s0, function=function, backend="cuda_fused")
                cupy.cuda.Device().synchronize()
                ok = bool(cupy.isfinite(out.states.astype(np.float32)).all())
                print(f"{function} {_arrays.dtype_name(dtype)} B{Bn} N{N} D{D}: {'ok' if ok else 'NOT FINITE'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="12x64 lstm only")
    parser.add_argument("--sanitize", action="store_true")
    parser.add_argument("--sanitize-bw", action="store_true")
    parser.add_argument("--fwbw", action="store_true", help="forward + backward rows (reference shapes)")
    args = parser.parse_args(argv)
    if args.sanitize:
        return sanitize()
    if args.sanitize_bw:
        return sanitize_bw()
    if args.fwbw:
        bench_fwbw(args.out or f"bench/results/{datetime.date.today()}-fused-fwbw.json", args.runs)
        return 0
    out = args.out or f"bench/results/{datetime.date.today()}-fused.json"
    bench(out, args.runs, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
