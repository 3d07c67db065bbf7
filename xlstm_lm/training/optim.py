"""AdamW with weight decay on weight matrices only, and the warmup + cosine learning-rate schedule (DESIGN §11)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimizerConfig:
    """AdamW hyper-parameters."""

    lr: float = 2e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be positive, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"optimizer betas must lie in [0, 1), got {self.beta1}, {self.beta2}")


@dataclass
class SchedulerConfig:
    """Linear warmup to the peak, then cosine decay to `min_lr_ratio` of the peak at the last step."""

    warmup_steps: int = 50
    min_lr_ratio: float = 0.1

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"scheduler.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"scheduler.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


def decayed_parameter_names(model: nn.Module) -> set[str]:
    """Names of the weight matrices (ndim >= 2): norms, biases, gate biases, embeddings and Mamba's A_log (the
    log of its state decay rates, not a map) are not decayed.

    Note: works on a parallelized model too: FSDP2 keeps the names and the full shape of the parameters it
    shards (DTensors).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {name for name, param in model.named_parameters()
            if param.ndim >= 2 and not name.endswith(("bias", "A_log"))  # sLSTM's (4, NH, DH) bias is not a matrix
            and id(param) not in embeddings}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: the `decayed_parameter_names` and the rest."""
    decayed = decayed_parameter_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if name in decayed else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over the two groups; fused (one kernel for all parameters) when they all live on a GPU."""
    on_gpu = all(param.is_cuda for param in model.parameters())
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=on_gpu or None,
    )


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
