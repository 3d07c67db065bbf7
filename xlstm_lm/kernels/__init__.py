"""Cell kernels of xLSTM: pure functions on tensors, one backend registry and dispatcher per cell (DESIGN.md §2, §8).

A leaf package: it imports torch and nothing else from xlstm_lm.
"""

from .backends import Backend, BackendChoice
from .mlstm import MLSTM_BACKENDS, mlstm, mlstm_backend, mlstm_step
from .slstm import SLSTM_BACKENDS, slstm, slstm_backend, slstm_step

__all__ = ["Backend", "BackendChoice", "MLSTM_BACKENDS", "SLSTM_BACKENDS", "mlstm", "mlstm_backend", "mlstm_step",
           "slstm", "slstm_backend", "slstm_step"]
