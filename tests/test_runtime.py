"""The runtime: cache behaviour with real NVRTC compiles for sm_80 and sm_90 (no GPU needed), the ptxas report
and ``python -m flashrnn_core.compile``; on a GPU, kernels compiled, cached, loaded and launched on CuPy streams.

Test kernels are written into a temporary source root (never into cuda_src/); every test has its own cache
directory through ``FLASHRNN_CORE_CACHE``.
"""

from __future__ import annotations

import dataclasses

import importlib
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cuda.core")

from flashrnn_core import compile as compile_cmd
from flashrnn_core.errors import CompileError, KernelNotCachedError
from flashrnn_core.runtime import (
    KernelSpec,
    Resources,
    compile_spec,
    is_whole_elf,
    parse_ptxas_report,
)
from flashrnn_core.runtime.compile import ptxas_reports
from flashrnn_core.runtime import compile as rt_compile

rt_launch = importlib.import_module("flashrnn_core.runtime.launch")  # the module; the package exports launch()

REPO = Path(__file__).resolve().parent.parent

# k.cu -> inc/offset.cuh -> inc/value.cuh (quoted, relative to the including header): the key must see both.
KERNEL = """#include "inc/offset.cuh"
extern "C" __global__ void fill(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = VALUE + OFFSET + NESTED;
}
"""
OFFSET_H = '#include "value.cuh"\n#define OFFSET 1.0f\n'
VALUE_H = "#define NESTED 0.0f\n"


def accumulating_kernel(name: str, live: int, bounds: str = "") -> str:
    """A kernel that keeps ``live`` float accumulators alive over a loop: ptxas needs about that many registers."""
    return f"""
extern "C" __global__ void {bounds} {name}(const float* in, float* out, int n) {{
    float acc[{live}];
#pragma unroll
    for (int j = 0; j < {live}; ++j) acc[j] = in[j * n + threadIdx.x];
    for (int r = 0; r < n; ++r) {{
#pragma unroll
        for (int j = 0; j < {live}; ++j) acc[j] = acc[j] * acc[(j + 1) % {live}] + in[r];
    }}
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < {live}; ++j) s += acc[j];
    out[threadIdx.x] = s;
}}
"""


# 160 live accumulators under a 64-register cap (1024 threads, 1 block/SM): ptxas must spill.
SPILLING_KERNEL = accumulating_kernel("spill", 160, "__launch_bounds__(1024, 1)")
SMEM_KERNEL = """extern "C" __global__ void smem(float* out, int n) {
    extern __shared__ float buf[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = float(i);
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = buf[n - 1];
}
"""
CLUSTER_KERNEL = """extern "C" __global__ void cluster_rank(int* out) {
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    if (threadIdx.x == 0) out[blockIdx.x] = int(rank);
}
"""
# Two entries of one source (alternating.cu's forward and backward): one program, one cache key, two reports.
TWO_ENTRIES_KERNEL = ('extern "C" __global__ void light(float* out) { out[threadIdx.x] = 1.0f; }\n'
                      + accumulating_kernel("heavy", 48))
SPEC = KernelSpec("k.cu", "fill", (("VALUE", "2.0f"),), "test fill")
SPILL_SPEC = KernelSpec("spill.cu", "spill", label="spilling kernel")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "inc").mkdir(parents=True)
    for name, text in {"k.cu": KERNEL, "inc/offset.cuh": OFFSET_H, "inc/value.cuh": VALUE_H,
                       "spill.cu": SPILLING_KERNEL, "smem.cu": SMEM_KERNEL, "cluster.cu": CLUSTER_KERNEL,
                       "two.cu": TWO_ENTRIES_KERNEL}.items():
        (root / name).write_text(text)
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(directory))
    for switch in ("FLASHRNN_CORE_LINEINFO", "FLASHRNN_CORE_NEVER_COMPILE", "FLASHRNN_CORE_SAVE_SOURCE"):
        monkeypatch.delenv(switch, raising=False)
    rt_compile._warned.clear()  # "warn once" is per process; each test starts afresh
    return directory


def compiled(spec: KernelSpec, arch: str, src: Path, cache: Path):
    return compile_spec(spec, arch, root=src, cache_directory=cache)


def cubin_entries(cache: Path) -> list[Path]:
    return [p for p in (cache / "programs").rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"]


# ---- cache: hit, miss after any change of what the binary depends on ----------------------------------------


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_second_call_is_a_silent_hit(src, cache, arch, caplog):
    caplog.set_level("INFO", logger="flashrnn_core")
    first = compiled(SPEC, arch, src, cache)
    assert not first.cached and is_whole_elf(first.cubin) and "Used" in first.log
    assert [r.getMessage() for r in caplog.records] == [f"compiling test fill {arch} ... {first.seconds:.1f} s"]
    caplog.clear()
    second = compiled(SPEC, arch, src, cache)
    assert second.cached and second.cubin == first.cubin and second.resources == first.resources
    assert second.log == "" and caplog.records == []  # nothing logged on a warm hit


def _change(src: Path, what: str, monkeypatch) -> tuple[KernelSpec, str]:
    """Change one thing the binary depends on; return the spec and arch to compile next."""
    if what == "source":
        (src / "k.cu").write_text(KERNEL.replace("out[i] =", "out[i] = 0.5f +"))
    elif what == "header":
        (src / "inc" / "offset.cuh").write_text(OFFSET_H.replace("1.0f", "3.0f"))
    elif what == "nested header":
        (src / "inc" / "value.cuh").write_text(VALUE_H.replace("0.0f", "5.0f"))
    elif what == "lineinfo":
        monkeypatch.setenv("FLASHRNN_CORE_LINEINFO", "1")
    elif what == "define":
        return KernelSpec("k.cu", "fill", (("VALUE", "4.0f"),), "test fill"), "sm_90"
    elif what == "arch":
        return SPEC, "sm_80"
    return SPEC, "sm_90"


@pytest.mark.parametrize("what", ["source", "header", "nested header", "define", "arch", "lineinfo"])
def test_any_change_rebuilds(src, cache, what, monkeypatch):
    before = compiled(SPEC, "sm_90", src, cache)
    spec, arch = _change(src, what, monkeypatch)
    after = compiled(spec, arch, src, cache)
    assert not after.cached and after.cubin != before.cubin
    assert compiled(spec, arch, src, cache).cached


def test_unrelated_header_changes_nothing(src, cache):
    compiled(SPEC, "sm_90", src, cache)
    (src / "inc" / "unused.cuh").write_text("#define UNUSED 1\n")
    assert compiled(SPEC, "sm_90", src, cache).cached


def test_nvrtc_version_is_part_of_the_key(src, cache, monkeypatch):
    keys = pytest.importorskip("cuda.core.utils._program_cache._keys")  # cuda.core's own key derivation
    if not hasattr(keys, "_nvrtc_version"):
        pytest.skip("this cuda.core derives the NVRTC version elsewhere")
    compiled(SPEC, "sm_90", src, cache)
    major, minor = keys._nvrtc_version()
    monkeypatch.setattr(keys, "_nvrtc_version", lambda: (major, minor + 1))
    assert not compiled(SPEC, "sm_90", src, cache).cached


# ---- cache: damaged entries, unwritable directories, concurrent processes -----------------------------------


@pytest.mark.parametrize("damage", ["half", "last 16 bytes", "not an ELF file"])
def test_damaged_entry_is_a_miss_rewritten_whole(src, cache, damage):
    good = compiled(SPEC, "sm_90", src, cache)
    [entry] = cubin_entries(cache)
    data = {"half": good.cubin[: len(good.cubin) // 2], "last 16 bytes": good.cubin[:-16],
            "not an ELF file": b"garbage" * 100}[damage]
    entry.write_bytes(data)  # what a crash, a full disk or a stray write leaves
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = compiled(SPEC, "sm_90", src, cache)
    assert not again.cached and again.cubin == good.cubin
    assert entry.read_bytes() == good.cubin
    assert compiled(SPEC, "sm_90", src, cache).cached


@pytest.mark.parametrize("driver_cache_off", [False, True])
def test_a_compile_log_without_its_ptxas_report_is_compiled_again_without_the_driver_cache(
        src, cache, monkeypatch, driver_cache_off):
    """On CUDA 13 a kernel the driver's JIT cache holds compiles with an empty log (no ptxas report): the compile
    runs again in a new process with CUDA_CACHE_DISABLE=1 and is cached with that report. Where the variable
    is set already (nothing would change), the cubin is returned but not cached, and the log is kept."""
    real, calls = rt_compile._nvrtc, []

    def from_driver_cache(*args):  # this process's compiles only: the new process compiles for real
        calls.append(real(*args))
        return dataclasses.replace(calls[-1], resources=None, log="")

    monkeypatch.setattr(rt_compile, "_nvrtc", from_driver_cache)
    if not driver_cache_off:
        monkeypatch.delenv("CUDA_CACHE_DISABLE", raising=False)
        result = compiled(SPEC, "sm_90", src, cache)
        assert len(calls) == 1 and result.resources == calls[0].resources and not result.cached
        assert compiled(SPEC, "sm_90", src, cache).cached and len(calls) == 1  # stored with its report
    else:
        monkeypatch.setenv("CUDA_CACHE_DISABLE", "1")
        with pytest.warns(RuntimeWarning, match="no ptxas report"):
            result = compiled(SPEC, "sm_90", src, cache)
        assert len(calls) == 1 and result.resources is None and is_whole_elf(result.cubin)
        assert not cubin_entries(cache) and list((cache / "logs").iterdir())
        monkeypatch.setattr(rt_compile, "_nvrtc", real)
        assert not compiled(SPEC, "sm_90", src, cache).cached


def test_compile_in_new_process_reports_a_real_compile(src, tmp_path):
    """The benchmarks' cold compile: a new process, an empty cache directory, NVRTC's report and its time."""
    result, wall_s = rt_compile.compile_in_new_process(SPEC, "sm_90", root=src, cache_directory=tmp_path / "c")
    assert not result.cached and result.resources is not None and is_whole_elf(result.cubin)
    assert 0 < result.seconds <= wall_s
    again, _ = rt_compile.compile_in_new_process(SPEC, "sm_90", root=src, cache_directory=tmp_path / "c")
    assert again.cached and again.resources == result.resources and again.cubin == result.cubin


def test_a_file_where_the_cache_should_be_falls_back_to_a_temporary_directory(src, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the cache directory should be")  # unwritable for root too
    with pytest.warns(RuntimeWarning, match="not writable"):
        first = compile_spec(SPEC, "sm_90", root=src, cache_directory=blocker / "cache")
    assert not first.cached and is_whole_elf(first.cubin)
    assert compile_spec(SPEC, "sm_90", root=src, cache_directory=blocker / "cache").cached  # in the fallback


def test_read_only_cache_directory_falls_back_to_a_temporary_directory(src, tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes into a 0o500 directory anyway; the regular-file case covers root")
    directory = tmp_path / "read-only"
    (directory / "programs").mkdir(parents=True)
    directory.chmod(0o500)
    (directory / "programs").chmod(0o500)
    try:
        with pytest.warns(RuntimeWarning, match="not writable"):
            result = compile_spec(SPEC, "sm_90", root=src, cache_directory=directory)
        assert is_whole_elf(result.cubin)
    finally:
        (directory / "programs").chmod(0o700)
        directory.chmod(0o700)


def _compile_in_child(args: tuple[str, str]) -> bytes | str:
    src, cache = args
    try:
        return compile_spec(SPEC, "sm_90", root=Path(src), cache_directory=Path(cache)).cubin
    except Exception as err:  # as text: an exception that does not unpickle would hang Pool.map
        return f"{type(err).__name__}: {err}"


def test_four_processes_compile_one_kernel_at_once(src, cache):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        cubins = pool.map(_compile_in_child, [(str(src), str(cache))] * 4)
    assert all(isinstance(c, bytes) and is_whole_elf(c) for c in cubins) and len(set(cubins)) == 1, cubins
    hit = compiled(SPEC, "sm_90", src, cache)
    assert hit.cached and hit.cubin == cubins[0] and hit.resources.registers > 0
    assert len(cubin_entries(cache)) == 1
    staging = cache / "programs" / "tmp"  # where FileStreamProgramCache stages a write
    assert not staging.exists() or not list(staging.iterdir())  # no partial entry left behind


# ---- errors and switches --------------------------------------------------------------------------------------


def test_compile_error_carries_log_options_and_numbered_source(src, cache):
    (src / "bad.cu").write_text('extern "C" __global__ void bad() {\n  undeclared_name = 1;\n}\n')
    with pytest.raises(CompileError) as info:
        compiled(KernelSpec("bad.cu", "bad", (("X", "1"),), label="broken kernel"), "sm_90", src, cache)
    err, text = info.value, str(info.value)
    assert "undeclared_name" in err.log and "broken kernel for sm_90" in text
    assert "    2    undeclared_name = 1;" in text
    assert "arch='sm_90'" in text and "('X', '1')" in text


def test_bad_arch_is_refused(src, cache):
    with pytest.raises(ValueError, match="sm_80"):
        compiled(SPEC, "90", src, cache)


def test_arch_suffix_asked_by_the_spec(src, cache):
    spec = KernelSpec("k.cu", "fill", SPEC.defines, "arch specific", min_sm=90, arch_suffix="a")
    result = compiled(spec, "sm_90", src, cache)
    assert not result.cached and "for 'sm_90a'" in result.log
    assert rt_compile.target_arch(spec, "sm_90") == "sm_90a" and rt_compile.target_arch(spec, "sm_90a") == "sm_90a"


def test_never_compile_raises_on_a_miss_only(src, cache, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_NEVER_COMPILE", "1")
    with pytest.raises(KernelNotCachedError, match="test fill"):
        compiled(SPEC, "sm_90", src, cache)
    monkeypatch.delenv("FLASHRNN_CORE_NEVER_COMPILE")
    compiled(SPEC, "sm_90", src, cache)
    monkeypatch.setenv("FLASHRNN_CORE_NEVER_COMPILE", "1")
    assert compiled(SPEC, "sm_90", src, cache).cached


def test_save_source_keeps_the_compiled_text(src, cache, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_SAVE_SOURCE", "1")
    compiled(SPEC, "sm_90", src, cache)
    [saved] = (cache / "sources").glob("fill-sm_90-*.cu")
    assert "#define VALUE 2.0f" in saved.read_text() and KERNEL in saved.read_text()


def test_default_cache_directory_holds_the_package_version(monkeypatch, tmp_path):
    from flashrnn_core.runtime import env

    monkeypatch.delenv("FLASHRNN_CORE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert env.cache_dir() == tmp_path / "flashrnn_core" / env.package_version()
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path / "mine"))
    assert env.cache_dir() == tmp_path / "mine"
    assert (env.source_root() / "fused_fw.cu").is_file()


# ---- the ptxas report and the resource check ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptxas_report_of_real_compiles(src, cache, arch):
    fine = compiled(SPEC, arch, src, cache)
    assert fine.resources.registers > 0 and fine.resources.spill_stores == 0
    assert compile_cmd.problems(SPEC, arch, fine.resources) == []
    spilling = compiled(SPILL_SPEC, arch, src, cache)
    assert spilling.resources.registers <= 64 and spilling.resources.spill_stores > 0
    assert any("spills" in p for p in compile_cmd.problems(SPILL_SPEC, arch, spilling.resources))
    assert compiled(SPILL_SPEC, arch, src, cache).resources == spilling.resources  # also on a hit


def test_shared_memory_limits_count_the_dynamic_amount():
    fine = Resources(registers=32, smem_static=1024, stack=0, spill_stores=0, spill_loads=0)
    big = KernelSpec("k.cu", "fill", label="big", smem_dynamic=200 * 1024)
    assert any("shared memory" in p for p in compile_cmd.problems(big, "sm_80", fine))  # > 163 KB
    assert compile_cmd.problems(big, "sm_90", fine) == []  # < 227 KB
    assert compile_cmd.problems(SPEC, "sm_90", Resources(256, 0, 0, 0, 0)) == ["256 registers > 255"]


def test_parse_ptxas_report_of_a_log():
    log = ("ptxas info    : Compiling entry function 'k2' for 'sm_90'\n"
           "ptxas info    : Function properties for k2\n"
           "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
           "ptxas info    : Used 10 registers, used 0 barriers, 380 bytes cmem[0]\n"
           "ptxas info    : Compiling entry function 'k' for 'sm_90'\n"
           "ptxas info    : Function properties for k\n"
           "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]\n")
    assert parse_ptxas_report(log, "k") == Resources(255, 1024, 8, 4, 4)  # not k2's, whose name starts alike
    assert parse_ptxas_report(log, "k2") == Resources(10, 0, 0, 0, 0)
    assert parse_ptxas_report(log, "other") is None
    assert ptxas_reports(log) == {"k2": Resources(10, 0, 0, 0, 0), "k": Resources(255, 1024, 8, 4, 4)}


@pytest.mark.parametrize("first", ["light", "heavy"])
def test_entries_of_one_program_each_read_their_own_report_from_the_cache(src, cache, first):
    """Entries that share a source and defines share a cache entry (the key is the program's); the one compiled
    second is a hit that reads its own ptxas report, not the first one's (a CI table once showed the forward's
    registers for alternating.cu's backward)."""
    specs = {name: KernelSpec("two.cu", name, label=name) for name in ("light", "heavy")}
    alone = {name: compile_spec(spec, "sm_90", root=src, use_cache=False).resources for name, spec in specs.items()}
    assert alone["heavy"].registers > alone["light"].registers + 16
    second = "light" if first == "heavy" else "heavy"
    assert not compiled(specs[first], "sm_90", src, cache).cached
    hit = compiled(specs[second], "sm_90", src, cache)
    assert hit.cached and hit.resources == alone[second]
    assert compiled(specs[first], "sm_90", src, cache).resources == alone[first]


# ---- python -m flashrnn_core.compile -------------------------------------------------------------------------


def test_compile_command_fails_on_a_spill_and_prints_the_table(src, cache, monkeypatch, capsys):
    variants = [SPEC, SPILL_SPEC, KernelSpec("k.cu", "fill", SPEC.defines, "sm_90 only", min_sm=90)]
    monkeypatch.setattr(compile_cmd, "all_variants", lambda processes=1: (variants, None))
    monkeypatch.setattr(rt_compile.env, "source_root", lambda: src)
    assert compile_cmd.main(["--arch", "sm_80,sm_90", "--check", "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "3 kernel variants, 5 compiles for sm_80, sm_90" in out
    rows = [line for line in out.splitlines() if line.startswith("spilling kernel")]
    assert len(rows) == 2 and all("spills" in row for row in rows)  # it spills for both architectures
    assert "3 ok, 2 failed; 4 compiled, 1 from the cache" in out  # "sm_90 only" is the same binary as SPEC
    # --labels FILE: exactly the listed variants (the spilling one left out)
    listed = cache.parent / "labels.txt"
    listed.write_text(f"{SPEC.label}\n\nsm_90 only\n")
    assert compile_cmd.main(["--arch", "sm_80,sm_90", "--check", "--jobs", "1", "--labels", str(listed)]) == 0
    assert "2 kernel variants, 3 compiles for sm_80, sm_90" in capsys.readouterr().out
    # --list: the labels built for these architectures, sorted, one a line, nothing compiled
    assert compile_cmd.main(["--arch", "sm_80", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == sorted([SPEC.label, SPILL_SPEC.label])
    monkeypatch.setattr(compile_cmd, "all_variants", lambda processes=1: (variants[:1], None))
    assert compile_cmd.main(["--arch", "sm_80,sm_90", "--check", "--jobs", "1"]) == 0


def test_compile_command_without_a_registry_reports_no_variants(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flashrnn_core.backends", None)  # "from .backends import ..." fails
    assert compile_cmd.main(["--arch", "sm_80,sm_90", "--check"]) == 0
    assert "0 kernel variants, 0 compiles" in capsys.readouterr().out


@pytest.mark.slow
def test_compile_command_checks_every_shipped_variant():
    """The real command over every variant the backends declare, in the default cache (so CI's own run of it
    afterwards is warm). Minutes on 2 cores when the cache is cold."""
    try:
        count = len(compile_cmd.all_variants()[0])
    except Exception as err:  # another module's registry is broken: its own tests say so
        pytest.skip(f"the backends cannot list their kernel variants here: {err}")
    run = subprocess.run([sys.executable, "-m", "flashrnn_core.compile", "--arch", "sm_80,sm_90", "--check"],
                         check=False, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert f"{count} kernel variants" in run.stdout and " 0 failed" in run.stdout


# ---- launch arguments (no GPU needed) -------------------------------------------------------------------------


class _DeviceArray:
    __cuda_array_interface__ = {"data": (0xDEAD000, False), "shape": (4,), "typestr": "<f4", "version": 3}


def test_launch_arguments_are_pointers_or_numpy_scalars():
    assert rt_launch._argument(_DeviceArray()) == 0xDEAD000
    assert rt_launch._argument(None) == 0
    scalar = np.int32(7)
    assert rt_launch._argument(scalar) is scalar
    for bad in (7, 1.5, True, np.zeros(3)):
        with pytest.raises(TypeError):
            rt_launch._argument(bad)


def test_launch_configs_are_memoised_and_opt_in_above_48kb():
    config, opt_in, non_portable = rt_launch._config(4, [128], 64 * 1024, None, False)
    assert tuple(config.grid) == (4, 1, 1) and tuple(config.block) == (128, 1, 1) and opt_in == 64 * 1024
    assert rt_launch._config(4, [128], 64 * 1024, None, False)[0] is config and not non_portable
    assert rt_launch._config((4, 1), 128, 1024, None, False)[1] == 0
    with pytest.raises(ValueError, match="whole number of clusters"):
        rt_launch._config(6, 128, 0, (4, 1, 1), False)


# ---- on a GPU -------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_launch_on_a_non_default_stream(src, cache, caplog):
    import cupy

    from flashrnn_core.runtime import get_kernel, launch

    caplog.set_level("INFO", logger="flashrnn_core")
    kernel = get_kernel(SPEC, root=src)
    assert get_kernel(SPEC, root=src) is kernel  # loaded once per process
    assert len([r for r in caplog.records if "compiling" in r.getMessage()]) == 1
    stream = cupy.cuda.Stream(non_blocking=True)
    out = cupy.full(1000, np.nan, dtype=cupy.float32)
    with stream:
        launch(kernel, 4, 256, out, np.int32(1000))  # CuPy's current stream
    stream.synchronize()
    assert bool((out == 3.0).all())
    out2 = cupy.zeros(1000, dtype=cupy.float32)
    launch(kernel, (4,), (256,), out2, np.int32(999), stream=stream)  # a stream given explicitly
    stream.synchronize()
    assert bool((out2[:999] == 3.0).all()) and float(out2[999]) == 0.0
    with pytest.raises(TypeError, match="2 arguments"):
        launch(kernel, 4, 256, out)


@pytest.mark.gpu
def test_launch_with_more_than_48kb_of_dynamic_shared_memory(src, cache):
    import cupy

    from flashrnn_core.runtime import get_kernel, launch

    kernel = get_kernel(KernelSpec("smem.cu", "smem", label="smem"), root=src)
    n = 100 * 1024 // 4
    out = cupy.zeros(2, cupy.float32)
    launch(kernel, 2, 256, out, np.int32(n), shmem=n * 4)
    assert out.tolist() == [n - 1.0, n - 1.0]


@pytest.mark.gpu
@pytest.mark.parametrize("cluster", [4, 16])
def test_cluster_launch_counts_the_grid_in_blocks(src, cache, cluster):
    import cupy

    from flashrnn_core.runtime import device_arch, get_kernel, launch

    if int(device_arch()[3:]) < 90:
        pytest.skip("thread block clusters need sm_90")
    kernel = get_kernel(KernelSpec("cluster.cu", "cluster_rank", label="cluster rank", min_sm=90), root=src)
    out = cupy.full(2 * cluster, -1, cupy.int32)
    launch(kernel, 2 * cluster, 32, out, cluster=(cluster, 1, 1))  # 16 needs the non-portable attribute
    assert out.tolist() == list(range(cluster)) * 2


@pytest.mark.gpu
def test_cooperative_launch(src, cache):
    import cupy

    from flashrnn_core.runtime import get_kernel, launch

    out = cupy.zeros(256, cupy.float32)
    launch(get_kernel(SPEC, root=src), 2, 128, out, np.int32(256), cooperative=True)
    assert bool((out == 3.0).all())


def test_compile_error_survives_pickling():
    """Process pools pickle exceptions: a CompileError must come back whole (it used to hang Pool.map)."""
    import pickle

    err = CompileError("broken kernel", "the log", ["arch=sm_90"], "line one\nline two\n")
    back = pickle.loads(pickle.dumps(err))
    assert (back.label, back.log, back.options, back.source) == (err.label, err.log, err.options, err.source)
    assert str(back) == str(err)
