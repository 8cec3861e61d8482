"""What a GPU offers a persistent kernel: the limits the kernel problems are solved against.

``Hardware.from_device()`` reads the current device through ``cuda.core``; the presets let CPU-only tests and
the compile job solve for GPUs that are not there.

Sources of the preset figures (checked 2026-11; KB = 1024 bytes):

- CUDA C++ Programming Guide, "Technical Specifications per Compute Capability", Table 30 (Device and SM
  information) and Table 31 (Memory information): for 8.0 / 8.9 / 9.0 respectively, resident blocks per SM
  32 / 24 / 32, resident threads per SM 2048 / 1536 / 2048; 64 K 32-bit registers per SM and per block,
  255 per thread; shared memory per SM 164 / 100 / 228 KB and per block (opt-in) 163 / 99 / 227 KB.
- Thread-block clusters (Table 29, "Thread Block Cluster": 9.0 and newer): 8 blocks is the portable maximum; on
  H100/H200, 16 with ``cudaFuncAttributeNonPortableClusterSizeAllowed`` (Programming Guide, "Thread Block
  Clusters"; measured in issue 5: 16-block clusters launch once the attribute is set).
- SM counts, L2, clocks and memory bandwidth are product facts, from the vendor data sheets/whitepapers: A100
  SXM4 40/80 GB (108 SMs, 40 MB L2, 1410 MHz boost, 2.0 TB/s at 80 GB), H100 SXM5 (132 SMs, 50 MB L2,
  1980 MHz, 3.35 TB/s), H200 SXM (the same GH100 die, 132 SMs, 4.8 TB/s), L40S (142 SMs, 96 MB L2,
  2520 MHz, 864 GB/s), GeForce RTX 4090 (128 SMs, 72 MB L2, 2520 MHz, 1008 GB/s; Ada whitepaper, Appendix A).
  GPCs (a cluster must fit in one; vendor whitepapers give the full dies, SKUs disable parts): A100 7, H100/H200
  SXM 8, L40S 12, RTX 4090 11 -- approximate, used only to bound how many clusters are resident at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

KB = 1024


@dataclass(frozen=True)
class Hardware:
    """One GPU's limits, as the kernel problems use them.

    name: device or preset name (part of the tuning-cache key); cc: compute capability (major, minor);
    sm_count: streaming multiprocessors; regs_per_sm / regs_per_block: 32-bit registers in one SM's register
    file / one block may use; max_regs_per_thread: 255 on every architecture since 3.5;
    smem_per_block_optin: dynamic shared memory one block may have after opting in; smem_per_sm: the SM's
    shared memory (what co-resident blocks share; each block also costs ``smem_reserved_per_block``, the 1 KB
    the runtime keeps per block on 8.0+); max_threads_per_block / max_threads_per_sm / max_blocks_per_sm:
    launch and residency limits; warp_size: 32; clusters: thread-block clusters (sm_90+);
    max_cluster_portable / max_cluster_nonportable: largest cluster without / with the non-portable attribute
    (1 without clusters); l2_bytes: L2 cache size; clock_mhz: boost clock (turns cycles into time);
    mem_bandwidth_gbs: DRAM bandwidth, GB/s (the throughput term of the latency model);
    reg_alloc_unit: registers are allocated per warp in units of 256 (8 a thread); warp_alloc_unit: a block's
    warps are counted in groups of 4 when its registers are allocated (the occupancy calculator's warp allocation
    granularity; ptxas's cap under ``__launch_bounds__(threads, 1)`` follows it: 448 threads (14 warps, counted
    as 16) get 128 registers, 320 threads (10, counted as 12) 168, measured for sm_80 and sm_90 with NVRTC
    12.9); gpcs: graphics processing
    clusters (a thread-block cluster is placed within one; not a device attribute, so from the preset).
    """

    name: str
    cc: tuple[int, int]
    sm_count: int
    regs_per_sm: int = 64 * KB
    regs_per_block: int = 64 * KB
    max_regs_per_thread: int = 255
    smem_per_block_optin: int = 48 * KB
    smem_per_sm: int = 64 * KB
    smem_reserved_per_block: int = 1 * KB
    max_threads_per_block: int = 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    warp_size: int = 32
    clusters: bool = False
    max_cluster_portable: int = 1
    max_cluster_nonportable: int = 1
    l2_bytes: int = 0
    clock_mhz: int = 1500
    mem_bandwidth_gbs: float = 1000.0
    reg_alloc_unit: int = 256
    warp_alloc_unit: int = 4
    gpcs: int = 8

    @property
    def sm(self) -> int:
        """The compute capability as one number (90 for 9.0), as in ``sm_90``."""
        return 10 * self.cc[0] + self.cc[1]

    @property
    def arch(self) -> str:
        return f"sm_{self.sm}"

    @property
    def max_cluster(self) -> int:
        """The largest cluster a kernel can launch with (non-portable sizes are opted in by the runtime)."""
        return self.max_cluster_nonportable if self.clusters else 1

    def allocated_warps(self, threads: int) -> int:
        """Warps a block of ``threads`` is allocated registers for (rounded up to ``warp_alloc_unit``)."""
        warps = -(-threads // self.warp_size)
        return -(-warps // self.warp_alloc_unit) * self.warp_alloc_unit

    def bytes_per_cycle(self) -> float:
        """DRAM bytes per SM clock cycle, the whole GPU."""
        return self.mem_bandwidth_gbs * 1e9 / (self.clock_mhz * 1e6)

    def cycles_to_us(self, cycles: float) -> float:
        return cycles / self.clock_mhz

    def with_(self, **changes) -> "Hardware":
        """A copy with some fields changed (e.g. a partitioned GPU's SM count)."""
        return replace(self, **changes)

    @classmethod
    def from_device(cls, device: int | None = None) -> "Hardware":
        """The current (or given) device, read through ``cuda.core``; raises ``CudaUnavailableError`` without one."""
        from ..errors import CudaUnavailableError

        try:
            from cuda.core import Device

            dev = Device(device) if device is not None else Device()
            props = dev.properties
            name = dev.name
        except ImportError as err:
            raise CudaUnavailableError(f"cuda.core is not installed ({err}); install flashrnn_core[cuda12] or "
                                       f"use a preset: {', '.join(PRESETS)}") from err
        except Exception as err:  # no driver, no device, ...: cuda.core raises several kinds
            raise CudaUnavailableError(f"no CUDA device could be read through cuda.core ({type(err).__name__}: "
                                       f"{err}); use a preset instead: {', '.join(PRESETS)}") from err
        return cls.from_properties(name, props)

    @classmethod
    def from_properties(cls, name: str, props) -> "Hardware":
        """From a ``cuda.core`` ``DeviceProperties`` (or anything with the same attribute names)."""
        cc = (int(props.compute_capability_major), int(props.compute_capability_minor))
        clusters = bool(getattr(props, "cluster_launch", False))
        base = preset_for_cc(cc)
        return cls(
            name=str(name), cc=cc, sm_count=int(props.multiprocessor_count),
            regs_per_sm=int(props.max_registers_per_multiprocessor),
            regs_per_block=int(props.max_registers_per_block),
            max_regs_per_thread=base.max_regs_per_thread,  # not a device attribute: 255 since cc 3.5
            smem_per_block_optin=int(props.max_shared_memory_per_block_optin),
            smem_per_sm=int(props.max_shared_memory_per_multiprocessor),
            smem_reserved_per_block=int(getattr(props, "reserved_shared_memory_per_block", base.smem_reserved_per_block)),
            max_threads_per_block=int(props.max_threads_per_block),
            max_threads_per_sm=int(props.max_threads_per_multiprocessor),
            max_blocks_per_sm=int(props.max_blocks_per_multiprocessor),
            warp_size=int(props.warp_size), clusters=clusters,
            # Cluster limits are not device attributes (the occupancy API answers per kernel): 8 portable
            # everywhere; 16 non-portable on 9.0 and 10.x (what cudaOccupancyMaxPotentialClusterSize reports).
            max_cluster_portable=8 if clusters else 1,
            max_cluster_nonportable=(16 if cc[0] in (9, 10) else 8) if clusters else 1,
            l2_bytes=int(props.l2_cache_size),
            clock_mhz=max(1, int(props.clock_rate) // 1000) if getattr(props, "clock_rate", 0) else base.clock_mhz,
            mem_bandwidth_gbs=_bandwidth_gbs(props, base.mem_bandwidth_gbs),
            gpcs=base.gpcs,
        )


@lru_cache(maxsize=None)
def current(device: int | None = None) -> Hardware:
    """``Hardware.from_device(device)``, read once per process and device (the device cannot change)."""
    return Hardware.from_device(device)


def _bandwidth_gbs(props, fallback: float) -> float:
    """2 x memory clock x bus width (DDR), when the device reports them."""
    try:
        clock_khz = int(props.memory_clock_rate)
        bus_bits = int(props.global_memory_bus_width)
    except Exception:
        return fallback
    if clock_khz <= 0 or bus_bits <= 0:
        return fallback
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


# Compute-capability facts (Tables 30/31), shared by the presets of one architecture.
_SM80 = dict(cc=(8, 0), smem_per_block_optin=163 * KB, smem_per_sm=164 * KB, max_threads_per_sm=2048,
             max_blocks_per_sm=32)
_SM89 = dict(cc=(8, 9), smem_per_block_optin=99 * KB, smem_per_sm=100 * KB, max_threads_per_sm=1536,
             max_blocks_per_sm=24)
_SM90 = dict(cc=(9, 0), smem_per_block_optin=227 * KB, smem_per_sm=228 * KB, max_threads_per_sm=2048,
             max_blocks_per_sm=32, clusters=True, max_cluster_portable=8, max_cluster_nonportable=16)

A100 = Hardware(name="A100", sm_count=108, l2_bytes=40 * KB * KB, clock_mhz=1410, mem_bandwidth_gbs=2039.0, gpcs=7,
                **_SM80)
H100 = Hardware(name="H100", sm_count=132, l2_bytes=50 * KB * KB, clock_mhz=1980, mem_bandwidth_gbs=3350.0, gpcs=8,
                **_SM90)
H200 = Hardware(name="H200", sm_count=132, l2_bytes=50 * KB * KB, clock_mhz=1980, mem_bandwidth_gbs=4800.0, gpcs=8,
                **_SM90)
L40S = Hardware(name="L40S", sm_count=142, l2_bytes=96 * KB * KB, clock_mhz=2520, mem_bandwidth_gbs=864.0, gpcs=12,
                **_SM89)
RTX4090 = Hardware(name="RTX 4090", sm_count=128, l2_bytes=72 * KB * KB, clock_mhz=2520, mem_bandwidth_gbs=1008.0,
                   gpcs=11, **_SM89)

#: Presets by name (case-insensitive lookups through ``preset``).
PRESETS: dict[str, Hardware] = {"A100": A100, "H100": H100, "H200": H200, "L40S": L40S, "RTX4090": RTX4090}


def preset(name: str) -> Hardware:
    """A preset by name: "A100", "H100", "H200", "L40S", "RTX4090" (also "RTX 4090", "sm_80", "sm_90", ...)."""
    key = name.replace(" ", "").replace("-", "").upper()
    by_arch = {"SM_80": A100, "SM80": A100, "SM_90": H100, "SM90": H100, "SM_89": L40S, "SM89": L40S}
    for k, hw in PRESETS.items():
        if k.upper() == key:
            return hw
    if key in by_arch:
        return by_arch[key]
    raise KeyError(f"no hardware preset {name!r}; presets: {', '.join(PRESETS)}")


def preset_for_cc(cc: tuple[int, int]) -> Hardware:
    """The preset of the same architecture (for figures a device does not report), H100's for unknown ones."""
    for hw in PRESETS.values():
        if hw.cc == tuple(cc):
            return hw
    return H100
