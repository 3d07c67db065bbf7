"""What training applies to a plain model from outside (the model files stay plain PyTorch):
activation checkpointing per block, `torch.compile`, and the unit FSDP shards by. Parameter names do not
change, so checkpoints and exports are the same with or without any of them.
"""

from __future__ import annotations

from xlstm_lm.models import LanguageModel
from xlstm_lm.models.llama import TransformerLayer
from xlstm_lm.models.mlstm import MLSTMBlock
from xlstm_lm.models.xlstm_large import LargeMLSTMBlock
from xlstm_lm.models.slstm import SLSTMBlock

# FSDP wraps each of these on its own: one all-gather per block in the forward and backward, so at most
# one block's full parameters (plus the root's embedding and head) are materialized at a time.
BLOCK_CLASSES = frozenset({MLSTMBlock, SLSTMBlock, LargeMLSTMBlock, TransformerLayer})


def parallelize(model: LanguageModel, activation_checkpointing: bool = False, compile: bool = False) -> LanguageModel:
    """Switch on per-block activation checkpointing and compile the model in place (`nn.Module.compile`).

    Note: compiled for static shapes (training's are fixed; a new shape, such as a shorter last validation
    batch, compiles once more): inductor failed on symbolic sequence lengths in the chunked mLSTM.
    """
    model.activation_checkpointing = activation_checkpointing
    if compile:
        model.compile(dynamic=False)
    return model


def unwrapped_name(name: str) -> str:
    """A parameter name without the prefixes FSDP (and checkpoint wrappers) insert for the modules they wrap."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
