"""Checkpoints that survive faults: atomic writes, never NaN weights, every N steps and every T minutes,
and the newest checkpoint of a run directory found by itself on restart.

Layout of a run directory:

    checkpoints/last.ckpt            the newest state (every N steps, every T minutes, at the end)
    checkpoints/stepNNNNNN.ckpt      the last K of the every-N-steps checkpoints
    checkpoints/best-stepNNNNNN.ckpt the lowest val/loss so far
    hpc_ckpt_<n>.ckpt                written by Lightning on SLURM's pre-emption signal before it requeues
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

CHECKPOINT_DIR = "checkpoints"


def first_nonfinite_tensor(state_dict: dict[str, Any]) -> Optional[str]:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<path>.tmp` and renames it onto `<path>` (os.replace is atomic on POSIX), so a write that dies
    half-way leaves the previous checkpoint untouched; refuses to write weights that are not finite."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        bad = first_nonfinite_tensor(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise FloatingPointError(
                f"not writing {path}: parameter {bad} is NaN or infinite at step {checkpoint.get('global_step')}; "
                "the last good checkpoint stays. Lower optimizer.lr or keep trainer.nonfinite=skip")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def checkpoint_callbacks(run_dir: Path, every_n_steps: int, every_minutes: Optional[float],
                         keep_last: int) -> list[ModelCheckpoint]:
    """Every N steps (`last.ckpt` plus the last `keep_last` step files), every T minutes (`last.ckpt` only),
    and the best by val/loss. One ModelCheckpoint cannot count both steps and time, hence two."""
    directory = str(run_dir / CHECKPOINT_DIR)
    callbacks = [
        ModelCheckpoint(dirpath=directory, filename="step{step:06d}", auto_insert_metric_name=False,
                        every_n_train_steps=every_n_steps, save_last=True, save_top_k=keep_last,
                        monitor="step", mode="max"),  # the highest steps are the latest
        ModelCheckpoint(dirpath=directory, filename="best-step{step:06d}", auto_insert_metric_name=False,
                        monitor="val/loss", mode="min", save_top_k=1),
    ]
    if every_minutes:
        callbacks.append(ModelCheckpoint(dirpath=directory, train_time_interval=timedelta(minutes=every_minutes),
                                         save_last=True, save_top_k=0))
    return callbacks


def find_resume_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest checkpoint a restart of this run should continue from, None for a fresh run.

    Every checkpoint file is complete (written atomically), so the one written last holds the latest state:
    usually `checkpoints/last.ckpt`, but a kill can fall between a step file and last.ckpt, and a SLURM
    pre-emption writes `hpc_ckpt_<n>.ckpt`.
    """
    candidates = [*run_dir.glob(f"{CHECKPOINT_DIR}/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return max(candidates, key=lambda path: path.stat().st_mtime_ns, default=None)
