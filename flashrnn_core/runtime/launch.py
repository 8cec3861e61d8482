"""Load compiled kernels (once per process, spec, arch and device) and launch them on CuPy's current stream.

``launch`` runs thousands of times per sequence in the ``cuda`` backend, so everything that can be is memoised:
``LaunchConfig`` objects, stream wrappers, each kernel's argument count and the kernel attributes already set.
Nothing on the path synchronises the device.

Kernel arguments (what ``cuda.core.launch`` does with each Python type, read in its ``_kernel_arg_handler``):
a Python ``int`` becomes a pointer-size ``intptr_t`` (cuda.core's fast path for addresses, which is why a
Python ``int`` must never be a scalar here), a Python ``float`` a ``double``, a NumPy scalar its own C type
(``np.int32`` -> ``int``, ``np.float32`` -> ``float``, ``np.uint64``/``np.intp`` -> 64-bit). So ``launch``
passes CuPy arrays (and anything with ``__cuda_array_interface__``) as their device address in a Python
``int``, None as a null pointer, NumPy scalars unchanged, and refuses Python numbers, whose C type would be a
guess.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from .compile import KernelSpec, compile_spec, sm_number

_DEFAULT_SMEM = 48 * 1024  # dynamic shared memory a kernel may take without opting in
_PORTABLE_CLUSTER = 8  # blocks a cluster may have without the non-portable attribute

_lock = threading.Lock()
_kernels: dict[tuple, Any] = {}
_configs: dict[tuple, tuple[Any, int, bool]] = {}
_streams: dict[int, Any] = {}
_states: dict[int, _KernelState] = {}
_cupy: Any = None


def _cupy_module() -> Any:
    global _cupy
    if _cupy is None:
        import cupy

        _cupy = cupy
    return _cupy


def current_device() -> int:
    """The current CuPy device (CuPy's arrays decide where kernels run), else cuda.core's."""
    try:
        return int(_cupy_module().cuda.runtime.getDevice())
    except ImportError:
        from cuda.core import Device

        return int(Device().device_id)


def device_arch(device: int | None = None) -> str:
    """``sm_XY`` of ``device`` (the current one by default), from cuda.core's compute capability."""
    from cuda.core import Device

    cc = Device(current_device() if device is None else device).compute_capability
    return f"sm_{cc[0]}{cc[1]}"


def get_kernel(spec: KernelSpec, arch: str | None = None, *, device: int | None = None,
               root: Path | None = None) -> Any:
    """The loaded ``cuda.core.Kernel`` of ``spec`` on ``device`` (current CuPy device by default).

    Compiled for ``arch`` (default: the device's own, plus the spec's suffix) on the first call of the process,
    from the disk cache when it is there; later calls are one dictionary lookup. ``root`` overrides the
    source directory (tests). Raises ``ValueError`` when the device is older than ``spec.min_sm``.
    """
    device = current_device() if device is None else int(device)
    key = (spec, arch, device, root)
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = _load(spec, arch or device_arch(device), device, root)
        with _lock:
            kernel = _kernels.setdefault(key, kernel)
    return kernel


def _load(spec: KernelSpec, arch: str, device: int, root: Path | None) -> Any:
    from cuda.core import ObjectCode

    if sm_number(arch) < spec.min_sm:
        raise ValueError(f"{spec.name()} needs sm_{spec.min_sm} or newer; device {device} is {arch}")
    result = compile_spec(spec, arch, root=root)
    with _on_device(device):  # load while the device's primary context (CuPy's) is current
        return ObjectCode.from_cubin(result.cubin, name=spec.name()).get_kernel(spec.entry)


class _on_device:
    """Make ``device`` current for a block and restore the previous device after (through CuPy when it is
    there, so CuPy's notion of the current device is never changed behind its back)."""

    def __init__(self, device: int):
        self.device, self.inner = device, None

    def __enter__(self) -> None:
        try:
            self.inner = _cupy_module().cuda.Device(self.device)
            self.inner.__enter__()
        except ImportError:
            from cuda.core import Device

            Device(self.device).set_current()

    def __exit__(self, *exc: object) -> None:
        if self.inner is not None:
            self.inner.__exit__(*exc)


def launch(kernel: Any, grid: Any, block: Any, *args: Any, shmem: int = 0, cluster: Any = None,
           cooperative: bool = False, stream: Any = None, device: int | None = None) -> None:
    """Launch ``kernel`` on ``stream`` (CuPy's current stream by default; a CuPy stream, a cuda.core Stream or
    anything with ``__cuda_stream__``); returns at once, the device is not synchronised.

    grid: blocks (an int or up to 3 dims), also when ``cluster`` is given (CUDA C++'s convention; cuda.core
    counts clusters, the conversion is done here). block: threads. args: CuPy arrays (their device address),
    None (a null pointer) or NumPy scalars that fix the C type (``np.int32(B)``, ``np.float32(x)``).
    shmem: dynamic shared memory in bytes; above 48 KB the kernel is opted in once per device. cluster: blocks
    per cluster (sm_90+); above 8 the non-portable size attribute is set once per device. cooperative: a
    cooperative launch (grid-wide sync). device: where the opt-in attributes go (default: the current one).
    """
    config = _prepare(kernel, grid, block, len(args), shmem, cluster, cooperative, device)
    from cuda.core import launch as core_launch

    core_launch(_stream(stream), config, kernel, *[_argument(a) for a in args])


def wait_until_at_least(stream: Any, address: int, value: int) -> None:
    """Make ``stream`` (a CuPy stream) wait, without the host, until the uint32 at device ``address`` is at least
    ``value`` (cyclic, ``cuStreamWaitValue32`` GEQ): work enqueued after it starts only then. A kernel running on
    another stream raises the value (fused_bw.cu's progress count); cuda.core has no call for it."""
    from cuda.bindings import driver

    (err,) = driver.cuStreamWaitValue32(driver.CUstream(int(stream.ptr)), driver.CUdeviceptr(int(address)),
                                        int(value) & 0xFFFFFFFF,
                                        int(driver.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ))
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuStreamWaitValue32 failed: {err}")


class _Slot:
    def __repr__(self) -> str:
        return "SLOT"


#: Placeholder for a ``PreparedLaunch`` argument given at each call (e.g. the input of one step).
SLOT = _Slot()


class PreparedLaunch:
    """A launch of ``kernel`` whose geometry and arguments are resolved once, so that each call does only the
    launch: the step API launches one kernel per step and must cost the host as little as possible (and be
    capturable in a CUDA graph, like every launch here).

        prepared = PreparedLaunch(kernel, grid, block, SLOT, R, b, np.int32(B), shmem=smem)
        prepared(Wx_t)                  # on CuPy's current stream; SLOT arguments in order

    Takes ``launch``'s arguments; ``SLOT`` marks those given at each call (converted like ``launch``'s). The
    arrays given here are kept alive as long as the object, since only their addresses are passed.
    """

    __slots__ = ("kernel", "config", "args", "slots", "keep", "core_launch")

    def __init__(self, kernel: Any, grid: Any, block: Any, *args: Any, shmem: int = 0, cluster: Any = None,
                 cooperative: bool = False, device: int | None = None):
        self.kernel = kernel
        self.config = _prepare(kernel, grid, block, len(args), shmem, cluster, cooperative, device)
        self.args = [0 if a is SLOT else _argument(a) for a in args]
        self.slots = tuple(i for i, a in enumerate(args) if a is SLOT)
        self.keep = args
        from cuda.core import launch as core_launch

        self.core_launch = core_launch  # looked up once: a call does nothing it need not

    def __call__(self, *values: Any, stream: Any = None) -> None:
        """Launch with ``values`` in the ``SLOT`` places, on ``stream`` (CuPy's current one by default)."""
        if len(values) != len(self.slots):
            raise TypeError(f"PreparedLaunch: expected {len(self.slots)} SLOT arguments, got {len(values)}")
        args = self.args
        if values:
            args = list(args)
            for i, v in zip(self.slots, values):
                args[i] = _argument(v)
        self.core_launch(_stream(stream), self.config, self.kernel, *args)


def _prepare(kernel: Any, grid: Any, block: Any, nargs: int, shmem: int, cluster: Any, cooperative: bool,
             device: int | None) -> Any:
    """The ``LaunchConfig`` of a launch, after checking the argument count and setting the kernel attributes
    it needs on ``device`` (once per kernel and device)."""
    config, smem_opt_in, non_portable = _config(grid, block, shmem, cluster, cooperative)
    state = _states.get(id(kernel))
    if state is None or state.kernel is not kernel:
        state = _state(kernel)
    if state.nargs is not None and state.nargs != nargs:
        raise TypeError(f"launch: the kernel takes {state.nargs} arguments, got {nargs}")
    if smem_opt_in or non_portable:
        state.opt_in(current_device() if device is None else int(device), smem_opt_in, non_portable)
    return config


def _argument(a: Any) -> Any:
    """One kernel argument as cuda.core takes it (see the module docstring)."""
    try:
        ptr = a.data.ptr  # a CuPy array (checked first: the common case)
    except AttributeError:
        pass
    else:
        if type(ptr) is int:
            return ptr
    if isinstance(a, np.generic):
        return a
    if a is None:
        return 0
    interface = getattr(a, "__cuda_array_interface__", None)
    if interface is not None:
        return int(interface["data"][0])
    if isinstance(a, (bool, int, float)):
        raise TypeError(f"launch: the Python number {a!r} has no fixed C type; pass a NumPy scalar "
                        "(np.int32(...), np.float32(...))")
    raise TypeError(f"launch: cannot pass {type(a).__name__} to a kernel; pass CuPy arrays, None or NumPy scalars")


def _config(grid: Any, block: Any, shmem: int, cluster: Any, cooperative: bool) -> tuple[Any, int, bool]:
    """(LaunchConfig, dynamic shared memory to opt in to or 0, whether the cluster is non-portable), memoised
    by the arguments as given (lists, which cannot be keys, are turned into tuples first)."""
    key = (grid, block, shmem, cluster, cooperative)
    try:
        found = _configs.get(key)
    except TypeError:
        key = tuple(tuple(k) if isinstance(k, list) else k for k in key)
        found = _configs.get(key)
    if found is None:
        found = _configs.setdefault(key, _make_config(grid, block, shmem, cluster, cooperative))
    return found


def _make_config(grid: Any, block: Any, shmem: int, cluster: Any, cooperative: bool) -> tuple[Any, int, bool]:
    from cuda.core import LaunchConfig

    grid, block = _dims(grid), _dims(block)
    non_portable = False
    if cluster is not None:
        cluster = _dims(cluster)
        if any(g % c for g, c in zip(grid, cluster)):
            raise ValueError(f"launch: grid {grid} is not a whole number of clusters {cluster}")
        grid = tuple(g // c for g, c in zip(grid, cluster))  # cuda.core counts the grid in clusters
        non_portable = int(np.prod(cluster)) > _PORTABLE_CLUSTER
    config = LaunchConfig(grid=grid, block=block, shmem_size=int(shmem), cluster=cluster,
                          is_cooperative=bool(cooperative))
    return config, (int(shmem) if shmem > _DEFAULT_SMEM else 0), non_portable


def _dims(d: Any) -> tuple[int, int, int]:
    dims = (int(d),) if np.isscalar(d) else tuple(int(x) for x in d)
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise ValueError(f"launch: dimensions must be 1 to 3 positive integers, got {d!r}")
    return dims + (1,) * (3 - len(dims))


class _KernelState:
    """What ``launch`` remembers about one kernel: its argument count and the attributes set per device.
    Holding the kernel keeps its ``id`` from being reused while the state is in ``_states``."""

    __slots__ = ("kernel", "nargs", "non_portable", "smem")

    def __init__(self, kernel: Any):
        self.kernel = kernel
        try:
            self.nargs: int | None = int(kernel.num_arguments)
        except Exception:  # a driver before CUDA 12.4 cannot say; launch without the check
            self.nargs = None
        self.smem: dict[int, int] = {}
        self.non_portable: set[int] = set()

    def opt_in(self, device: int, smem: int, non_portable: bool) -> None:
        if smem > self.smem.get(device, _DEFAULT_SMEM):
            _set_attribute(self.kernel, device, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", smem)
            self.smem[device] = smem
        if non_portable and device not in self.non_portable:
            _set_attribute(self.kernel, device, "CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED", 1)
            self.non_portable.add(device)


def _state(kernel: Any) -> _KernelState:
    state = _KernelState(kernel)
    with _lock:
        _states[id(kernel)] = state
    return state


def _set_attribute(kernel: Any, device: int, name: str, value: int) -> None:
    """cuda.core kernels are ``CUkernel`` handles (library API) and its ``Kernel.attributes`` are read-only:
    ``cuKernelSetAttribute`` sets them per device (``cuFuncSetAttribute`` answers INVALID_HANDLE)."""
    from cuda.bindings import driver

    attribute = getattr(driver.CUfunction_attribute, name)
    (err,) = driver.cuKernelSetAttribute(attribute, int(value), kernel.handle, int(device))
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuKernelSetAttribute({name}={value}) on device {device} failed: {err}")


def _stream(stream: Any) -> Any:
    """A cuda.core Stream for ``stream`` (CuPy's current one when None), wrapped once per handle: wrapping
    through ``__cuda_stream__`` on every launch would cost more than the launch. The wrapper does not own the
    stream; CuPy does."""
    if stream is None:
        stream = _cupy_module().cuda.get_current_stream()
    handle = getattr(stream, "ptr", None)
    if type(handle) is not int:
        from cuda.core import Stream

        if isinstance(stream, Stream):
            return stream
        handle = int(stream.__cuda_stream__()[1])
    wrapped = _streams.get(handle)
    if wrapped is None:
        from cuda.core import Stream

        with _lock:
            wrapped = _streams.setdefault(handle, Stream.from_handle(handle))
    return wrapped
