"""Array-module helpers shared by every backend: which module (NumPy or CuPy) an array belongs to, dtypes.

The vanilla backend is written once against the NumPy API and runs on CuPy unchanged; this module is the one
place that knows how to tell the two apart and how bfloat16 is spelled (``ml_dtypes.bfloat16``, which both
NumPy and CuPy >= 14 accept as a dtype).
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np

bfloat16 = np.dtype(ml_dtypes.bfloat16)
float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)

#: Storage dtypes every backend accepts; float64 is accepted by ``vanilla`` only (for gradient checks).
STORAGE_DTYPES = (float32, bfloat16, float16)
VANILLA_DTYPES = STORAGE_DTYPES + (float64,)

#: Short names, used in kernel labels, test ids and benchmark rows.
DTYPE_NAMES = {float32: "float32", bfloat16: "bfloat16", float16: "float16", float64: "float64"}


def is_cupy_array(a: Any) -> bool:
    """True for a ``cupy.ndarray`` (without importing CuPy when the caller never did)."""
    return type(a).__module__.startswith("cupy")


def array_module(a: Any) -> ModuleType:
    """NumPy or CuPy, whichever ``a`` belongs to."""
    if is_cupy_array(a):
        import cupy

        return cupy
    return np


def compute_dtype(storage: np.dtype) -> np.dtype:
    """The dtype the math runs in: float32 for every storage dtype, float64 for float64 (gradient checks)."""
    return float64 if np.dtype(storage) == float64 else float32


def dtype_name(dtype: Any) -> str:
    return DTYPE_NAMES.get(np.dtype(dtype), str(np.dtype(dtype)))


def dtype_named(name: str) -> np.dtype:
    """The dtype of a short name of DTYPE_NAMES ("bfloat16", ...): command lines and stored results. KeyError
    for another name."""
    return {short: dtype for dtype, short in DTYPE_NAMES.items()}[name]


def on_device(device: int | None) -> Any:
    """A context making CuPy device ``device`` the current one (where CuPy allocates and launches); nothing for
    None (NumPy)."""
    if device is None:
        return contextlib.nullcontext()
    import cupy

    return cupy.cuda.Device(device)


class _StreamHandle:
    """A raw ``cudaStream_t`` as an object of the CUDA stream protocol (what ``Stream.from_external`` takes)."""

    def __init__(self, handle: int):
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)


def cupy_stream(handle: int, device: int) -> Any:
    """CuPy's view of a foreign stream (torch's, XLA's) created on ``device``; use it inside
    ``cupy.cuda.Device(device)``. CuPy 14 deprecates ``ExternalStream`` for ``Stream.from_external`` (which does
    not learn the device: the caller's device context supplies it); CuPy 13 has only the former."""
    import cupy

    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is None:
        return cupy.cuda.ExternalStream(handle, device)
    return from_external(_StreamHandle(handle))
