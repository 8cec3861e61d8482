"""What every backend is (docs/architecture.md, "Backend contract") and the gradients it returns.

Shapes: B batch, T time, N heads, D head dimension, S states, Gw/Gr/Gb gate counts of the cell (SPEC.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ..runtime import KernelSpec
    from ..validate import Problem

Array = Any  # numpy.ndarray or cupy.ndarray


class Grads(NamedTuple):
    """Gradients of a loss through one forward pass, each in the dtype of the input it belongs to."""

    dWx: Array  #: [B, T, Gw, N, D]
    dR: Array  #: [Gr, N, D, D], summed over batch and time
    db: Array  #: [Gb, N, D], summed over batch and time
    dstates_initial: Array  #: [S, B, 1, N, D], in Wx's dtype when no initial states were given


class Backend(ABC):
    """One way to run the recurrence. ``problem`` (``validate.Problem``) is already checked: a backend
    re-checks nothing, and says in ``unsupported`` what it cannot take before any device work starts."""

    name: str

    @abstractmethod
    def unsupported(self, problem: "Problem") -> str | None:
        """None if this backend can run ``problem``, else the reason, in words a caller can act on."""

    @abstractmethod
    def forward(self, problem: "Problem", Wx: Array, R: Array, b: Array, states0: Array | None,
                save: bool = True) -> tuple[Array, Array | None]:
        """Wx ``[B, T, Gw, N, D]``, R ``[Gr, N, D, D]``, b ``[Gb, N, D]``, states0 ``[S, B, 1, N, D]`` or None
        (zeros) -> ``(states [S, B, T, N, D] in Wx's dtype, saved [B, T, n_saved, N, D])``; ``saved`` holds the
        cell's saved values (docs/architecture.md, "Saved tensors"). ``save`` False: an inference forward,
        which computes the same states, writes no saved tensors and returns None for them."""

    @abstractmethod
    def backward(
        self,
        problem: "Problem",
        Wx: Array,
        R: Array,
        b: Array,
        states0: Array | None,
        states: Array,
        saved: Array,
        dstates: Array | None,
        dlast: Array | None,
    ) -> Grads:
        """Gradients for upstream ``dstates`` (``[S, B, T, N, D]``, ``[1, B, T, N, D]`` for h only, or None) and
        ``dlast`` (``[S, B, 1, N, D]`` or None, on the last step's states), given what ``forward`` returned."""

    @abstractmethod
    def kernel_variants(self) -> "list[KernelSpec]":
        """Every kernel this backend can launch (what ``python -m flashrnn_core.compile`` builds and checks)."""
