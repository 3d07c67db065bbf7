"""Build the Lightning Trainer, its strategy, checkpointing, fault handling and logger from plain configs."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

from xlstm_lm.training.callbacks import (NONFINITE_ACTIONS, CheckpointOnInterrupt, ContinuousLogSteps, LossGuard,
                                         TokenThroughput)
from xlstm_lm.training.checkpointing import CHECKPOINT_DIR, LAST, AtomicCheckpointIO, checkpoint_callbacks
from xlstm_lm.training.parallelize import FSDPConfig, build_strategy

log = logging.getLogger(__name__)
LOGGERS = ("csv", "wandb", "none")


@dataclass
class TrainerConfig:
    """What Lightning's Trainer needs: hardware, precision, length of the run, validation and checkpoints."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp, fsdp (FSDP2, configured by `fsdp` below), or any Lightning strategy name
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    precision: str = "32-true"  # "bf16-mixed" on GPUs: bf16 activations, float32 weights and states
    max_steps: int = 200
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    val_check_interval: int = 100  # training steps between validations
    limit_val_batches: Any = 1.0  # a fraction of the validation set, or a number of batches
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 100
    checkpoint_every_minutes: Optional[float] = 30.0  # also refresh last.ckpt this often; None: off
    keep_last_checkpoints: int = 3  # stepNNNNNN.ckpt files kept (-1: all), besides last.ckpt and the best val/loss
    nonfinite: str = "skip"  # NaN/inf loss or spike: skip the optimizer step, or stop (bf16/fp32; fp16 has its scaler)
    spike_factor: Optional[float] = None  # a loss above this x its running mean is treated like NaN; None: off
    max_consecutive_skips: int = 10  # stop when this many steps in a row were skipped
    slurm_requeue_signal: Optional[str] = "SIGUSR1"  # under SLURM: checkpoint and requeue on it; None: no requeue
    deterministic: bool = False
    activation_checkpointing: bool = False  # recompute each block in the backward: less memory, ~1/3 more compute
    compile: bool = False  # torch.compile the model (in place; state-dict keys unchanged)
    peak_tflops: Optional[float] = None  # peak TFLOP/s of one device, for MFU; None: by GPU name and precision

    def __post_init__(self):
        if self.max_steps <= 0:
            raise ValueError(f"trainer.max_steps must be positive, got {self.max_steps}")
        if self.val_check_interval <= 0 or self.checkpoint_every_n_steps <= 0:
            raise ValueError("trainer.val_check_interval and trainer.checkpoint_every_n_steps must be positive")
        if self.nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f"trainer.nonfinite must be one of {NONFINITE_ACTIONS}, got {self.nonfinite!r}")
        if self.slurm_requeue_signal is not None and not hasattr(signal, self.slurm_requeue_signal):
            raise ValueError(f"trainer.slurm_requeue_signal={self.slurm_requeue_signal!r} is not a signal name "
                             "(e.g. SIGUSR1); null switches requeueing off")


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


def is_first_process() -> bool:
    """Rank 0 before Lightning has set the ranks up: not a DDP child (LOCAL_RANK), another SLURM/torchrun task
    (RANK, SLURM_PROCID, read by rank_zero_only) or the launcher on another node (NODE_RANK)."""
    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def keep_previous_metrics(run_dir: Path) -> None:
    """Move a resumed run's logs/metrics.csv to logs/metrics-<n>.csv (n = 1, 2, ... in order of the restarts),
    because Lightning's CSV logger deletes the file it finds. Rank 0 only."""
    metrics = run_dir / "logs" / "metrics.csv"
    if not is_first_process() or not metrics.is_file():
        return
    index = 1
    while (kept := metrics.with_name(f"metrics-{index}.csv")).exists():
        index += 1
    metrics.rename(kept)
    log.info("the metrics logged before this restart are in %s", kept)


def build_logger(config: LoggerConfig, run_dir: Path):
    if config.kind == "csv":
        keep_previous_metrics(run_dir)
        return CSVLogger(save_dir=str(run_dir), name="logs", version="")
    if config.kind == "wandb":
        mode = config.mode or os.environ.get("WANDB_MODE", "online")
        if mode == "online" and is_first_process():
            import wandb

            if not wandb.login(prompt=False, verify=False):
                raise ValueError("logger=wandb logs online but finds no W&B credentials: run `wandb login` or set "
                                 "WANDB_API_KEY, or log offline with logger.mode=offline (or WANDB_MODE=offline)")
        return WandbLogger(project=config.project, name=config.name, save_dir=str(run_dir), mode=mode)
    return False


def build_plugins(config: TrainerConfig) -> list:
    """Atomic, NaN-refusing checkpoint writes; under SLURM, checkpoint-and-requeue on the pre-emption signal."""
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        requeue_signal = getattr(signal, config.slurm_requeue_signal or "SIGUSR1")
        plugins.append(SLURMEnvironment(auto_requeue=config.slurm_requeue_signal is not None,
                                        requeue_signal=requeue_signal))
    return plugins


def build_trainer(config: TrainerConfig, logger: LoggerConfig, run_dir: Path) -> L.Trainer:
    """Trainer with the checkpoints of `checkpoint_callbacks` in run_dir/checkpoints, the loss guard, last.ckpt
    on Ctrl-C and tokens/s with MFU. The data module shards batches by rank itself, so Lightning adds no
    sampler."""
    guard = LossGuard(config.nonfinite, config.spike_factor, config.max_consecutive_skips)
    checkpoints = checkpoint_callbacks(run_dir, config.checkpoint_every_n_steps, config.checkpoint_every_minutes,
                                       config.keep_last_checkpoints)
    return L.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=build_strategy(config),
        precision=config.precision,
        plugins=build_plugins(config),
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
        callbacks=[*checkpoints, guard, CheckpointOnInterrupt(run_dir / CHECKPOINT_DIR / LAST),
                   TokenThroughput(config.peak_tflops), ContinuousLogSteps(), TQDMProgressBar(refresh_rate=1)],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
