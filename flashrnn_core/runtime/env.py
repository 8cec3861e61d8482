"""Where the runtime keeps things and which switches it obeys.

Every switch is an environment variable read when it is used (not at import), so tests and users can flip it
at run time:

- ``FLASHRNN_CORE_CACHE``: the cache directory (default ``~/.cache/flashrnn_core/<package version>/``).
- ``FLASHRNN_CORE_SAVE_SOURCE=1``: write each compiled source, with its defines, to ``<cache>/sources/``.
- ``FLASHRNN_CORE_LINEINFO=1``: compile with ``-lineinfo`` so compute-sanitizer and ncu show source lines.
- ``FLASHRNN_CORE_NEVER_COMPILE=1``: raise ``errors.KernelNotCachedError`` instead of compiling on a miss.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path

CACHE_ENV = "FLASHRNN_CORE_CACHE"
SAVE_SOURCE_ENV = "FLASHRNN_CORE_SAVE_SOURCE"
LINEINFO_ENV = "FLASHRNN_CORE_LINEINFO"
NEVER_COMPILE_ENV = "FLASHRNN_CORE_NEVER_COMPILE"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def save_source() -> bool:
    """``FLASHRNN_CORE_SAVE_SOURCE=1``: keep each compiled source beside the cache."""
    return _flag(SAVE_SOURCE_ENV)


def lineinfo() -> bool:
    """``FLASHRNN_CORE_LINEINFO=1``: compile with ``-lineinfo`` (part of the cache key, as every option)."""
    return _flag(LINEINFO_ENV)


def never_compile() -> bool:
    """``FLASHRNN_CORE_NEVER_COMPILE=1``: a cache miss raises instead of compiling."""
    return _flag(NEVER_COMPILE_ENV)


@cache
def package_version() -> str:
    """The installed distribution's version; the package's ``__version__`` in a plain checkout."""
    from importlib import metadata

    try:
        return metadata.version("flashrnn_core")
    except metadata.PackageNotFoundError:
        import flashrnn_core

        return getattr(flashrnn_core, "__version__", "0+unknown")


def cache_dir() -> Path:
    """``$FLASHRNN_CORE_CACHE``, else ``$XDG_CACHE_HOME/flashrnn_core/<version>`` (``~/.cache`` by default).

    The version is in the default path so an upgrade starts a fresh directory: the keys would differ anyway,
    and this keeps an old release's entries in one place that can be deleted.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flashrnn_core" / package_version()


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``: concurrent
    processes never read half a file (the tuning cache's entries, the kernel-variant list)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def source_root() -> Path:
    """The kernels: ``flashrnn_core/cuda_src`` in an installed wheel (the build puts them there), else
    ``<repo>/cuda_src`` in a source checkout or an editable install."""
    import flashrnn_core

    package = Path(flashrnn_core.__file__).resolve().parent
    for candidate in (package / "cuda_src", package.parent / "cuda_src"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cuda_src not found in {package} nor beside it (a broken install?)")
