"""Compile a kernel variant with NVRTC, through cuda.core's program cache.

A variant is a ``KernelSpec``: a source under ``cuda_src/``, the ``extern "C"`` entry it defines and the ``-D``
defines that fix its template parameters. Why defines and unmangled entries rather than ``name_expressions``:
cuda.core's program cache stores only the binary, not NVRTC's symbol map, so a cached templated kernel could
not be found by name again; an ``extern "C"`` entry needs no map.

The cache is cuda.core's ``FileStreamProgramCache`` (atomic ``os.replace`` writes, so concurrent processes
never read half an entry) with keys from ``make_program_cache_key`` (source, options, NVRTC version, target).
What they do not give is added here, in one place: an ``extra_digest`` over every project header the source
includes (``Program.compile(cache=...)`` refuses ``include_path`` for that reason), a check that an entry is a
whole ELF file (a truncated one is a miss, recompiled, with one warning), the ptxas resource report kept beside
the binary (a hit has no compile log to parse), and a per-process temporary directory when the cache
directory cannot be written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
import struct
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import CompileError, KernelNotCachedError
from . import env

log = logging.getLogger("flashrnn_core")

#: Bump when the way a source becomes a binary changes in a way the key cannot see.
_RUNTIME_DIGEST_VERSION = b"flashrnn_core-runtime-3"  # 3: a report per entry
#: ``#include "x"`` and ``#include <x>``: quoted ones are searched beside the including file, then in the
#: source root; angle ones only in the source root (anything not found there is a toolkit header).
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*(?:"([^"]+)"|<([^>]+)>)', re.MULTILINE)
_ARCH = re.compile(r"^sm_(\d+)([a-z]?)$")
_RESOURCES_SUFFIX = b"/ptxas-resources"


@dataclass(frozen=True)
class KernelSpec:
    """One compilable kernel variant (hashable: the runtime memoises loaded kernels by it).

    source: path under ``cuda_src/``; entry: the ``extern "C" __global__`` function it defines; defines: ``-D``
    macros (the template parameters), in a fixed order; label: for logs and tables ("lstm cuda fw bfloat16");
    min_sm: the oldest architecture it compiles for (90 for cluster kernels); smem_dynamic: the dynamic shared
    memory a launch asks for, bytes (``compile --check`` adds it to the static amount); arch_suffix: "a" for a
    kernel that uses architecture-specific instructions (wgmma, setmaxnreg: ``sm_90a``), else "".
    """

    source: str
    entry: str
    defines: tuple[tuple[str, str], ...] = ()
    label: str = ""
    min_sm: int = 80
    smem_dynamic: int = 0
    arch_suffix: str = ""

    def name(self) -> str:
        """The label, or the entry and its defines when there is none."""
        return self.label or f"{self.entry}({', '.join(f'{k}={v}' for k, v in self.defines)})"


@dataclass(frozen=True)
class Resources:
    """ptxas's report for one entry: registers a thread; static shared memory, stack frame and spills (bytes)."""

    registers: int
    smem_static: int
    stack: int
    spill_stores: int
    spill_loads: int


@dataclass
class CompileResult:
    """A compiled variant: the cubin, NVRTC's log ("" on a cache hit), ptxas's report, whether it came from the
    cache, and the compile time in seconds (0 on a hit)."""

    cubin: bytes
    log: str
    resources: Resources | None
    cached: bool
    seconds: float = 0.0


def target_arch(spec: KernelSpec, arch: str) -> str:
    """``arch`` checked ("sm_80", "sm_90", "sm_90a", ...), with the suffix the spec asks for added."""
    match = _ARCH.match(arch)
    if match is None:
        raise ValueError(f"arch: expected a name like 'sm_80', 'sm_90' or 'sm_90a', got {arch!r}")
    if spec.arch_suffix and not match.group(2):
        return arch + spec.arch_suffix
    return arch


def sm_number(arch: str) -> int:
    """``sm_90a`` -> 90."""
    match = _ARCH.match(arch)
    if match is None:
        raise ValueError(f"arch: expected a name like 'sm_80', 'sm_90' or 'sm_90a', got {arch!r}")
    return int(match.group(1))


def parse_ptxas_report(log_text: str, entry: str) -> Resources | None:
    """Resources of ``entry`` from NVRTC's log of a compile with ``ptxas -v`` (None if it has no report).

    The report of an entry starts at "Function properties for <entry>" and holds two lines: "N bytes stack
    frame, N bytes spill stores, N bytes spill loads" and "Used N registers, ..., N bytes smem, ...". A part
    that is zero may be left out ("bytes smem" is, without shared memory), so a missing number counts as 0.
    """
    start = re.search(rf"Function properties for {re.escape(entry)}[ \t]*$", log_text, re.MULTILINE)
    if start is None:
        return None
    text = log_text[start.end():].split("Function properties for", 1)[0]
    if not re.search(r"Used \d+ registers", text):
        return None

    def number(pattern: str) -> int:
        match = re.search(pattern, text)
        return int(match.group(1)) if match else 0

    return Resources(
        registers=number(r"Used (\d+) registers"),
        smem_static=number(r"(\d+) bytes smem"),
        stack=number(r"(\d+) bytes stack frame"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
    )


def ptxas_reports(log_text: str) -> dict[str, Resources]:
    """The report of every entry in NVRTC's log: one program may define several entries (alternating.cu's
    forward and backward share their source and defines, so one cache key), each with its own resources."""
    entries = re.findall(r"Function properties for (\S+)[ \t]*$", log_text, re.MULTILINE)
    reports = {entry: parse_ptxas_report(log_text, entry) for entry in entries}
    return {entry: report for entry, report in reports.items() if report is not None}


def is_whole_elf(data: bytes) -> bool:
    """Whether ``data`` is a whole 64-bit little-endian ELF file (a cubin): the magic, and the program header
    table, the section header table and every section's contents lie inside the data. Any truncation removes
    one of them, so a cut-short cache entry fails this without a GPU."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 0x20)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 0x36)
    if e_shnum == 0 or e_shentsize < 64 or e_shoff + e_shentsize * e_shnum > len(data):
        return False
    if e_phoff + e_phentsize * e_phnum > len(data):
        return False
    for i in range(e_shnum):
        sh_type, _, _, sh_offset, sh_size = struct.unpack_from("<IIQQQQ", data, e_shoff + i * e_shentsize)[1:6]
        if sh_type != 8 and sh_offset + sh_size > len(data):  # 8: SHT_NOBITS (.bss-like, no bytes in the file)
            return False
    return True


def included_headers(source: Path, root: Path, text: str | None = None) -> list[Path]:
    """Every project header that the file ``source`` (its ``text`` when given) includes, transitively, sorted.

    Searched as NVRTC does: a quoted name beside the including file, then in ``root`` (the include path); an
    angle one in ``root`` only. Lines inside comments or ``#if 0`` count too: a header digested needlessly costs
    nothing, one missed would leave a stale entry. Names found nowhere here are toolkit headers (covered by
    ``toolkit_fingerprint``)."""
    root, source = root.resolve(), source.resolve()
    seen: set[Path] = set()
    pending = [(source.read_text() if text is None else text, source.parent)]
    while pending:
        text, base = pending.pop()
        for quoted, angled in _INCLUDE.findall(text):
            candidates = [base / quoted, root / quoted] if quoted else [root / angled]
            path = next((p.resolve() for p in candidates if p.is_file()), None)
            if path is not None and path not in seen:
                seen.add(path)
                pending.append((path.read_text(errors="replace"), path.parent))
    return sorted(seen)


@cache
def toolkit_include_dirs() -> tuple[str, ...]:
    """CUDA runtime and CCCL headers (bf16/fp16 types, ``<nv/target>``): the pip wheels found by
    ``cuda.pathfinder``, else ``$CUDA_HOME/include``."""
    dirs: list[str] = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        for lib in ("cudart", "cccl"):
            found = find_nvidia_header_directory(lib)
            if found and str(found) not in dirs:
                dirs.append(str(found))
    except Exception:  # an old cuda-pathfinder without it: CUDA_HOME below
        pass
    if not dirs:
        import os

        home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        dirs = [d for d in (f"{home}/include", f"{home}/include/cccl") if Path(d).is_dir()]
    return tuple(dirs)


@cache
def toolkit_fingerprint() -> bytes:
    """A digest of the toolkit headers kernels depend on (the key holds their directories, not their text):
    a header wheel upgraded in place changes it, so entries built with the old headers are not reused."""
    digest = hashlib.sha256()
    names = ("cuda_runtime_api.h", "cuda_bf16.hpp", "cuda_fp16.hpp", "cuda/std/__cccl/version.h")
    for directory in toolkit_include_dirs():
        for name in names:
            path = Path(directory) / name
            if path.is_file():
                digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.digest()


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor), as ``nvrtcVersion`` reports it."""
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    if int(err) != 0:
        raise RuntimeError(f"nvrtcVersion failed: {err}")
    return int(major), int(minor)


def _options(spec: KernelSpec, arch: str, root: Path) -> Any:
    from cuda.core import ProgramOptions

    return ProgramOptions(
        # The source's absolute path: NVRTC searches quoted includes of the source beside ``name`` (with a bare
        # file name, in the working directory), and ncu / compute-sanitizer find the file for -lineinfo.
        name=str((root / spec.source).resolve()),
        arch=arch,
        std="c++17",
        include_path=[str(root), *toolkit_include_dirs()],
        define_macro=[(k, str(v)) for k, v in spec.defines] or None,
        ptxas_options=["-v"],  # the resource report ``compile --check`` reads
        lineinfo=env.lineinfo(),
    )


_lock = threading.Lock()
_caches: dict[Path, Any] = {}
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """One ``RuntimeWarning`` per process and ``key`` (a damaged entry, an unwritable directory)."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def program_cache(directory: Path | None = None) -> Any:
    """The ``FileStreamProgramCache`` in ``<directory>/programs`` (default ``env.cache_dir()``), or one in a
    per-process temporary directory, with a warning, when that one cannot be written."""
    from cuda.core.utils import FileStreamProgramCache

    directory = Path(directory or env.cache_dir()) / "programs"
    with _lock:
        cache = _caches.get(directory)
    if cache is not None:
        return cache
    try:
        cache = FileStreamProgramCache(directory)
        # The constructor only makes directories (an existing read-only one passes): writing is what we need.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as err:
        fallback = Path(tempfile.mkdtemp(prefix="flashrnn_core-cache-"))
        _warn_once(f"unwritable:{directory}", f"flashrnn_core: the kernel cache directory {directory} is not "
                                              f"writable ({err}); using {fallback} for this process")
        cache = FileStreamProgramCache(fallback / "programs")
    with _lock:
        return _caches.setdefault(directory, cache)


def cache_key(spec: KernelSpec, arch: str, root: Path, code: str, options: Any) -> bytes:
    """cuda.core's key (code, options with the defines and the arch, NVRTC version, target) plus our digest of
    every project header the source includes and of the toolkit headers."""
    from cuda.core.utils import make_program_cache_key

    digest = hashlib.sha256(_RUNTIME_DIGEST_VERSION)
    digest.update(toolkit_fingerprint())
    root = root.resolve()
    for header in included_headers(root / spec.source, root, code):
        name = header.relative_to(root) if header.is_relative_to(root) else header
        digest.update(str(name).encode() + b"\0" + hashlib.sha256(header.read_bytes()).digest())
    return make_program_cache_key(code=code, code_type="c++", options=options, target_type="cubin",
                                  extra_digest=digest.digest())


def compile_spec(spec: KernelSpec, arch: str, use_cache: bool = True, *, root: Path | None = None,
                 cache_directory: Path | None = None) -> CompileResult:
    """The cubin and ptxas report of ``spec`` for ``arch`` ("sm_80", "sm_90", "sm_90a", ...; no GPU needed).

    A cache hit compiles nothing and logs nothing; a miss compiles with NVRTC, stores the cubin and its report
    and logs one INFO line on the "flashrnn_core" logger. ``root`` (default: the package's ``cuda_src``) and
    ``cache_directory`` (default: ``env.cache_dir()``) override where sources and entries live.
    Raises ``CompileError`` (log, options, numbered source) when NVRTC fails, and ``KernelNotCachedError`` on a
    miss while ``FLASHRNN_CORE_NEVER_COMPILE=1``.
    """
    arch = target_arch(spec, arch)
    root = (Path(root) if root is not None else env.source_root()).resolve()
    code = (root / spec.source).read_text()
    options = _options(spec, arch, root)
    cache = program_cache(cache_directory) if use_cache else None
    key = cache_key(spec, arch, root, code, options) if cache is not None else b""
    if cache is not None:
        hit = _lookup(cache, key, spec, arch)
        if hit is not None:
            return hit
    if env.never_compile():
        raise KernelNotCachedError(f"{spec.name()} for {arch} is not in the kernel cache at "
                                   f"{cache_directory or env.cache_dir()} and {env.NEVER_COMPILE_ENV}=1")
    result = _nvrtc(spec, arch, code, options)
    if result.resources is None:
        # On CUDA 13 (cuda.core 1.2.0) the compile passes through the driver's JIT cache (~/.nv/ComputeCache): a
        # kernel that any process compiled before comes back with an empty log, so without ptxas's report
        # (measured on the device: 341 log characters on a first compile, 0 on the next, in this process or a
        # new one; always 341 with CUDA_CACHE_DISABLE=1). The driver reads that variable when it starts, so the
        # compile runs again in a new process with it set; if the report is still missing, the cubin is used
        # but not cached (an entry without its report would read as damaged) and the log is kept.
        result = _report_without_driver_cache(spec, arch, root, result)
        if result.resources is None:
            _keep_log(Path(cache_directory or env.cache_dir()) / "logs", spec, arch, result.log)
            return result
    if cache is not None:
        _store(cache, key, result, spec, arch)
    if env.save_source():
        _save_source(Path(cache_directory or env.cache_dir()) / "sources", spec, arch, code)
    return result


#: The driver's JIT cache off: a compile that cannot have come from it (see ``compile_spec``).
DRIVER_CACHE_OFF = {"CUDA_CACHE_DISABLE": "1"}

_CHILD = """
import base64, json, sys, time
from flashrnn_core.runtime.compile import KernelSpec, compile_spec
a = json.loads(sys.argv[1])
spec = KernelSpec(**{**a["spec"], "defines": tuple(tuple(d) for d in a["spec"]["defines"])})
start = time.perf_counter()
r = compile_spec(spec, a["arch"], a["use_cache"], root=a["root"], cache_directory=a["cache_directory"])
wall = time.perf_counter() - start
print(json.dumps({"cubin": base64.b64encode(r.cubin).decode(), "log": r.log, "cached": r.cached,
                  "seconds": r.seconds, "wall_s": wall}))
"""


def compile_in_new_process(spec: KernelSpec, arch: str, use_cache: bool = True, *, root: Path | None = None,
                           cache_directory: Path | None = None) -> tuple[CompileResult, float]:
    """``compile_spec`` in a new Python process with the driver's JIT cache off, and the seconds it took there:
    what a new user's first compile of ``spec`` gives (the benchmarks' cold compile; the report of a compile
    that came from the driver's cache). Raises ``CompileError`` when the child fails."""
    import base64
    import os
    import subprocess
    import sys

    args = {"spec": {**dataclasses.asdict(spec), "defines": [list(d) for d in spec.defines]}, "arch": arch,
            "use_cache": use_cache, "root": None if root is None else str(root),
            "cache_directory": None if cache_directory is None else str(cache_directory)}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, **DRIVER_CACHE_OFF})
    if done.returncode != 0:
        raise CompileError(f"{spec.name()} for {arch} (in a new process)", done.stderr[-4000:], [], "")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    if child["cached"]:  # the child found the entry: read it here, with its report
        return compile_spec(spec, arch, root=root, cache_directory=cache_directory), child["wall_s"]
    log_text = child["log"]
    return CompileResult(cubin=base64.b64decode(child["cubin"]), log=log_text, cached=False, seconds=child["seconds"],
                         resources=parse_ptxas_report(log_text, spec.entry)), child["wall_s"]


def _report_without_driver_cache(spec: KernelSpec, arch: str, root: Path, first: CompileResult) -> CompileResult:
    """``first`` (a compile without its report) done again with the driver's JIT cache off, in a new process;
    ``first`` where that is off already (nothing would change) or the new process fails."""
    import os

    if os.environ.get("CUDA_CACHE_DISABLE") == DRIVER_CACHE_OFF["CUDA_CACHE_DISABLE"]:
        return first
    try:
        again, _ = compile_in_new_process(spec, arch, use_cache=False, root=root)
    except (CompileError, OSError, ValueError) as err:
        log.warning("flashrnn_core: recompiling %s for %s without the driver's cache failed: %s", spec.name(), arch,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return first
    return dataclasses.replace(again, seconds=first.seconds + again.seconds) if again.resources else first


def _lookup(cache: Any, key: bytes, spec: KernelSpec, arch: str) -> CompileResult | None:
    """The entry under ``key``, or None on a miss; a damaged entry (truncated cubin, missing or unreadable
    report) is a miss too, with one warning: the caller recompiles and overwrites it."""
    cubin = cache.get(key)
    if cubin is None:
        return None
    report = cache.get(key + _RESOURCES_SUFFIX)
    try:
        if not is_whole_elf(cubin):
            raise ValueError("the cubin is not a whole ELF file")
        if report is None:
            raise ValueError("its ptxas report is missing")
        reports = json.loads(report)
        if spec.entry not in reports:  # stored from a log that lacked this entry's report: compile it again
            return None
        resources = Resources(**reports[spec.entry])
    except (ValueError, TypeError, AttributeError) as err:
        _warn_once(f"damaged:{key.hex()}", f"flashrnn_core: the cache entry of {spec.name()} for {arch} is "
                                           f"damaged ({err}); recompiling it")
        return None
    return CompileResult(cubin=bytes(cubin), log="", resources=resources, cached=True)


def _store(cache: Any, key: bytes, result: CompileResult, spec: KernelSpec, arch: str) -> None:
    """Write the report of every entry in the compile's log (``ptxas_reports``), then the cubin: a reader that
    finds the cubin finds its report. A failed write (a full disk) costs a recompile next time, not this call."""
    reports = {**ptxas_reports(result.log), spec.entry: result.resources}
    report = json.dumps({entry: dataclasses.asdict(r) for entry, r in reports.items() if r is not None}).encode()
    try:
        cache[key + _RESOURCES_SUFFIX] = report
        cache[key] = result.cubin
    except OSError as err:
        _warn_once(f"store:{key.hex()}", f"flashrnn_core: could not store {spec.name()} for {arch} in the "
                                         f"kernel cache ({err}); it will be compiled again next time")


def _nvrtc(spec: KernelSpec, arch: str, code: str, options: Any) -> CompileResult:
    from cuda.core import Program

    logs = io.StringIO()
    start = time.perf_counter()
    try:
        obj = Program(code, "c++", options=options).compile("cubin", logs=logs)
    except Exception as err:  # cuda.core raises with NVRTC's log in the message; keep both
        raise CompileError(f"{spec.name()} for {arch}", f"{logs.getvalue()}\n{err}".strip(),
                           _option_strings(options), code) from None
    seconds = time.perf_counter() - start
    log.info("compiling %s %s ... %.1f s", spec.name(), arch, seconds)
    text = logs.getvalue().replace("\x00", "")
    return CompileResult(cubin=bytes(obj.code), log=text, resources=parse_ptxas_report(text, spec.entry),
                         cached=False, seconds=seconds)


def _keep_log(directory: Path, spec: KernelSpec, arch: str, text: str) -> None:
    """NVRTC's log of a compile that had no ptxas report, in ``directory`` (best effort), with one warning."""
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec.name())}-{arch}.log"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        path = None
    _warn_once(f"noreport:{spec.name()}:{arch}", f"flashrnn_core: NVRTC's log of {spec.name()} for {arch} has no "
                                                 f"ptxas report, also with the driver's JIT cache off; not cached "
                                                 f"(log: {path})")


def _option_strings(options: Any) -> list[str]:
    fields = ("name", "arch", "std", "include_path", "define_macro", "ptxas_options", "lineinfo")
    return [f"{f}={getattr(options, f)!r}" for f in fields]


def _save_source(directory: Path, spec: KernelSpec, arch: str, code: str) -> None:
    """``FLASHRNN_CORE_SAVE_SOURCE=1``: the source as compiled (defines first), for ncu, cuda-gdb or a bug
    report; named by entry and a digest of the defines, so variants do not overwrite each other."""
    defines = "".join(f"#define {k} {v}\n" for k, v in spec.defines)
    tag = hashlib.sha256(f"{spec.source}|{spec.defines}|{arch}".encode()).hexdigest()[:12]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{spec.entry}-{arch}-{tag}.cu").write_text(f"// {spec.name()} ({spec.source}, {arch})\n"
                                                                 f"{defines}{code}")
    except OSError as err:
        _warn_once(f"source:{directory}", f"flashrnn_core: could not save sources in {directory} ({err})")
