"""Compile a kernel variant with NVRTC, through cuda.core's program cache.

A variant is a ``KernelSpec``: a source under ``cuda_src/``, the ``extern "C"`` entry it defines and the ``-D``
defines that fix its template parameters. Why defines and unmangled entries rather than ``name_expressions``:
cuda.core's program cache stores only the binary, not NVRTC's symbol map, so a cached templated kernel could
not be found by name again; an ``extern "C"`` entry needs no map.

The cache is cuda.core's ``FileStreamProgramCache`` (atomic writes, so concurrent processes never read half an
entry). What it does not give is added here: a key that covers every project header the source includes,
a check that an entry is a whole ELF file (a truncated one is a miss, recompiled, with one warning), the
ptxas resource report kept beside the binary, and a per-process temporary directory when the cache directory
cannot be written.
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import CompileError, KernelNotCachedError
from . import env

log = logging.getLogger("flashrnn_core")

#: Bump when the way sources become binaries changes in a way the key would not see.
_RUNTIME_DIGEST_VERSION = b"flashrnn_core-runtime-1"
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


@dataclass(frozen=True)
class KernelSpec:
    """One compilable kernel variant.

    source: path under ``cuda_src/``; entry: the ``extern "C" __global__`` function it defines; defines:
    ``-D`` macros (the template parameters); label: for logs and tables ("lstm cuda fw bfloat16");
    min_sm: the oldest architecture it compiles for (90 for cluster kernels); smem_dynamic: dynamic shared
    memory a launch asks for, bytes (checked against the architecture by ``compile --check``).
    """

    source: str
    entry: str
    defines: tuple[tuple[str, str], ...] = ()
    label: str = ""
    min_sm: int = 80
    smem_dynamic: int = 0

    def name(self) -> str:
        return self.label or f"{self.entry}({', '.join(f'{k}={v}' for k, v in self.defines)})"


@dataclass(frozen=True)
class Resources:
    """ptxas's report for one entry: registers a thread, static shared memory, stack and spills (bytes)."""

    registers: int
    smem_static: int
    stack: int
    spill_stores: int
    spill_loads: int


@dataclass
class CompileResult:
    cubin: bytes
    resources: Resources | None
    cached: bool
    log: str = ""
    seconds: float = 0.0
    cache_dir: Path | None = field(default=None, repr=False)


def parse_ptxas_report(log_text: str, entry: str) -> Resources | None:
    """Resources of ``entry`` from NVRTC's log compiled with ``ptxas -v`` (None if the log has no report)."""
    section = log_text.split(f"Function properties for {entry}", 1)
    if len(section) < 2:
        return None
    text = section[1].split("Function properties for", 1)[0]

    def number(pattern: str) -> int:
        match = re.search(pattern, text)
        return int(match.group(1)) if match else 0

    if not re.search(r"Used (\d+) registers", text):
        return None
    return Resources(
        registers=number(r"Used (\d+) registers"),
        smem_static=number(r"(\d+) bytes smem"),
        stack=number(r"(\d+) bytes stack frame"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
    )


def is_whole_elf(data: bytes) -> bool:
    """A cubin is an ELF file: magic, and a section header table that lies inside the data."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF
        return False
    e_shoff = struct.unpack_from("<Q", data, 0x28)[0]
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
    return e_shnum > 0 and e_shoff + e_shentsize * e_shnum <= len(data)


def included_headers(source_text: str, root: Path) -> list[Path]:
    """Every project header ``source_text`` includes, transitively (paths relative to ``root``)."""
    seen: dict[Path, None] = {}
    stack = [(source_text, root)]
    while stack:
        text, base = stack.pop()
        for name in _INCLUDE.findall(text):
            for directory in (base, root):
                path = (directory / name).resolve()
                if path.is_file():
                    break
            else:
                continue  # a toolkit header (<...> style through quotes); NVRTC reports it if missing
            if path not in seen:
                seen[path] = None
                stack.append((path.read_text(), path.parent))
    return sorted(seen)


@lru_cache(maxsize=None)
def toolkit_include_dirs() -> tuple[str, ...]:
    """CUDA runtime and CCCL headers (bf16/fp16 types, cooperative groups, <nv/target>)."""
    dirs = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        for lib in ("cudart", "cccl"):
            found = find_nvidia_header_directory(lib)
            if found:
                dirs.append(str(found))
    except Exception:  # an older cuda-pathfinder: fall back to CUDA_HOME below
        pass
    if not dirs:
        import os

        home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        dirs = [d for d in (f"{home}/include", f"{home}/include/cccl") if Path(d).is_dir()]
    return tuple(dirs)


def nvrtc_version() -> tuple[int, int]:
    from cuda.bindings import nvrtc

    _, major, minor = nvrtc.nvrtcVersion()
    return int(major), int(minor)


def _options(spec: KernelSpec, arch: str, root: Path):
    from cuda.core import ProgramOptions

    return ProgramOptions(
        name=spec.source,
        arch=arch,
        std="c++17",
        include_path=[str(root), *toolkit_include_dirs()],
        define_macro=[(k, str(v)) for k, v in spec.defines] or None,
        ptxas_options=["-v"],
        lineinfo=env.lineinfo(),
    )


_cache_lock = threading.Lock()
_caches: dict[Path, object] = {}
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        log.warning(message)


def program_cache(directory: Path | None = None):
    """The ``FileStreamProgramCache`` in ``directory`` (default ``env.cache_dir()/programs``), or one in a
    per-process temporary directory, with a warning, when that cannot be written."""
    from cuda.core.utils import FileStreamProgramCache

    directory = Path(directory or env.cache_dir()) / "programs"
    with _cache_lock:
        if directory not in _caches:
            try:
                cache = FileStreamProgramCache(directory)
                probe = directory / f".probe-{id(cache)}"
                probe.write_bytes(b"")  # FileStreamProgramCache only creates dirs; writing is what we need
                probe.unlink()
            except OSError as err:
                fallback = Path(tempfile.mkdtemp(prefix="flashrnn_core-cache-"))
                _warn_once(f"rw:{directory}", f"flashrnn_core: cache directory {directory} is not writable "
                                              f"({err}); using {fallback} for this process")
                cache = FileStreamProgramCache(fallback / "programs")
            _caches[directory] = cache
        return _caches[directory]


def _cache_key(spec: KernelSpec, arch: str, root: Path, code: str, options) -> bytes:
    from cuda.core.utils import make_program_cache_key

    digest = hashlib.sha256(_RUNTIME_DIGEST_VERSION)
    for header in included_headers(code, root):
        digest.update(str(header.relative_to(root) if header.is_relative_to(root) else header).encode())
        digest.update(header.read_bytes())
    return make_program_cache_key(code=code, code_type="c++", options=options, target_type="cubin",
                                  extra_digest=digest.digest())


def compile_spec(spec: KernelSpec, arch: str, *, use_cache: bool = True, root: Path | None = None,
                 cache_directory: Path | None = None) -> CompileResult:
    """The cubin and resource report of ``spec`` for ``arch`` ("sm_80", "sm_90", "sm_90a", ...).

    A cache hit compiles nothing and logs nothing; a miss compiles with NVRTC, stores the result and logs one
    INFO line. ``root`` (default: the package's ``cuda_src``) and ``cache_directory`` are for tests.
    """
    root = Path(root or env.source_root())
    code = (root / spec.source).read_text()
    options = _options(spec, arch, root)
    cache = program_cache(cache_directory) if use_cache else None
    if cache is not None:
        key = _cache_key(spec, arch, root, code, options)
        hit = _lookup(cache, key, spec, arch)
        if hit is not None:
            return hit
    if env.never_compile():
        raise KernelNotCachedError(f"{spec.name()} {arch} is not cached and {env.NEVER_COMPILE_ENV}=1")
    result = _nvrtc(spec, arch, code, options)
    if cache is not None:
        if result.resources is not None:
            cache[key + b"/resources"] = json.dumps(result.resources.__dict__).encode()
        cache[key] = result.cubin  # last: a reader that finds the binary also finds its report
        if env.save_source():
            _save_source(key, spec, code)
    return result


def _lookup(cache, key: bytes, spec: KernelSpec, arch: str) -> CompileResult | None:
    cubin = cache.get(key)
    if cubin is None:
        return None
    report = cache.get(key + b"/resources")
    if not is_whole_elf(cubin) or report is None:
        _warn_once(f"corrupt:{key.hex()}", f"flashrnn_core: cache entry of {spec.name()} {arch} is damaged; "
                                           "recompiling")
        return None
    try:
        resources = Resources(**json.loads(report))
    except (ValueError, TypeError):
        _warn_once(f"corrupt:{key.hex()}", f"flashrnn_core: resource report of {spec.name()} {arch} is damaged; "
                                           "recompiling")
        return None
    return CompileResult(cubin=cubin, resources=resources, cached=True)


def _nvrtc(spec: KernelSpec, arch: str, code: str, options) -> CompileResult:
    from cuda.core import Program

    logs = io.StringIO()
    start = time.perf_counter()
    try:
        obj = Program(code, "c++", options=options).compile("cubin", logs=logs)
    except Exception as err:  # cuda.core raises with NVRTC's log in the message
        raise CompileError(f"{spec.name()} for {arch}", f"{logs.getvalue()}\n{err}", _option_strings(options),
                           code) from None
    seconds = time.perf_counter() - start
    log.info("compiling %s %s ... %.1f s", spec.name(), arch, seconds)
    text = logs.getvalue().replace("\x00", "")
    return CompileResult(cubin=bytes(obj.code), resources=parse_ptxas_report(text, spec.entry), cached=False,
                         log=text, seconds=seconds)


def _option_strings(options) -> list[str]:
    fields = ("arch", "std", "include_path", "define_macro", "ptxas_options", "lineinfo")
    return [f"{f}={getattr(options, f)!r}" for f in fields]


def _save_source(key: bytes, spec: KernelSpec, code: str) -> None:
    directory = env.cache_dir() / "sources"
    directory.mkdir(parents=True, exist_ok=True)
    defines = "".join(f"#define {k} {v}\n" for k, v in spec.defines)
    (directory / f"{spec.entry}-{hashlib.sha256(key).hexdigest()[:16]}.cu").write_text(
        f"// {spec.name()}\n{defines}{code}")
