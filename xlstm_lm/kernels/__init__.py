"""Cell kernels of xLSTM: pure functions on tensors, one dispatcher per cell (DESIGN.md §2, §8).

A leaf package: it imports torch and nothing else from xlstm_lm.
"""

from .mlstm import MLSTM_BACKENDS, mlstm, mlstm_step
from .slstm import SLSTM_BACKENDS, slstm, slstm_step

__all__ = ["MLSTM_BACKENDS", "SLSTM_BACKENDS", "mlstm", "mlstm_step", "slstm", "slstm_step"]
