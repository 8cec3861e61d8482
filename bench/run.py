"""The benchmark harness: one entry point for every suite, results in ../shared/BENCH.md's JSON format.

    python -m bench.run --suite reference                 # bf16, B=16, T=1024, hidden 768 as 12x64, 3x256, 1x768, 48x16
    python -m bench.run --suite batch|seqlen|headdim      # sweeps of B, T and D (hidden 768)
    python -m bench.run --suite compile                   # cold and warm compile + load of each kernel
    python -m bench.run --suite step --functions lstm     # one-step inference (Stepper), 12x64, B=1, 4, 16
    python -m bench.run --suite varlen                    # lstm, gru: lengths uniform in [T/4, T] vs padded
    python -m bench.run --suite heads --heads 5x144,1x640  # B=16, T=1024, other heads (default ODD_CLUSTER_HEADS)
    python -m bench.run --suite reference --dry-run       # the whole pipeline on the CPU (vanilla, tiny sizes)
    python -m bench.report bench/results/<file>.json --plots bench/results/plots --markdown bench/results/README.md

Every backend present is timed (``vanilla`` only when named: a Python loop on CuPy at T=1024 takes minutes);
a backend that is absent or cannot take a shape gets a row with ``"error"``. Each row carries the cuDNN
baseline of its shape (``baselines.py``) and, for the first shape of each cell and pass (``--loop all`` for
every shape), the plain PyTorch loop. The JSON is rewritten after every row, so a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import baselines
from .shard import parse_shard, shard_path, take_shard
from .timing import MIN_RUNS, SPIN_MS, ProgressBar, measure

SUITES = ("reference", "batch", "seqlen", "headdim", "compile", "step", "varlen", "heads")
PASSES = ("fw", "fwbw")
FUNCTIONS = ("lstm", "slstm", "gru", "elman")
REFERENCE_HEADS = ((12, 64), (3, 256), (1, 768), (48, 16))
#: The heads suite's default: head sizes that no power-of-two cluster splits into whole warps' dims, which run on
#: clusters of 3-15 blocks (constrint KernelModel.any_cluster_size; bf16 H100: lstm 5x144 forward on 6 blocks,
#: backward on 3; gru 4x160 on 5 both ways; lstm 2x320 on 10; lstm 1x640's backward on a 10-block scatter cluster).
ODD_CLUSTER_HEADS = ((5, 144), (4, 160), (2, 320), (1, 640))
HIDDEN = 768
DRY_RUNS = 3  # the dry run checks the pipeline; its times mean nothing
ROOT = Path(__file__).resolve().parent.parent
STEP_BATCHES = (1, 4, 16)  # the step suite: 12x64, one step of these batches (issue 10: <= 10 us a step)
STEP_TARGET_MS = 0.010
GRAPH_STEPS = 100  # steps captured in the graph that times the kernel alone
STEP_CALLS = 200  # steps between the host timer's start and its final synchronisation


@dataclass(frozen=True)
class Shape:
    """One problem of a suite: a row per (shape, pass, backend)."""

    function: str
    dtype: str
    B: int
    T: int
    N: int
    D: int


def suite_shapes(suite: str, functions: Iterable[str], dry_run: bool = False, dtype: str | None = None,
                 heads: tuple[tuple[int, int], ...] | None = None) -> list[Shape]:
    """The shapes of ``suite`` in ``dtype`` (default bfloat16, the reference's); a dry run takes the same structure
    at sizes a CPU runs in seconds (by default in float32: torch's CPU kernels for 16-bit recurrences are slow, and
    the dry run measures nothing). ``heads``: the heads suite's (N, D) pairs (default ODD_CLUSTER_HEADS)."""
    dtype = dtype or ("float32" if dry_run else "bfloat16")
    if dry_run:
        reference_heads, sweep_heads, hidden, B, T = ((2, 8), (1, 16)), ((2, 8), (1, 16)), 16, 2, 8
        batches, lengths, dims = (1, 4), (4, 16), (8, 16)
    else:
        reference_heads, sweep_heads, hidden, B, T = REFERENCE_HEADS, ((12, 64), (1, 768)), HIDDEN, 16, 1024
        batches, lengths = (1, 2, 4, 8, 16, 32, 64, 128, 256), (256, 512, 1024, 2048, 4096, 8192, 16384)
        dims = (16, 32, 48, 64, 96, 128, 192, 256, 384, 768)
    out: list[Shape] = []
    for f in functions:
        if suite in ("reference", "compile"):
            out += [Shape(f, dtype, B, T, N, D) for N, D in reference_heads]
        elif suite == "heads":  # (a dry run's default: the reference's tiny heads)
            default = reference_heads if dry_run else ODD_CLUSTER_HEADS
            out += [Shape(f, dtype, B, T, N, D) for N, D in (heads or default)]
        elif suite == "batch":
            out += [Shape(f, dtype, b, T, N, D) for N, D in sweep_heads for b in batches]
        elif suite == "seqlen":
            out += [Shape(f, dtype, B, t, N, D) for N, D in sweep_heads for t in lengths]
        elif suite == "headdim":
            out += [Shape(f, dtype, B, T, hidden // d, d) for d in dims]
        elif suite == "step":  # T = 1: a row times one step
            out += [Shape(f, dtype, b, 1, N, D) for N, D in reference_heads[:1]
                    for b in (batches if dry_run else STEP_BATCHES)]
        elif suite == "varlen":
            out += [Shape(f, dtype, B, T, N, D) for N, D in sweep_heads if f in VARLEN_FUNCTIONS]
        else:
            raise ValueError(f"suite: expected one of {SUITES}, got {suite!r}")
    return out


# ------------------------------------------------------------------------------------------- environment


def environment(gpu: bool) -> dict[str, Any]:
    """The header fields: GPU, driver, CUDA runtime, NVRTC, CuPy and torch versions (None where absent)."""
    env: dict[str, Any] = {"gpu": "none (cpu dry run)", "driver": None, "cuda_runtime": None, "nvrtc": None,
                           "cupy": _version("cupy"), "torch": _version("torch")}
    if not gpu:
        return env
    import cupy

    rt = cupy.cuda.runtime
    env["gpu"] = rt.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    env["driver"] = _driver_version() or _cuda_version(rt.driverGetVersion())
    env["cuda_runtime"] = _cuda_version(rt.runtimeGetVersion())
    try:
        from flashrnn_core.runtime import nvrtc_version

        env["nvrtc"] = "%d.%d" % nvrtc_version()
    except Exception as err:  # NVRTC missing: the GPU backends will say so in their rows
        env["nvrtc"] = f"unavailable ({type(err).__name__})"
    return env


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _driver_version() -> str | None:
    """The kernel driver's version (``580.65.06``) from nvidia-smi; None when it is not on the PATH."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.splitlines()[0].strip() or None
    except Exception:
        return None


def git_commit() -> str:
    """``$FLASHRNN_COMMIT`` when set (a copy of the tree whose .git is not this checkout's, as on the device
    machine), else HEAD, with ``-dirty`` when tracked files differ."""
    if os.environ.get("FLASHRNN_COMMIT"):
        return os.environ["FLASHRNN_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=ROOT, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT, timeout=20).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def gpu_present() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def default_out(suite: str, gpu_name: str, dry_run: bool) -> Path:
    """``bench/results/<date>-<gpu>-<suite>.json``; a dry run writes under the temp dir, not into results."""
    date = datetime.date.today().isoformat()
    if dry_run:
        return Path(tempfile.gettempdir()) / "flashrnn_bench" / f"{date}-cpu-{suite}.json"
    slug = gpu_name.replace("NVIDIA", "").strip().split()[0].lower() if gpu_name.strip() else "gpu"
    return ROOT / "bench" / "results" / f"{date}-{slug}-{suite}.json"


# ------------------------------------------------------------------------------------------------ inputs


def shape_seed(shape: Shape) -> int:
    """A seed of its own for every shape (fresh inputs per shape), the same on every run."""
    return zlib.crc32(repr(astuple_shape(shape)).encode())


def astuple_shape(shape: Shape) -> tuple:
    return tuple(asdict(shape).values())


def make_inputs(xp: Any, shape: Shape, with_grads: bool) -> dict[str, Any]:
    """Random normal Wx, R (scaled by 1/sqrt(D)), b and, for fwbw, dstates on all states; in the shape's dtype."""
    from flashrnn_core import _arrays
    from flashrnn_core.cells import CELLS

    cell = CELLS[shape.function]
    dtype = _arrays.dtype_named(shape.dtype)
    rng = np.random.default_rng(shape_seed(shape))
    B, T, N, D = shape.B, shape.T, shape.N, shape.D

    def normal(*dims: int, scale: float = 1.0) -> Any:
        return xp.asarray((rng.standard_normal(dims, dtype=np.float32) * scale).astype(dtype))

    arrays = {"Wx": normal(B, T, cell.gates_w, N, D), "R": normal(cell.gates_r, N, D, D, scale=D**-0.5),
              "b": normal(cell.gates_b, N, D)}
    if with_grads:
        arrays["dstates"] = normal(cell.states, B, T, N, D)
    return arrays


def our_call(backend: str, shape: Shape, pass_: str, arrays: dict[str, Any],
             lengths: np.ndarray | None = None) -> Callable[[], Any]:
    """A closure running ``fw`` (the inference forward, all states: cuDNN's ``fw`` runs under ``no_grad``),
    ``fw_save`` (the forward that also saves for a backward: an extra field of ``fw`` rows) or ``fwbw``
    (forward, then backward of dstates), over each sequence's ``lengths`` where given."""
    import flashrnn_core as fc

    Wx, R, b = arrays["Wx"], arrays["R"], arrays["b"]

    def forward(save: bool = True) -> Any:
        return fc.forward(Wx, R, b, function=shape.function, backend=backend, lengths=lengths,
                          save_for_backward=save)

    if pass_ in ("fw", "fw_save"):
        return lambda: forward(save=pass_ == "fw_save").states
    dstates = arrays["dstates"]
    return lambda: fc.backward(forward(), dstates=dstates)


def why_not(backend: str, absent: dict[str, str | None], shape: Shape, arrays: dict[str, Any],
            lengths: np.ndarray | None = None) -> str | None:
    """None when ``backend`` can run ``shape`` (with ``lengths``), else the reason (absent backend, shape it
    cannot take)."""
    from flashrnn_core import backends
    from flashrnn_core.validate import validate

    if absent.get(backend):
        return absent[backend]
    problem = validate(arrays["Wx"], arrays["R"], arrays["b"], function=shape.function, lengths=lengths)
    return backends.why_not(backend, problem)


# ------------------------------------------------------------------------------------------------- suite


@dataclass
class Options:
    suite: str
    backends: list[str]
    absent: dict[str, str | None]
    runs: int
    spin_ms: float
    loop: str  # all | first | none
    budget_s: float  # no new (shape, pass) after this many seconds; 0: no limit
    cudnn_dtypes: tuple[str, ...]
    gpu: bool

    @property
    def strict(self) -> bool:
        """Protocol minimums (runs, warm-up) everywhere but the CPU dry run."""
        return self.gpu


class Results:
    """The results document, rewritten to ``path`` after every row (atomic replace)."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path, self.doc = path, {**header, "rows": []}
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> None:
        self.doc["rows"].append(row)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=_json_default) + "\n")
        tmp.replace(self.path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def base_row(shape: Shape, backend: str, pass_: str) -> dict[str, Any]:
    return {"function": shape.function, "backend": backend, "dtype": shape.dtype, "pass": pass_,
            "B": shape.B, "T": shape.T, "N": shape.N, "D": shape.D}


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:500]


class BaselineCache:
    """cuDNN timings by ``BaselineKey`` (the head layouts of one hidden size share them) and loop timings."""

    def __init__(self, opts: Options):
        self.opts, self.cudnn, self.loop_done = opts, {}, set()
        self.device = "cuda" if opts.gpu else "cpu"
        self.missing = baselines.torch_missing()
        if not self.missing and not opts.gpu:
            import torch

            torch.set_num_threads(1)  # the dry run: torch's spinning worker threads would fight the CPU test run

    def cudnn_fields(self, shape: Shape, pass_: str, lengths: np.ndarray | None = None) -> dict[str, Any]:
        """``baseline``, ``baseline_ms`` (the row's dtype), ``baseline_best_ms`` (fastest of cudnn_dtypes), ...;
        with ``lengths``, of the module on a PackedSequence of those lengths."""
        module = baselines.CUDNN[shape.function][0]
        packed = None if lengths is None else tuple(int(n) for n in lengths)
        fields: dict[str, Any] = {
            "baseline": baselines.baseline_name(shape.function, self.device) + (" packed" if packed else ""),
            "baseline_module": f"torch.nn.{module}" + (" (PackedSequence)" if packed else ""), "baseline_ms": None,
            "baseline_best_ms": None}
        if self.missing:
            fields["baseline_error"] = self.missing
            return fields
        times, errors = {}, {}
        for dtype in dict.fromkeys((shape.dtype, *self.opts.cudnn_dtypes)):
            key = baselines.BaselineKey(module, pass_, shape.B, shape.T, shape.N * shape.D, dtype, packed)
            if key not in self.cudnn:
                try:
                    self.cudnn[key] = baselines.time_cudnn(key, self.device, self.opts.runs, self.opts.spin_ms,
                                                           self.opts.strict)
                except Exception as err:  # e.g. a dtype the CPU fallback lacks, out of memory
                    self.cudnn[key] = error_text(err)
            if isinstance(self.cudnn[key], str):
                errors[dtype] = self.cudnn[key]
            else:
                times[dtype] = self.cudnn[key]
        if shape.dtype in times:
            fields.update(times[shape.dtype].fields("baseline"))
        if times:
            best = min(times, key=lambda d: times[d].median_ms)
            fields.update(baseline_best_ms=times[best].median_ms, baseline_best_dtype=best,
                          baseline_all_ms={d: t.median_ms for d, t in times.items()})
        if errors:
            fields["baseline_error"] = "; ".join(f"{d}: {e}" for d, e in errors.items())
        return fields

    def loop_fields(self, shape: Shape, pass_: str, arrays: dict[str, Any]) -> dict[str, Any]:
        """The plain PyTorch loop on this row's inputs, where ``--loop`` asks for it."""
        group = (shape.function, pass_)
        if self.missing or self.opts.loop == "none" or (self.opts.loop == "first" and group in self.loop_done):
            return {}
        self.loop_done.add(group)
        from flashrnn_core.cells import CELLS

        try:
            t = baselines.time_loop(shape.function, CELLS[shape.function].states, pass_, arrays, self.device,
                                    shape.dtype, self.opts.runs, self.opts.spin_ms, self.opts.strict)
        except Exception as err:
            return {"loop_error": error_text(err)}
        return t.fields("loop")


def with_ratios(row: dict[str, Any]) -> dict[str, Any]:
    """``ratio`` = baseline_ms / median_ms (above 1: faster than cuDNN), and the same for the best cuDNN dtype
    and the loop."""
    ours = row.get("median_ms")
    for ratio, base in (("ratio", "baseline_ms"), ("ratio_best", "baseline_best_ms"), ("loop_ratio", "loop_ms")):
        if ratio == "ratio" or base in row:
            row[ratio] = row[base] / ours if ours and row.get(base) else None
    return row


def run_timing_suite(opts: Options, shapes: list[Shape], results: Results) -> None:
    """Every (shape, pass): the baselines once, then each backend on the same inputs."""
    xp = _array_module(opts.gpu)
    bar = ProgressBar(len(shapes) * len(PASSES) * len(opts.backends), f"{opts.suite} ")
    cache = BaselineCache(opts)
    start = time.perf_counter()
    for shape in shapes:
        for pass_ in PASSES:
            if opts.budget_s and time.perf_counter() - start > opts.budget_s:
                for backend in opts.backends:  # recorded, so a cut run says what it left out
                    results.add({**base_row(shape, backend, pass_),
                                 "error": f"not run: --budget-s {opts.budget_s:g} spent"})
                    bar.advance("over budget")
                continue
            arrays = make_inputs(xp, shape, with_grads=pass_ == "fwbw")
            shared = cache.cudnn_fields(shape, pass_)
            shared.update(cache.loop_fields(shape, pass_, arrays))
            for backend in opts.backends:
                bar.advance(f"{shape.function} {shape.N}x{shape.D} B{shape.B} T{shape.T} {pass_} {backend}")
                row = base_row(shape, backend, pass_)
                row.update(time_backend(opts, backend, shape, pass_, arrays))
                results.add(with_ratios({**row, **shared}))
            del arrays
            _free(opts.gpu)
    bar.close()


def time_backend(opts: Options, backend: str, shape: Shape, pass_: str, arrays: dict[str, Any],
                 lengths: np.ndarray | None = None) -> dict[str, Any]:
    """The timing fields of one row, or ``{"error": ...}``."""
    try:
        reason = why_not(backend, opts.absent, shape, arrays, lengths)
        if reason:
            return {"error": reason}
        def timed(which: str) -> Any:
            return measure(our_call(backend, shape, which, arrays, lengths), "cupy" if opts.gpu else "cpu",
                           opts.runs, spin_ms=opts.spin_ms, strict=opts.strict)

        fields = timed(pass_).fields()
        if pass_ == "fw" and opts.gpu:  # what the forward costs when a backward will follow
            fields["fw_save_ms"] = timed("fw_save").fields()["median_ms"]
        return fields
    except Exception as err:  # a failed row is recorded, not fatal
        return {"error": error_text(err)}


def _array_module(gpu: bool) -> Any:
    if gpu:
        import cupy

        return cupy
    return np


def _free(gpu: bool) -> None:
    """Give cached blocks back between shapes, so the next shape's peak memory starts from a clean pool."""
    if gpu:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
        if sys.modules.get("torch") is not None:
            sys.modules["torch"].cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ step

#: How each step row is timed: (name, from a CUDA graph?, what is timed).
STEP_MODES = (("kernel", True, f"CUDA events around a graph of {GRAPH_STEPS} captured steps, / {GRAPH_STEPS}"),
              ("graph_replay", True, f"host timer over {STEP_CALLS} replays of a one-step graph and a final sync"),
              ("call", False, f"host timer over {STEP_CALLS} step() calls and a final sync"))


def run_step_suite(opts: Options, shapes: list[Shape], results: Results) -> None:
    """Rows ``"pass": "step"`` (BENCH.md): per shape and backend a ``Stepper`` timed three ways (STEP_MODES):
    the kernel alone, end to end from Python replaying a one-step CUDA graph, and plain ``step()`` calls.
    ``median_ms`` is per step; ``target_ms`` is issue 10's end-to-end target. On the CPU (dry run) only plain
    calls run; the graph rows record why not."""
    import flashrnn_core as fc

    xp = _array_module(opts.gpu)
    bar = ProgressBar(len(shapes) * len(opts.backends) * len(STEP_MODES), "step ")
    for shape in shapes:
        arrays = make_inputs(xp, shape, with_grads=False)
        x = arrays["Wx"][:, 0]  # [B, Gw, N, D]: T = 1, contiguous
        for backend in opts.backends:
            try:
                if opts.absent.get(backend):
                    raise RuntimeError(opts.absent[backend])
                stepper = fc.Stepper(arrays["R"], arrays["b"], shape.function, shape.B, backend=backend)
            except Exception as err:  # absent, or a shape it cannot take: error rows
                stepper, reason = None, error_text(err)
            for mode, graph, how in STEP_MODES:
                bar.advance(f"{shape.function} {shape.N}x{shape.D} B{shape.B} {backend} {mode}")
                row = {**base_row(shape, backend, "step"), "graph": graph, "step_timing": mode, "timed": how,
                       "target_ms": STEP_TARGET_MS, "baseline": None, "baseline_ms": None,
                       "baseline_best_ms": None, "ratio": None}
                if stepper is None:
                    results.add({**row, "error": reason})
                    continue
                row["backend"] = stepper.backend
                try:
                    row.update(time_steps(opts, stepper, x, mode))
                    if mode != "kernel" and "median_ms" in row:
                        row["meets_target"] = row["median_ms"] <= STEP_TARGET_MS
                except Exception as err:
                    row["error"] = error_text(err)
                results.add(row)
        del arrays
        _free(opts.gpu)
    bar.close()


def time_steps(opts: Options, stepper: Any, x: Any, mode: str) -> dict[str, Any]:
    """The timing fields of one step row (times per step, in ms)."""
    from .timing import peak_memory, statistics

    device = "cupy" if opts.gpu else "cpu"
    if mode != "call" and not (opts.gpu and stepper.capturable):
        why = "CUDA graphs need a GPU" if not opts.gpu else f"backend {stepper.backend!r} steps are not capturable"
        return {"error": f"not timed: {why}"}
    calls = STEP_CALLS if opts.gpu else 5
    if not opts.gpu:
        times = [_host_per_step(lambda: stepper.step(x), calls, None) for _ in range(opts.runs)]
        return {**_stat_fields(statistics(times), opts.runs), "steps": calls,
                "peak_mem_bytes": peak_memory(lambda: stepper.step(x), device)}
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(3):  # warm-up: the kernel is loaded and the stream wrapped before any capture
            stepper.step(x)
        peak = peak_memory(lambda: stepper.step(x), device)
        if mode == "call":
            run, steps = (lambda: stepper.step(x)), calls
        else:
            graph = _capture(stream, lambda: stepper.step(x), GRAPH_STEPS if mode == "kernel" else 1)
            run, steps = (lambda: graph.launch(stream)), (GRAPH_STEPS if mode == "kernel" else calls)
        for _ in range(3):
            run()
        stream.synchronize()
        if mode == "kernel":
            times = _events_per_step(run, stream, GRAPH_STEPS, opts.runs)
        else:
            times = [_host_per_step(run, calls, stream) for _ in range(opts.runs)]
    return {**_stat_fields(statistics(times), opts.runs), "steps": steps, "peak_mem_bytes": peak}


def _capture(stream: Any, fn: Callable[[], Any], count: int) -> Any:
    """A CUDA graph of ``count`` calls of ``fn`` captured on ``stream`` (which must be CuPy's current one)."""
    stream.begin_capture()
    for _ in range(count):
        fn()
    return stream.end_capture()


def _events_per_step(run: Callable[[], Any], stream: Any, steps: int, runs: int) -> list[float]:
    """CUDA events around each ``run`` (a graph of ``steps`` steps), in ms a step."""
    import cupy

    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(runs):
        start.record(stream)
        run()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / steps)
    return times


def _host_per_step(run: Callable[[], Any], calls: int, stream: Any) -> float:
    """Host wall time of ``calls`` calls of ``run`` and a final synchronisation of ``stream``, in ms a call."""
    if stream is not None:
        stream.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    if stream is not None:
        stream.synchronize()
    return (time.perf_counter() - start) * 1e3 / calls


def _stat_fields(stats: tuple[float, float, float], runs: int) -> dict[str, Any]:
    median, p10, p90 = stats
    return {"median_ms": median, "p10_ms": p10, "p90_ms": p90, "runs": runs}


# ------------------------------------------------------------------------------------------ variable lengths

VARLEN_FUNCTIONS = ("lstm", "gru")  # the cells with a cuDNN counterpart taking a PackedSequence
VARLEN_WIDE_BACKENDS = ("cuda", "cuda_fused")  # the one-head 1x768 shape is timed on these only (on the GPU)


def varlen_lengths(B: int, T: int) -> np.ndarray:
    """``[B]`` lengths uniform in [T/4, T], seeded by (B, T): the same in every row of a (B, T), so every
    backend, head layout and the cuDNN baseline run the same batch."""
    rng = np.random.default_rng(zlib.crc32(f"varlen B{B} T{T}".encode()))
    return rng.integers(max(T // 4, 1), T + 1, size=B).astype(np.int32)


def varlen_backends(opts: Options, shape: Shape) -> list[str]:
    """The backends timed on ``shape``: all for several heads, ``VARLEN_WIDE_BACKENDS`` for one wide head (the
    dry run, where only vanilla runs, keeps the structure)."""
    if shape.N > 1 or not opts.gpu:
        return opts.backends
    return [b for b in opts.backends if b in VARLEN_WIDE_BACKENDS]


def run_varlen_suite(opts: Options, shapes: list[Shape], results: Results) -> None:
    """Rows ``fw_varlen`` / ``fwbw_varlen``: each backend on a batch of lengths ``varlen_lengths`` (median_ms ...)
    and on the same batch padded (``padded_ms`` ..., ``varlen_ratio`` = median_ms / padded_ms); the baseline is
    cuDNN on the PackedSequence of those lengths (``baseline_ms``, ``ratio``) and on the padded batch
    (``baseline_padded_ms``, ``baseline_varlen_ratio``)."""
    xp = _array_module(opts.gpu)
    bar = ProgressBar(sum(len(varlen_backends(opts, s)) for s in shapes) * len(PASSES), "varlen ")
    cache = BaselineCache(opts)
    for shape in shapes:
        lengths = varlen_lengths(shape.B, shape.T)
        described = {"lengths_min": int(lengths.min()), "lengths_mean": float(lengths.mean()),
                     "lengths_max": int(lengths.max()), "lengths_seed": f"varlen B{shape.B} T{shape.T}"}
        for pass_ in PASSES:
            arrays = make_inputs(xp, shape, with_grads=pass_ == "fwbw")
            shared = {**described, **varlen_baseline_fields(cache, shape, pass_, lengths)}
            for backend in varlen_backends(opts, shape):
                bar.advance(f"{shape.function} {shape.N}x{shape.D} {pass_} varlen {backend}")
                row = {**base_row(shape, backend, f"{pass_}_varlen"),
                       **time_backend(opts, backend, shape, pass_, arrays, lengths)}
                row.update({("padded_ms" if k == "median_ms" else f"padded_{k}"): v
                            for k, v in time_backend(opts, backend, shape, pass_, arrays).items()})
                row.update(shared, varlen_ratio=_quotient(row.get("median_ms"), row.get("padded_ms")),
                           ratio_padded=_quotient(shared["baseline_padded_ms"], row.get("padded_ms")))
                results.add(with_ratios(row))
            del arrays
            _free(opts.gpu)
    bar.close()


def varlen_baseline_fields(cache: BaselineCache, shape: Shape, pass_: str, lengths: np.ndarray) -> dict[str, Any]:
    """cuDNN on the PackedSequence (``baseline*`` fields) and on the padded batch (``baseline_padded_ms``)."""
    fields = cache.cudnn_fields(shape, pass_, lengths)
    padded = cache.cudnn_fields(shape, pass_)
    fields["baseline_padded_ms"] = padded["baseline_ms"]
    if "baseline_error" in padded:
        fields["baseline_padded_error"] = padded["baseline_error"]
    fields["baseline_varlen_ratio"] = _quotient(fields["baseline_ms"], padded["baseline_ms"])
    return fields


def _quotient(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# --------------------------------------------------------------------------------------------- compile


def run_compile_suite(opts: Options, shapes: list[Shape], results: Results, cold_runs: int) -> None:
    """Rows ``compile_cold`` (NVRTC compile into an empty cache directory, then module load) and
    ``compile_warm`` (the disk-cache hit, then module load: what a new process pays) for every kernel the
    suite's shapes launch, found by running each shape once (T=4) on each backend."""
    if not opts.gpu:
        for shape in shapes:
            for backend in opts.backends:
                results.add({**base_row(shape, backend, "compile_cold"),
                             "error": "the compile suite needs a GPU (kernels are found by running each shape)"})
        return
    found = discover_kernels(opts, shapes, results)
    bar = ProgressBar(sum(len(specs) for specs in found.values()), "compile ")
    for (shape, backend), specs in found.items():
        for spec in specs:
            bar.advance(spec.name())
            for pass_, fields in time_compile(spec, cold_runs, opts.runs).items():
                results.add({**base_row(shape, backend, pass_), "kernel": spec.name(), **fields,
                             "peak_mem_bytes": None, "baseline": None, "baseline_ms": None,
                             "baseline_best_ms": None, "ratio": None})
    bar.close()


def discover_kernels(opts: Options, shapes: list[Shape], results: Results) -> dict[tuple[Shape, str], list]:
    """(shape, backend) -> the KernelSpecs it loaded first (each kernel is listed once, under the first shape
    that needed it). Read from the runtime's table of loaded kernels, keyed by (spec, arch, device, root)."""
    import importlib

    import cupy

    # The module, not the function ``flashrnn_core.runtime.launch`` that shadows its name in the package.
    launch = importlib.import_module("flashrnn_core.runtime.launch")
    found: dict[tuple[Shape, str], list] = {}
    for shape in shapes:
        small = Shape(shape.function, shape.dtype, shape.B, 4, shape.N, shape.D)  # the kernels do not depend on T
        arrays = make_inputs(cupy, small, with_grads=True)
        for backend in opts.backends:
            before = set(launch._kernels)
            try:
                reason = why_not(backend, opts.absent, small, arrays)
                if reason is None:
                    our_call(backend, small, "fwbw", arrays)()
                    cupy.cuda.Device().synchronize()
            except Exception as err:
                reason = error_text(err)
            if reason:
                results.add({**base_row(shape, backend, "compile_cold"), "error": reason})
                continue
            specs = list(dict.fromkeys(key[0] for key in set(launch._kernels) - before))
            if specs:
                found[(shape, backend)] = specs
    return found


def time_compile(spec: Any, cold_runs: int, warm_runs: int) -> dict[str, dict[str, Any]]:
    """{"compile_cold": fields, "compile_warm": fields}: host wall time in ms of compile_spec + module load.

    A cold compile runs in a new process (``cold_compile``) with the driver's JIT cache off, as a new user's
    first call: on the device (cuda.core 1.2.0, CUDA 13) compiling the same source and options again, in this
    process or another, hit that cache and returned with an empty log, so a "cold" compile measured ~50 ms.
    The warm runs load the cold run's cache entry in this process."""
    from flashrnn_core.runtime import compile_spec, device_arch

    arch = device_arch()
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="flashrnn_bench_cache_") as warm_dir:
        cold, report = [], None
        for i in range(max(cold_runs, 1)):
            directory = Path(warm_dir) / f"cold{i}"  # empty: a cache miss every time
            compile_ms, report = cold_compile(spec, arch, directory)
            start = time.perf_counter()
            _load_module(spec, compile_spec(spec, arch, cache_directory=directory).cubin)  # the child's entry
            cold.append(compile_ms + (time.perf_counter() - start) * 1e3)
        out["compile_cold"] = {**_compile_fields(cold), **report}

        def warm_once() -> float:
            start = time.perf_counter()
            _load_module(spec, compile_spec(spec, arch, cache_directory=Path(warm_dir) / "cold0").cubin)
            return (time.perf_counter() - start) * 1e3

        out["compile_warm"] = _compile_fields([warm_once() for _ in range(max(warm_runs, MIN_RUNS))])
    return out


def cold_compile(spec: Any, arch: str, directory: Path) -> tuple[float, dict[str, Any]]:
    """(ms, report fields) of ``compile_spec`` into the empty cache ``directory`` in a new Python process with
    the driver's JIT cache off (``runtime.compile.compile_in_new_process``; no GPU needed): NVRTC's seconds
    and ptxas's registers, spills and static shared memory. Raises when the child fails or its compile came
    back cached or without ptxas's report (then it was not a compile)."""
    from flashrnn_core.runtime.compile import compile_in_new_process

    result, wall_s = compile_in_new_process(spec, arch, cache_directory=directory)
    if result.cached or result.resources is None:
        raise RuntimeError(f"{spec.name()}: the cold compile was not one (cached: {result.cached}, ptxas "
                           f"report: {result.resources is not None})")
    res = result.resources
    return wall_s * 1e3, {"nvrtc_s": result.seconds, "registers": res.registers,
                          "spill_stores": res.spill_stores, "smem_static": res.smem_static}


def _load_module(spec: Any, cubin: bytes) -> Any:
    """Load the cubin into the current context and look the entry up, the second half of ``get_kernel``."""
    from cuda.core import ObjectCode

    return ObjectCode.from_cubin(cubin, name=spec.name()).get_kernel(spec.entry)


def _compile_fields(times_ms: list[float]) -> dict[str, Any]:
    from .timing import statistics

    median, p10, p90 = statistics(times_ms)
    return {"median_ms": median, "p10_ms": p10, "p90_ms": p90, "runs": len(times_ms)}


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=SUITES, default="reference")
    p.add_argument("--backends", default=None,
                   help="comma list (default: every backend present; vanilla only on the CPU or when named)")
    p.add_argument("--functions", default=",".join(FUNCTIONS), help="cells, comma list")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="the suite's storage dtype (default bfloat16, the reference's; dry run float32)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<date>-<gpu>-<suite>.json)")
    p.add_argument("--runs", type=int, default=None,
                   help=f"timed runs a row (at least {MIN_RUNS} on the GPU; default {MIN_RUNS}, dry run {DRY_RUNS})")
    p.add_argument("--cold-runs", type=int, default=1,
                   help="compile suite: cold compiles a kernel (each takes seconds; warm loads take --runs)")
    p.add_argument("--loop", choices=("all", "first", "none"), default="first",
                   help="plain PyTorch loop baseline: every shape, the first of each cell and pass, or none")
    p.add_argument("--cudnn-dtypes", default=None,
                   help="cuDNN dtypes timed for baseline_best_ms (the row's dtype is always timed; default "
                        f"{','.join(baselines.CUDNN_DTYPES)}, dry run none)")
    p.add_argument("--spin-ms", type=float, default=SPIN_MS, help="GPU spin before each timed call (0: none)")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="start no new shape after this many seconds; the rest get 'not run' rows (0: no limit)")
    p.add_argument("--shard", default=None, metavar="K/M",
                   help="run every M-th shape from the K-th, into <out>-shardKofM.json (python -m bench.shard "
                        "merges the M files; bench/device_check.sh runs one shard a GPU)")
    p.add_argument("--heads", default=None, metavar="NxD,...",
                   help="heads suite: the head shapes to time, e.g. 5x144,1x640 (default: "
                        + ",".join(f"{n}x{d}" for n, d in ODD_CLUSTER_HEADS) + ")")
    p.add_argument("--dry-run", action="store_true", help="CPU only: vanilla on NumPy at tiny sizes")
    p.add_argument("--report", default=None, metavar="DIR", help="also write plots and a markdown table to DIR")
    return p.parse_args(argv)


def parse_heads(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """``--heads`` ("5x144,1x640") as (N, D) pairs; None where not given."""
    if not text:
        return None
    pairs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        n, sep, d = item.partition("x")
        if not (sep and n.isdigit() and d.isdigit() and int(n) > 0 and int(d) > 0):
            raise ValueError(f"--heads: expected NxD items such as 5x144, got {item!r}")
        pairs.append((int(n), int(d)))
    return tuple(pairs)


def choose_backends(requested: str | None, gpu: bool) -> tuple[list[str], dict[str, str | None]]:
    """(backends to run, absent ones -> reason). On the CPU only vanilla can run; on the GPU vanilla is left out
    unless named (its per-step Python loop would dominate the suite's time)."""
    from flashrnn_core.backends import available_backends

    present = available_backends()
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        unknown = [n for n in names if n not in present]
        if unknown:
            raise SystemExit(f"--backends: unknown {unknown}; known: {', '.join(present)}")
    elif gpu:
        names = [n for n in present if n != "vanilla"]
    else:
        names = ["vanilla"]
    absent = {n: present[n] for n in names}
    if not gpu:  # NumPy arrays: the GPU backends cannot run here, whatever their import says
        absent.update({n: f"backend {n!r} needs a GPU (dry run on the CPU)" for n in names if n != "vanilla"})
    return names, absent


def cudnn_dtypes(requested: str | None, gpu: bool) -> tuple[str, ...]:
    if requested is None:
        return baselines.CUDNN_DTYPES if gpu else ()
    return tuple(d.strip() for d in requested.split(",") if d.strip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        shard = parse_shard(args.shard)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    gpu = not args.dry_run and gpu_present()
    if not gpu and not args.dry_run:
        raise SystemExit("no GPU visible to CuPy: run on a GPU machine, or pass --dry-run for the CPU pipeline check")
    names, absent = choose_backends(args.backends, gpu)
    functions = [f.strip() for f in args.functions.split(",") if f.strip()]
    runs = max(args.runs or MIN_RUNS, MIN_RUNS) if gpu else (args.runs or DRY_RUNS)
    opts = Options(args.suite, names, absent, runs, args.spin_ms if gpu else 0.0, args.loop, args.budget_s,
                   cudnn_dtypes(args.cudnn_dtypes, gpu), gpu)
    header = {"suite": args.suite, **({"dtype": args.dtype} if args.dtype else {}),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "commit": git_commit(), **environment(gpu), "dry_run": args.dry_run,
              "protocol": {"runs": opts.runs, "warmup": 3 if gpu else 1, "spin_ms": opts.spin_ms, "loop": opts.loop,
                           "budget_s": opts.budget_s, "timer": "cuda events" if gpu else "perf_counter"}}
    if shard:
        header["shard"] = args.shard
    out = shard_path(Path(args.out) if args.out else default_out(args.suite, header["gpu"], args.dry_run), shard)
    results = Results(out, header)
    try:
        heads = parse_heads(args.heads)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if heads and args.suite != "heads":
        raise SystemExit(f"--heads: only the heads suite takes head shapes, not --suite {args.suite}")
    shapes = take_shard(suite_shapes(args.suite, functions, args.dry_run, args.dtype, heads), shard)
    if args.suite == "compile":
        run_compile_suite(opts, shapes, results, args.cold_runs)
    elif args.suite == "step":
        run_step_suite(opts, shapes, results)
    elif args.suite == "varlen":
        run_varlen_suite(opts, shapes, results)
    else:
        run_timing_suite(opts, shapes, results)
    results.write()
    print(f"wrote {out} ({len(results.doc['rows'])} rows)")
    if args.report:
        from . import report

        report.main([str(out), "--plots", args.report, "--markdown", str(Path(args.report) / "README.md")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
