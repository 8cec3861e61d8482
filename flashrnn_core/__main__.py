"""The main job: ``python -m flashrnn_core``.

Prints the environment (GPU or none, CUDA/NVRTC versions, cache directory, backends), then runs an LSTM forward
and backward of a small size on the best available backend, checks it against the vanilla reference and prints
the time. Exit status 0 only if the check passes.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import _arrays, backward, forward
from .backends import AUTO_ORDER, why_not
from .validate import validate


def environment() -> dict[str, str]:
    """What this machine offers, as short strings (never raises)."""
    env = {"flashrnn_core": __import__("flashrnn_core").__version__, "numpy": np.__version__}
    try:
        import cupy

        env["cupy"] = cupy.__version__
        count = cupy.cuda.runtime.getDeviceCount()
        if count:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            env["gpu"] = f"{props['name'].decode()} (sm_{props['major']}{props['minor']}, {props['multiProcessorCount']} SMs)"
            env["cuda runtime"] = _version(cupy.cuda.runtime.runtimeGetVersion())
            env["driver"] = _version(cupy.cuda.runtime.driverGetVersion())
        else:
            env["gpu"] = "none"
    except Exception as err:  # no CuPy, or CuPy without a driver
        env["gpu"] = f"none ({type(err).__name__}: {err})"[:120]
    try:
        from cuda.bindings import nvrtc

        _, major, minor = nvrtc.nvrtcVersion()
        env["nvrtc"] = f"{major}.{minor}"
    except Exception as err:
        env["nvrtc"] = f"unavailable ({type(err).__name__})"
    try:
        from .runtime import env as runtime_env

        env["cache directory"] = str(runtime_env.cache_dir())
    except Exception as err:
        env["cache directory"] = f"unavailable ({type(err).__name__}: {err})"[:120]
    return env


def _version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _inputs(xp, dtype, B, T, N, D, seed=0):
    rng = np.random.default_rng(seed)
    Wx = rng.standard_normal((B, T, 4, N, D), dtype=np.float32)
    R = rng.standard_normal((4, N, D, D), dtype=np.float32) / np.sqrt(D)
    b = rng.standard_normal((4, N, D), dtype=np.float32)
    dh = rng.standard_normal((1, B, T, N, D), dtype=np.float32)
    return [xp.asarray(a).astype(dtype) for a in (Wx, R, b, dh)]


def _rel(a, ref) -> float:
    a, ref = (np.asarray(_to_host(x), dtype=np.float64) for x in (a, ref))
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


def _to_host(x):
    return x.get() if _arrays.is_cupy_array(x) else x


def run_check(B: int, T: int, N: int, D: int, dtype_name: str) -> bool:
    """LSTM forward+backward on the best backend vs vanilla in float64; prints times and errors."""
    dtype = np.dtype(getattr(_arrays, dtype_name))
    xp = np
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount():
            xp = cupy
    except Exception:
        pass
    Wx, R, b, dh = _inputs(xp, dtype, B, T, N, D)
    problem = validate(Wx, R, b, function="lstm")
    best = next(name for name in AUTO_ORDER if why_not(name, problem) is None)
    print(f"\nlstm forward+backward, B={B} T={T} N={N} D={D} {dtype_name}, backend {best}")

    def run():
        result = forward(Wx, R, b, function="lstm", backend=best)
        return result, backward(result, dstates=dh)

    run()  # first call compiles (cold) or loads (warm): not timed
    _sync(xp)
    start = time.perf_counter()
    result, grads = run()
    _sync(xp)
    elapsed = time.perf_counter() - start

    ref_in = [np.asarray(_to_host(a), dtype=np.float64) for a in (Wx, R, b, dh)]
    ref = forward(*ref_in[:3], function="lstm", backend="vanilla")
    ref_grads = backward(ref, dstates=ref_in[3])
    tol = 1e-4 if dtype == _arrays.float32 else 2e-2
    errors = {"h": _rel(result.states, ref.states), "dWx": _rel(grads.dWx, ref_grads.dWx),
              "dR": _rel(grads.dR, ref_grads.dR), "db": _rel(grads.db, ref_grads.db)}
    ok = all(e < tol for e in errors.values())
    print(f"  time {elapsed * 1e3:.2f} ms (forward+backward, wall clock after one warm-up)")
    print("  rel. error vs float64 vanilla: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
          + f"  (tolerance {tol:g}) -> {'OK' if ok else 'FAILED'}")
    return ok


def _sync(xp) -> None:
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashrnn_core", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on a GPU, float32 on a CPU")
    args = parser.parse_args(argv)

    print("flashrnn_core environment")
    for key, value in environment().items():
        print(f"  {key:16s} {value}")
    dummy = validate(*_inputs(np, np.float32, 1, 1, 1, 16)[:3], function="lstm")
    print("  backends")
    for name in AUTO_ORDER:
        reason = why_not(name, dummy) if name == "vanilla" else _gpu_reason(name)
        print(f"    {name:11s} {'available' if reason is None else reason}")
    on_gpu = not str(_gpu_reason("vanilla") or "").startswith("no GPU")
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    ok = run_check(args.batch, args.steps, args.heads, args.head_dim, dtype)
    return 0 if ok else 1


def _gpu_reason(name: str) -> str | None:
    """Whether backend ``name`` can run a small CuPy problem here (None) or why not."""
    try:
        import cupy

        if not cupy.cuda.runtime.getDeviceCount():
            return "no GPU"
        problem = validate(*_inputs(cupy, np.float32, 1, 1, 1, 16)[:3], function="lstm")
    except Exception as err:
        return f"no GPU ({type(err).__name__})"
    return why_not(name, problem)


if __name__ == "__main__":
    sys.exit(main())
