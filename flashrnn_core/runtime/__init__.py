"""The runtime: NVRTC compilation through cuda.core with an on-disk program cache, module loading and launch.

One home for everything between a ``KernelSpec`` and a running kernel (docs/architecture.md, "Runtime
contract"). Importing it needs only NumPy; cuda-python and CuPy are imported when a function needs them.

    spec = KernelSpec("alternating.cu", "flashrnn_alt_fw", (("FLASHRNN_CELL", "LstmCell"),), "lstm cuda fw")
    kernel = get_kernel(spec)                               # compiled once, cached on disk, loaded once
    launch(kernel, grid, block, Wx, R, np.int32(B), shmem=0)  # on CuPy's current stream
    compile_spec(spec, "sm_90").resources                   # no GPU needed
    step = PreparedLaunch(kernel, grid, block, SLOT, R, shmem=0)  # resolved once; step(Wx_t) only launches
"""

from .compile import (CompileResult, KernelSpec, Resources, compile_spec, is_whole_elf, nvrtc_version,
                      parse_ptxas_report)
from .launch import SLOT, PreparedLaunch, current_device, device_arch, get_kernel, launch, wait_until_at_least

__all__ = ["SLOT", "CompileResult", "KernelSpec", "PreparedLaunch", "Resources", "compile_spec", "current_device",
           "device_arch", "get_kernel", "is_whole_elf", "launch", "nvrtc_version", "parse_ptxas_report",
           "wait_until_at_least"]
