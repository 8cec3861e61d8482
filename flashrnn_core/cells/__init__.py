"""The cells: their shapes (gate and state counts) and their pointwise math, one module per cell.

``CELLS[name]`` is the single table every other module reads gate and state counts from.
"""

from __future__ import annotations

from .base import Cell
from .elman import ElmanCell
from .gru import GRUCell
from .lstm import LSTMCell
from .slstm import SLSTMCell

CELLS: dict[str, Cell] = {c.name: c for c in (LSTMCell(), SLSTMCell(), GRUCell(), ElmanCell())}
FUNCTIONS: tuple[str, ...] = tuple(CELLS)

__all__ = ["CELLS", "FUNCTIONS", "Cell"]
