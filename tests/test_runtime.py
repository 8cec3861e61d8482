"""The runtime's cache and compile behaviour, with real NVRTC compiles for sm_80 and sm_90 (no GPU needed),
and (on a GPU) a kernel compiled, cached, loaded and launched on a non-default CuPy stream."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cuda.core")

from flashrnn_core import compile as compile_cmd  # noqa: E402
from flashrnn_core.errors import CompileError, KernelNotCachedError  # noqa: E402
from flashrnn_core.runtime import KernelSpec, compile_spec, is_whole_elf, parse_ptxas_report  # noqa: E402
from flashrnn_core.runtime import compile as rt_compile  # noqa: E402

KERNEL = """#include "inc/offset.cuh"
extern "C" __global__ void fill(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = VALUE + OFFSET;
}
"""
SPILLING_KERNEL = """
// 160 live accumulators under a 64-register cap (1024 threads, 1 block/SM): ptxas must spill.
extern "C" __global__ void __launch_bounds__(1024, 1) spill(const float* in, float* out, int n) {
    float acc[160];
#pragma unroll
    for (int j = 0; j < 160; ++j) acc[j] = in[j * n + threadIdx.x];
    for (int r = 0; r < n; ++r) {
#pragma unroll
        for (int j = 0; j < 160; ++j) acc[j] = acc[j] * acc[(j + 1) % 160] + in[r];
    }
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 160; ++j) s += acc[j];
    out[threadIdx.x] = s;
}
"""
SPEC = KernelSpec("k.cu", "fill", (("VALUE", "2.0f"),), "test fill")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "inc").mkdir(parents=True)
    (root / "k.cu").write_text(KERNEL)
    (root / "inc" / "offset.cuh").write_text("#define OFFSET 1.0f\n")
    (root / "spill.cu").write_text(SPILLING_KERNEL)
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(directory))
    rt_compile._warned.clear()
    return directory


def compiled(spec, arch, src, cache):
    return compile_spec(spec, arch, root=src, cache_directory=cache)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_hit_after_miss(src, cache, arch, caplog):
    caplog.set_level("INFO", logger="flashrnn_core")
    first = compiled(SPEC, arch, src, cache)
    assert not first.cached and is_whole_elf(first.cubin)
    assert [r.message for r in caplog.records if "compiling" in r.message] == [
        f"compiling test fill {arch} ... {first.seconds:.1f} s"]
    caplog.clear()
    second = compiled(SPEC, arch, src, cache)
    assert second.cached and second.cubin == first.cubin and second.resources == first.resources
    assert not [r for r in caplog.records if "compiling" in r.message]  # nothing logged on a warm hit


def _edit(src: Path, what: str):
    if what == "source":
        (src / "k.cu").write_text(KERNEL.replace("out[i] =", "out[i] = 0.5f +"))
    elif what == "header":
        (src / "inc" / "offset.cuh").write_text("#define OFFSET 3.0f\n")
    return {"define": KernelSpec("k.cu", "fill", (("VALUE", "4.0f"),), "test fill")}.get(what, SPEC)


@pytest.mark.parametrize("what", ["source", "header", "define"])
def test_edit_rebuilds(src, cache, what):
    before = compiled(SPEC, "sm_90", src, cache)
    after = compiled(_edit(src, what), "sm_90", src, cache)
    assert not after.cached and after.cubin != before.cubin


def test_arch_and_lineinfo_are_part_of_the_key(src, cache, monkeypatch):
    compiled(SPEC, "sm_90", src, cache)
    assert not compiled(SPEC, "sm_80", src, cache).cached
    monkeypatch.setenv("FLASHRNN_CORE_LINEINFO", "1")
    assert not compiled(SPEC, "sm_90", src, cache).cached


def test_corrupt_entry_is_a_miss(src, cache):
    good = compiled(SPEC, "sm_90", src, cache)
    entries = [p for p in (cache / "programs").rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"]
    assert len(entries) == 1
    entries[0].write_bytes(good.cubin[: len(good.cubin) // 2])  # truncated, as a crash or a full disk leaves it
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = compiled(SPEC, "sm_90", src, cache)
    assert not again.cached and again.cubin == good.cubin
    assert compiled(SPEC, "sm_90", src, cache).cached  # the entry was rewritten whole


def test_unwritable_cache_falls_back_to_a_temporary_directory(src, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")  # fails for root too, unlike chmod
    with pytest.warns(RuntimeWarning, match="not writable"):
        first = compile_spec(SPEC, "sm_90", root=src, cache_directory=blocker / "cache")
    assert not first.cached and is_whole_elf(first.cubin)
    assert compile_spec(SPEC, "sm_90", root=src, cache_directory=blocker / "cache").cached


def _compile_in_child(args):
    src, cache = args
    result = compile_spec(SPEC, "sm_90", root=Path(src), cache_directory=Path(cache))
    return result.cubin


def test_four_processes_compile_one_kernel(src, cache):
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        cubins = pool.map(_compile_in_child, [(str(src), str(cache))] * 4)
    assert all(is_whole_elf(c) for c in cubins) and len(set(cubins)) == 1
    hit = compiled(SPEC, "sm_90", src, cache)
    assert hit.cached and hit.cubin == cubins[0]
    assert not list((cache / "programs").rglob("*.tmp*"))  # no partial entry left behind


def test_compile_error_carries_log_options_and_numbered_source(src, cache):
    (src / "bad.cu").write_text('extern "C" __global__ void bad() {\n  undeclared_name = 1;\n}\n')
    with pytest.raises(CompileError) as info:
        compiled(KernelSpec("bad.cu", "bad", label="broken kernel"), "sm_90", src, cache)
    text = str(info.value)
    assert "undeclared_name" in info.value.log and "broken kernel" in text
    assert "    2    undeclared_name = 1;" in text and "arch='sm_90'" in text


def test_never_compile_raises_on_a_miss(src, cache, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_NEVER_COMPILE", "1")
    with pytest.raises(KernelNotCachedError):
        compiled(SPEC, "sm_90", src, cache)


def test_save_source_keeps_the_compiled_text(src, cache, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_SAVE_SOURCE", "1")
    compiled(SPEC, "sm_90", src, cache)
    saved = list((cache / "sources").glob("fill-*.cu"))
    assert len(saved) == 1 and "#define VALUE 2.0f" in saved[0].read_text()


def test_resource_report_and_check(src, cache):
    fine = compiled(SPEC, "sm_90", src, cache)
    assert fine.resources.registers > 0 and compile_cmd.problems(SPEC, "sm_90", fine.resources) == []
    spill_spec = KernelSpec("spill.cu", "spill", label="spilling kernel")
    spilling = compiled(spill_spec, "sm_90", src, cache)
    assert spilling.resources.spill_stores > 0
    assert any("spills" in p for p in compile_cmd.problems(spill_spec, "sm_90", spilling.resources))
    too_much_smem = KernelSpec("k.cu", "fill", SPEC.defines, "big", smem_dynamic=200 * 1024)
    assert compile_cmd.problems(too_much_smem, "sm_80", fine.resources)  # 200 KB > 163 KB on sm_80
    assert not compile_cmd.problems(too_much_smem, "sm_90", fine.resources)  # < 227 KB on sm_90


def test_parse_ptxas_report_of_a_log():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90'\nptxas info    : Function properties for k\n"
           "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]\n")
    assert parse_ptxas_report(log, "k") == rt_compile.Resources(255, 1024, 8, 4, 4)
    assert parse_ptxas_report(log, "other") is None


def test_compile_command_checks_every_variant(src, cache, monkeypatch, capsys):
    variants = [SPEC, KernelSpec("spill.cu", "spill", label="spilling kernel"),
                KernelSpec("k.cu", "fill", SPEC.defines, "sm_90 only", min_sm=90)]
    monkeypatch.setattr(compile_cmd, "all_variants", lambda: variants)
    monkeypatch.setattr(rt_compile.env, "source_root", lambda: src)
    assert compile_cmd.main(["--arch", "sm_80,sm_90", "--check", "--jobs", "1"]) == 1  # the spilling kernel
    out = capsys.readouterr().out
    assert "5 compiles" in out and "spills" in out and "3 ok, 2 failed" in out  # it spills for both architectures
    monkeypatch.setattr(compile_cmd, "all_variants", lambda: variants[:1])
    assert compile_cmd.main(["--arch", "sm_80,sm_90", "--check"]) == 0


@pytest.mark.gpu
def test_launch_on_a_non_default_stream(src, cache):
    import cupy

    from flashrnn_core.runtime import get_kernel, launch
    from flashrnn_core.runtime import env as rt_env

    rt_env_root = rt_env.source_root
    try:
        rt_env.source_root = lambda: src
        kernel = get_kernel(SPEC)
        stream = cupy.cuda.Stream(non_blocking=True)
        out = cupy.full(1000, np.nan, dtype=cupy.float32)
        with stream:
            launch(kernel, (4,), (256,), out, np.int32(1000))
        stream.synchronize()
        assert bool((out == 3.0).all())
    finally:
        rt_env.source_root = rt_env_root


@pytest.mark.gpu
def test_launch_with_more_than_48kb_of_shared_memory(src, cache):
    import cupy

    from flashrnn_core.runtime import get_kernel, launch
    from flashrnn_core.runtime import env as rt_env

    (src / "smem.cu").write_text(
        'extern "C" __global__ void smem(float* out) { extern __shared__ float buf[];\n'
        "  int n = 100 * 1024 / 4; for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = i;\n"
        "  __syncthreads(); if (threadIdx.x == 0) out[0] = buf[n - 1]; }\n")
    original = rt_env.source_root
    try:
        rt_env.source_root = lambda: src
        kernel = get_kernel(KernelSpec("smem.cu", "smem", label="smem"))
        out = cupy.zeros(1, cupy.float32)
        launch(kernel, 1, 256, out, shmem=100 * 1024)
        assert float(out[0]) == 100 * 1024 / 4 - 1
    finally:
        rt_env.source_root = original
