"""The backend registry: which backends exist, what each can take, and what ``auto`` picks.

Backends are imported on first use, so ``import flashrnn_core`` costs no CuPy or CUDA import, and a missing
GPU stack makes the GPU backends *unavailable* (with the reason) rather than breaking the package.
"""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..runtime import KernelSpec
    from ..validate import Problem
    from .base import Backend

log = logging.getLogger("flashrnn_core")

#: name -> (module, class). Order of AUTO_ORDER is fastest first.
_REGISTRY = {
    "vanilla": ("vanilla", "VanillaBackend"),
    "cuda": ("alternating", "AlternatingBackend"),
    "cuda_fused": ("fused", "FusedBackend"),
}
AUTO_ORDER = ("cuda_fused", "cuda", "vanilla")


@lru_cache(maxsize=None)
def _load(name: str) -> "Backend | str":
    """The backend object, or a string saying why it cannot be imported here."""
    module_name, class_name = _REGISTRY[name]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as err:  # CuPy or cuda-python missing: the backend is unavailable, not broken
        return f"backend {name!r} is unavailable: {err}"
    return getattr(module, class_name)()


def get_backend(name: str) -> "Backend":
    backend = _load(name)
    if isinstance(backend, str):
        raise ValueError(backend)
    return backend


def why_not(name: str, problem: "Problem") -> str | None:
    """None when backend ``name`` can run ``problem``, else the reason."""
    backend = _load(name)
    if isinstance(backend, str):
        return backend
    return backend.unsupported(problem)


def resolve(name: str, problem: "Problem") -> "Backend":
    """The backend to run ``problem`` on; raise ``ValueError`` naming one that can if ``name`` cannot.

    ``auto`` takes the first of ``AUTO_ORDER`` that can run the problem and logs its choice at DEBUG.
    """
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            reason = why_not(candidate, problem)
            if reason is None:
                log.debug("auto chose %s for %s%s", candidate, problem.label(), "".join(reasons))
                return get_backend(candidate)
            reasons.append(f"; not {candidate}: {reason}")
        raise ValueError(f"backend: no backend can run {problem.label()}{''.join(reasons)}")
    reason = why_not(name, problem)
    if reason is not None:
        able = [c for c in AUTO_ORDER if c != name and why_not(c, problem) is None]
        hint = f"; backend {able[0]!r} (or 'auto') can" if able else ""
        raise ValueError(f"backend: {name!r} cannot run {problem.label()}: {reason}{hint}")
    return get_backend(name)


def available_backends(problem: "Problem | None" = None) -> dict[str, str | None]:
    """Each backend's name mapped to None (usable) or the reason it is not (for ``python -m flashrnn_core``)."""
    out = {}
    for name in _REGISTRY:
        loaded = _load(name)
        if isinstance(loaded, str):
            out[name] = loaded
        else:
            out[name] = loaded.unsupported(problem) if problem is not None else None
    return out


def all_kernel_variants() -> "list[KernelSpec]":
    """Every kernel any backend can launch: what ``python -m flashrnn_core.compile`` builds and checks.

    Importing the GPU backends needs only cuda-python and CuPy to be installed, not a GPU.
    """
    variants: list = []
    for name in _REGISTRY:
        variants.extend(get_backend(name).kernel_variants())
    return variants
