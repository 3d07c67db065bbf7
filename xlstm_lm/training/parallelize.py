"""Everything training applies to a plain model from outside (the model files stay plain PyTorch), in one
place: activation checkpointing per block, `torch.compile`, and FSDP2 (`fully_shard`, one unit per block)
under Lightning's ModelParallelStrategy for `trainer.strategy=fsdp`.

Lightning calls `parallelize` through `LanguageModelModule.configure_model` in every process once the ranks
are up. Parameter names do not change, so checkpoints and exports are the same with or without any of it:
nothing wraps a block in another module (FSDP2 installs hooks and keeps the names, its shards being DTensors
of the full shape), and `nn.Module.compile` compiles in place.

Note: activation checkpointing runs each block's forward under `torch.utils.checkpoint` in place, not with
PyTorch's module wrappers. `checkpoint_wrapper` inserts `_checkpoint_wrapped_module.` into the module tree,
where Lightning looks up the names when it loads a full checkpoint into an FSDP2 model (a KeyError: such a
run could not resume); the hook-based `torch.distributed._composable.checkpoint` keeps the names, but its
recomputation does not match the forward of a compiled model (a CheckpointError with trainer.compile=true).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.utils.checkpoint import checkpoint

from xlstm_lm.models import LanguageModel
from xlstm_lm.models.llama import TransformerLayer
from xlstm_lm.models.mamba import MambaLayer
from xlstm_lm.models.mlstm import MLSTMBlock
from xlstm_lm.models.xlstm_large import LargeMLSTMBlock
from xlstm_lm.models.slstm import SLSTMBlock

if TYPE_CHECKING:
    from xlstm_lm.training.trainer import TrainerConfig

# The unit of activation checkpointing and of FSDP: FSDP all-gathers one block's parameters at a time in
# the forward and the backward, so at most one block's full parameters (plus the root's embedding and head)
# are materialized at once.
BLOCK_CLASSES = (MLSTMBlock, SLSTMBlock, LargeMLSTMBlock, TransformerLayer, MambaLayer)
FSDP_SHARDINGS = ("full", "hybrid", "grad_op")
FSDP_STATE_DICTS = ("full", "sharded")


@dataclass
class FSDPConfig:
    """FSDP2 (used when trainer.strategy=fsdp): each xLSTM/Transformer block is one FSDP unit."""

    sharding: str = "full"  # full: over all GPUs; hybrid: within each node, replicated across nodes; grad_op: ZeRO-2
    state_dict_type: str = "full"  # full: one .ckpt gathered on rank 0; sharded: a folder with every rank's shard
    cpu_offload: bool = False  # keep the sharded parameters in CPU memory between uses

    def __post_init__(self):
        if self.sharding not in FSDP_SHARDINGS:
            raise ValueError(f"trainer.fsdp.sharding must be one of {sorted(FSDP_SHARDINGS)}, got {self.sharding!r}")
        if self.state_dict_type not in FSDP_STATE_DICTS:
            raise ValueError(f"trainer.fsdp.state_dict_type must be one of {FSDP_STATE_DICTS}, "
                             f"got {self.state_dict_type!r}")


def build_strategy(config: TrainerConfig):
    """`trainer.strategy` as Lightning takes it: the name, or for `fsdp` Lightning's ModelParallelStrategy, which
    leaves the sharding to `parallelize` and saves what `trainer.fsdp.state_dict_type` asks for."""
    if config.strategy != "fsdp":
        return config.strategy
    return ModelParallelStrategy(save_distributed_checkpoint=config.fsdp.state_dict_type == "sharded")


def fsdp_mesh(sharding: str, num_nodes: int, device_type: str) -> DeviceMesh:
    """The ranks FSDP shards over: all of them (1-D), or for `hybrid` the GPUs of each node, replicated across
    the nodes (2-D: replicate, shard). Needs the process group up."""
    world_size = dist.get_world_size()
    if sharding == "hybrid":
        return init_device_mesh(device_type, (num_nodes, world_size // num_nodes),
                                mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))


def parallelize(model: LanguageModel, config: TrainerConfig, device: torch.device | None = None) -> LanguageModel:
    """Apply `trainer.activation_checkpointing`, `trainer.compile` and, for `trainer.strategy=fsdp`, FSDP2 to
    `model` in place, in that order.

    Args:
        model: the plain language model.
        config: the trainer config (activation_checkpointing, compile, strategy, fsdp, num_nodes, precision).
        device: where the ranks compute; its type picks the FSDP mesh's backend (needed for fsdp only).

    Returns:
        `model`, changed in place.

    Note: compiled for static shapes (training's are fixed; a new shape, such as a shorter last validation
    batch, compiles once more): inductor failed on symbolic sequence lengths in the chunked mLSTM.
    """
    blocks = [module for module in model.modules() if isinstance(module, BLOCK_CLASSES)]
    if config.activation_checkpointing:
        for block in blocks:  # recomputed in the backward, when there is one
            block.forward = partial(checkpoint, block.forward, use_reentrant=False)
    if config.compile:
        model.compile(dynamic=False)
    if config.strategy == "fsdp":
        fsdp = config.fsdp
        # bf16 compute (Lightning autocasts too), float32 sharded master weights and gradient reductions
        mixed_precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if config.precision == "bf16-mixed" else MixedPrecisionPolicy()
        options = dict(mesh=fsdp_mesh(fsdp.sharding, config.num_nodes, device.type), mp_policy=mixed_precision,
                       offload_policy=CPUOffloadPolicy() if fsdp.cpu_offload else OffloadPolicy())
        for block in blocks:
            fully_shard(block, reshard_after_forward=fsdp.sharding != "grad_op", **options)
        fully_shard(model, **options)  # the root: embedding, final norm and head
    return model

