"""flashrnn_core: traditional RNNs (LSTM, GRU, Elman, sLSTM) on NVIDIA GPUs from plain Python.

Public names only; see ``api.py`` for the calls and ``../shared/SPEC.md`` (the contract) for shapes and math.
"""

from .api import ForwardResult, Grads, backward, backward_memory, flashrnn, forward
from .cells import FUNCTIONS
from .stepper import Stepper

__version__ = "0.1.0"

__all__ = ["forward", "backward", "flashrnn", "backward_memory", "ForwardResult", "Grads", "FUNCTIONS", "Stepper",
           "__version__"]
