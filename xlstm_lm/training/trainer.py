"""Build the Lightning Trainer, its checkpointing and its logger from plain configs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from xlstm_lm.training.callbacks import TokenThroughput

LOGGERS = ("csv", "wandb", "none")


@dataclass
class TrainerConfig:
    """What Lightning's Trainer needs: hardware, precision, length of the run, validation and checkpoints."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # "bf16-mixed" on GPUs: bf16 activations, float32 weights and states
    max_steps: int = 200
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    val_check_interval: int = 100  # training steps between validations
    limit_val_batches: Any = 1.0  # a fraction of the validation set, or a number of batches
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 100
    deterministic: bool = False
    activation_checkpointing: bool = False  # recompute each block in the backward: less memory, ~1/3 more compute
    compile: bool = False  # torch.compile the model (in place; parameter names unchanged)
    peak_tflops: Optional[float] = None  # peak FLOP/s of one device for MFU; None: A100/H100/H200 by name

    def __post_init__(self):
        if self.max_steps <= 0:
            raise ValueError(f"trainer.max_steps must be positive, got {self.max_steps}")
        if self.val_check_interval <= 0 or self.checkpoint_every_n_steps <= 0:
            raise ValueError("trainer.val_check_interval and trainer.checkpoint_every_n_steps must be positive")


@dataclass
class LoggerConfig:
    """Where metrics go: a CSV file in the run directory, Weights & Biases, or nowhere."""

    kind: str = "csv"
    project: str = "xlstm-lm"
    name: Optional[str] = None
    mode: Optional[str] = None  # wandb mode (online/offline/disabled); None uses $WANDB_MODE, else online

    def __post_init__(self):
        if self.kind not in LOGGERS:
            raise ValueError(f"logger.kind must be one of {LOGGERS}, got {self.kind!r}")


def build_logger(config: LoggerConfig, run_dir: Path):
    if config.kind == "csv":
        return CSVLogger(save_dir=str(run_dir), name="logs", version="")
    if config.kind == "wandb":
        mode = config.mode or os.environ.get("WANDB_MODE", "online")
        return WandbLogger(project=config.project, name=config.name, save_dir=str(run_dir), mode=mode)
    return False


def build_trainer(config: TrainerConfig, logger: LoggerConfig, run_dir: Path, throughput: TokenThroughput) -> L.Trainer:
    """Trainer with `last.ckpt` + periodic checkpoints in run_dir/checkpoints and the throughput callback."""
    checkpoints = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=-1,
    )
    return L.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_steps=config.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=config.accumulate_grad_batches,
        gradient_clip_val=config.gradient_clip_val or None,
        val_check_interval=config.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=config.limit_val_batches,
        log_every_n_steps=config.log_every_n_steps,
        deterministic=config.deterministic,
        logger=build_logger(logger, run_dir),
        callbacks=[checkpoints, throughput, TQDMProgressBar(refresh_rate=1)],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )
