"""Plain PyTorch models: xLSTM blocks and stacks, the classic LSTM cell (no Lightning or Hydra here)."""

from xlstm_lm.models.lm import XLSTMLM, XLSTMConfig, place_slstm_blocks
from xlstm_lm.models.lstm import LSTMCell, lstm_pointwise

__all__ = ["XLSTMLM", "XLSTMConfig", "place_slstm_blocks", "LSTMCell", "lstm_pointwise"]
