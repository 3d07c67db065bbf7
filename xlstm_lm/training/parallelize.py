"""What training applies to a plain model from outside (the model files stay plain PyTorch):
activation checkpointing per block and `torch.compile`. Parameter names do not change, so checkpoints and
exports are the same with or without either switch.
"""

from __future__ import annotations

from xlstm_lm.models import LanguageModel


def parallelize(model: LanguageModel, activation_checkpointing: bool = False, compile: bool = False) -> LanguageModel:
    """Switch on per-block activation checkpointing and compile the model in place (`nn.Module.compile`)."""
    model.activation_checkpointing = activation_checkpointing
    if compile:
        model.compile()
    return model
