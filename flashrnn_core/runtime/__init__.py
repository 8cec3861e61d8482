"""The runtime: NVRTC compilation through cuda.core with an on-disk program cache, module loading and launch.

One home for everything between a ``KernelSpec`` and a running kernel (docs/architecture.md, "Runtime
contract"). Importing it needs cuda-python only when a function is called, not at import.
"""

from .compile import CompileResult, KernelSpec, Resources, compile_spec, is_whole_elf, nvrtc_version, parse_ptxas_report
from .launch import device_arch, get_kernel, launch

__all__ = ["KernelSpec", "CompileResult", "Resources", "compile_spec", "get_kernel", "launch", "device_arch",
           "nvrtc_version", "parse_ptxas_report", "is_whole_elf"]
