"""Plain PyTorch models: the xLSTM paper stack, the 7B-style xLSTM stack, the Transformer, LSTM and Mamba
baselines (no Lightning or Hydra).

`build_model` turns a config (dataclass or plain dict) into its model, chosen by `architecture`.
"""

from __future__ import annotations

import dataclasses

from xlstm_lm.models.base import LanguageModel
from xlstm_lm.models.llama import LlamaConfig, LlamaLM
from xlstm_lm.models.lstm import LSTMCell, LSTMConfig, LSTMLM, lstm_pointwise
from xlstm_lm.models.mamba import MambaConfig, MambaLM
from xlstm_lm.models.xlstm import XLSTMLM, XLSTMConfig, place_slstm_blocks
from xlstm_lm.models.xlstm_large import XLSTMLargeConfig, XLSTMLargeLM

# architecture -> (config class, model class)
MODELS = {
    "xlstm": (XLSTMConfig, XLSTMLM),
    "xlstm_large": (XLSTMLargeConfig, XLSTMLargeLM),
    "llama": (LlamaConfig, LlamaLM),
    "lstm": (LSTMConfig, LSTMLM),
    "mamba": (MambaConfig, MambaLM),
}

# Before each xLSTM stack had its own config, one class served both and every checkpoint and export of those
# runs stores all its fields. Per architecture: the fields it renamed (old -> new), the ones the other stack
# alone used (they never had an effect on this one), and fields added since with the value those runs were
# trained with (the large block's per-head norm used eps 1e-5 before it followed NX-AI's norm_eps of 1e-6).
FORMER_FIELDS = {
    "xlstm": ({}, {"large_qk_factor", "large_ffn_factor", "gate_soft_cap"}, {}),
    "xlstm_large": ({"large_qk_factor": "qk_factor", "large_ffn_factor": "ffn_factor"},
                    {"ratio", "slstm_at", "proj_factor", "conv_kernel", "qkv_block_size", "slstm_ffn_factor"},
                    {"head_norm_eps": 1e-5}),
}


def model_config(config: dict | object):
    """The config dataclass for a dict (from a checkpoint or config.json) or a dataclass instance; a dict of the
    former shared xLSTM config (it has "large_qk_factor") is read as it was meant then (`FORMER_FIELDS`)."""
    fields = dict(config) if isinstance(config, dict) else dataclasses.asdict(config)
    architecture = fields.get("architecture")
    if architecture not in MODELS:
        raise ValueError(f"unknown model architecture {architecture!r}: expected one of {sorted(MODELS)}")
    config_class = MODELS[architecture][0]
    if architecture in FORMER_FIELDS and "large_qk_factor" in fields:
        renamed, unused, implied = FORMER_FIELDS[architecture]
        fields = implied | {renamed.get(name, name): value for name, value in fields.items() if name not in unused}
    return config_class(**fields)


def build_model(config: dict | object) -> LanguageModel:
    """Build the language model a config describes (weights initialized)."""
    config = model_config(config)
    return MODELS[config.architecture][1](config)


__all__ = [
    "MODELS", "LanguageModel", "build_model", "model_config",
    "XLSTMLM", "XLSTMConfig", "place_slstm_blocks",
    "XLSTMLargeConfig", "XLSTMLargeLM",
    "LlamaConfig", "LlamaLM",
    "LSTMCell", "LSTMConfig", "LSTMLM", "lstm_pointwise",
    "MambaConfig", "MambaLM",
]
