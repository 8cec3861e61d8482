"""ConstrINT: the integer constraint solver, the hardware model and the fused kernels' problems.

- ``solver``: ``Problem``, ``divides``, ``predicate``, ``Solution``, ``Infeasible`` — a general exact integer
  CSP (domain propagation plus branch and bound) with conflict explanations.
- ``hardware``: ``Hardware`` (``from_device()`` through cuda.core) and presets ``A100``, ``H100``, ``H200``,
  ``L40S``, ``RTX4090``.
- ``problems``: ``solve_fused(hardware, function, dtype, B, N, D, direction) -> FusedParams | Infeasible``, the
  ``KernelModel`` every constant lives in, ``top_k`` for measured sweeps, ``assess`` for one given choice,
  ``all_feasible`` to enumerate every configuration (exhaustive sweeps).
- ``tuning``: the on-disk cache of choices (``choose``, ``choose_for_device``, ``load``, ``store``).

- ``backward``: the fused backward kernel's own problem (``solve_fused(..., direction="backward")`` builds it).

This package is the one chooser of the ``cuda_fused`` kernels' parameters, forward and backward:
``backends.fused.choose`` asks ``tuning.choose_for_device`` and converts the result (``backends.fused.launch_of``).
"""

from .hardware import A100, H100, H200, L40S, PRESETS, RTX4090, Hardware, preset
from .problems import DEFAULT_MODEL, FusedParams, KernelModel, all_feasible, assess, solve_fused, top_k
from .solver import Infeasible, Problem, Solution, SolverError, divides, predicate

__all__ = [
    "A100", "H100", "H200", "L40S", "RTX4090", "PRESETS", "Hardware", "preset",
    "DEFAULT_MODEL", "FusedParams", "KernelModel", "all_feasible", "assess", "solve_fused", "top_k",
    "Infeasible", "Problem", "Solution", "SolverError", "divides", "predicate",
]
