"""Where the runtime keeps things and which switches it obeys (environment variables, read on each use)."""

from __future__ import annotations

import os
from pathlib import Path

import flashrnn_core

#: Environment switches. Each is read when used, so tests and users can flip them at run time.
CACHE_ENV = "FLASHRNN_CORE_CACHE"  # cache directory (default: ~/.cache/flashrnn_core/<version>/)
SAVE_SOURCE_ENV = "FLASHRNN_CORE_SAVE_SOURCE"  # 1: keep each compiled source beside the cache, for ncu/debugging
LINEINFO_ENV = "FLASHRNN_CORE_LINEINFO"  # 1: compile with -lineinfo (compute-sanitizer and ncu show lines)
NEVER_COMPILE_ENV = "FLASHRNN_CORE_NEVER_COMPILE"  # 1: raise KernelNotCachedError instead of compiling


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def save_source() -> bool:
    return _flag(SAVE_SOURCE_ENV)


def lineinfo() -> bool:
    return _flag(LINEINFO_ENV)


def never_compile() -> bool:
    return _flag(NEVER_COMPILE_ENV)


def cache_dir() -> Path:
    """``$FLASHRNN_CORE_CACHE``, else ``$XDG_CACHE_HOME/flashrnn_core/<version>`` (``~/.cache`` by default).

    The package version is part of the default path so that upgrading never reads an older build's entries
    (the keys would differ anyway; this keeps old entries easy to delete).
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flashrnn_core" / flashrnn_core.__version__


def source_root() -> Path:
    """The kernels: ``flashrnn_core/cuda_src`` in an installed wheel, ``<repo>/cuda_src`` in a checkout."""
    package = Path(flashrnn_core.__file__).resolve().parent
    for candidate in (package / "cuda_src", package.parent / "cuda_src"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cuda_src not found beside {package} (a broken install?)")
