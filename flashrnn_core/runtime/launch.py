"""Load compiled kernels (once per process and device) and launch them on CuPy's current stream.

The launch path runs thousands of times per sequence in the ``cuda`` backend, so everything that can be is
memoised: loaded kernels, ``LaunchConfig`` objects, stream wrappers and the kernel attributes already set.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .compile import KernelSpec, compile_spec

_lock = threading.Lock()
_kernels: dict[tuple[KernelSpec, str, int], Any] = {}
_configs: dict[tuple, Any] = {}
_streams: dict[int, Any] = {}
_attributes_set: dict[tuple[int, int, str], int] = {}

_DEFAULT_SMEM = 48 * 1024  # dynamic shared memory a kernel gets without opting in


def current_device() -> int:
    import cupy

    return int(cupy.cuda.Device().id)


def device_arch(device: int | None = None) -> str:
    """``sm_XY`` of a CuPy device (the current one by default)."""
    import cupy

    cc = cupy.cuda.Device(current_device() if device is None else device).compute_capability
    return f"sm_{cc}"


def get_kernel(spec: KernelSpec, arch: str | None = None, device: int | None = None):
    """The loaded ``cuda.core.Kernel`` of ``spec`` on ``device`` (current CuPy device by default), compiled
    for ``arch`` (the device's own by default) on the first call, from the disk cache when it is there."""
    device = current_device() if device is None else device
    arch = arch or device_arch(device)
    key = (spec, arch, device)
    kernel = _kernels.get(key)
    if kernel is None:
        from cuda.core import Device, ObjectCode

        Device(device).set_current()  # the primary context, which CuPy uses too
        result = compile_spec(spec, arch)
        kernel = ObjectCode.from_cubin(result.cubin, name=spec.name()).get_kernel(spec.entry)
        with _lock:
            kernel = _kernels.setdefault(key, kernel)
    return kernel


def _stream(stream: Any):
    """A cuda.core Stream for a CuPy stream (the current one when None), wrapped once per handle."""
    if stream is None:
        import cupy

        stream = cupy.cuda.get_current_stream()
    handle = int(stream.ptr)
    wrapped = _streams.get(handle)
    if wrapped is None:
        from cuda.core import Stream

        wrapped = _streams.setdefault(handle, Stream.from_handle(handle))
    return wrapped


def _config(grid, block, shmem: int, cluster, cooperative: bool):
    key = (grid, block, shmem, cluster, cooperative)
    config = _configs.get(key)
    if config is None:
        from cuda.core import LaunchConfig

        # cuda.core counts the grid in clusters when a cluster is given; callers count blocks, as CUDA C++ does.
        if cluster is not None:
            cl = tuple(cluster) + (1,) * (3 - len(cluster))
            g = tuple(grid) + (1,) * (3 - len(grid))
            if any(gi % ci for gi, ci in zip(g, cl)):
                raise ValueError(f"grid {grid} is not a whole number of clusters {cluster}")
            grid = tuple(gi // ci for gi, ci in zip(g, cl))
        config = LaunchConfig(grid=grid, block=block, shmem_size=shmem, cluster=cluster, is_cooperative=cooperative)
        _configs[key] = config
    return config


def _set_attribute(kernel, device: int, name: str, value: int) -> None:
    """Set a kernel attribute once per (kernel, device). cuda.core kernels are ``CUkernel`` handles:
    ``cuKernelSetAttribute`` takes them, ``cuFuncSetAttribute`` answers INVALID_HANDLE."""
    key = (int(kernel.handle), device, name)
    if _attributes_set.get(key, -1) >= value:
        return
    from cuda.bindings import driver

    attr = getattr(driver.CUfunction_attribute, name)
    (err,) = driver.cuKernelSetAttribute(attr, value, kernel.handle, device)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuKernelSetAttribute({name}, {value}) failed: {err}")
    _attributes_set[key] = value


def _argument(a: Any) -> Any:
    """CuPy arrays travel as their device pointer, None as a null pointer; NumPy scalars as they are."""
    if a is None:
        return np.uint64(0)
    data = getattr(a, "data", None)
    if data is not None and hasattr(data, "ptr"):
        return np.uint64(data.ptr)
    if isinstance(a, (np.generic,)):
        return a
    raise TypeError(f"kernel argument {a!r}: pass CuPy arrays, None or NumPy scalars (np.int32(...), ...)")


def launch(kernel, grid, block, *args: Any, shmem: int = 0, cluster=None, cooperative: bool = False,
           stream: Any = None, device: int | None = None) -> None:
    """Launch ``kernel`` with ``grid`` blocks (not clusters) of ``block`` threads on ``stream`` (CuPy's current
    stream by default). Arguments: CuPy arrays (their pointers), None (a null pointer) or NumPy scalars, which
    fix the C type (``np.int32``, ``np.float32``). ``shmem`` above 48 KB opts the kernel in; a cluster above 8
    blocks sets the non-portable cluster size attribute."""
    grid, block = _dims(grid), _dims(block)
    cluster = _dims(cluster) if cluster is not None else None
    if shmem > _DEFAULT_SMEM or (cluster is not None and int(np.prod(cluster)) > 8):
        device = current_device() if device is None else device
        if shmem > _DEFAULT_SMEM:
            _set_attribute(kernel, device, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", shmem)
        if cluster is not None and int(np.prod(cluster)) > 8:
            _set_attribute(kernel, device, "CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED", 1)
    from cuda.core import launch as core_launch

    core_launch(_stream(stream), _config(grid, block, shmem, cluster, cooperative), kernel,
                *(_argument(a) for a in args))


def _dims(d) -> tuple[int, ...]:
    return (int(d),) if np.isscalar(d) else tuple(int(x) for x in d)
