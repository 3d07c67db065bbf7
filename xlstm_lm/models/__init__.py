"""Plain PyTorch models: xLSTM blocks and stacks, the Transformer and LSTM baselines (no Lightning or Hydra).

`build_model` turns a config (dataclass or plain dict) into its model, chosen by `architecture`.
"""

from __future__ import annotations

import dataclasses

from xlstm_lm.models.base import LanguageModel
from xlstm_lm.models.llama import LlamaConfig, LlamaLM
from xlstm_lm.models.lm import XLSTMLM, XLSTMConfig, place_slstm_blocks
from xlstm_lm.models.lstm import LSTMCell, LSTMConfig, LSTMLM, lstm_pointwise

# architecture -> (config class, model class)
MODELS = {
    "xlstm": (XLSTMConfig, XLSTMLM),
    "xlstm_large": (XLSTMConfig, XLSTMLM),
    "llama": (LlamaConfig, LlamaLM),
    "lstm": (LSTMConfig, LSTMLM),
}


def model_config(config: dict | object):
    """The config dataclass for a dict (from a checkpoint or config.json) or a dataclass instance."""
    fields = config if isinstance(config, dict) else dataclasses.asdict(config)
    architecture = fields.get("architecture")
    if architecture not in MODELS:
        raise ValueError(f"unknown model architecture {architecture!r}: expected one of {sorted(MODELS)}")
    return MODELS[architecture][0](**fields)


def build_model(config: dict | object) -> LanguageModel:
    """Build the language model a config describes (weights initialized)."""
    config = model_config(config)
    return MODELS[config.architecture][1](config)


__all__ = [
    "MODELS", "LanguageModel", "build_model", "model_config",
    "XLSTMLM", "XLSTMConfig", "place_slstm_blocks",
    "LlamaConfig", "LlamaLM",
    "LSTMCell", "LSTMConfig", "LSTMLM", "lstm_pointwise",
]
