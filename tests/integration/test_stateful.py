"""Stateful training end to end: a run resumed from a mid-run checkpoint, which holds the carried recurrent
states, logs bit for bit the losses of the uninterrupted run."""

import csv
from pathlib import Path

import torch

from tests.conftest import compose_train, small_run_overrides
from xlstm_lm.cli.train import train
from xlstm_lm.training.module import CARRIED_STATE_KEY


def train_losses(run_dir: Path) -> dict[int, str]:
    """step -> train/loss exactly as logged (the CSV keeps every digit of the float)."""
    with open(run_dir / "logs" / "metrics.csv") as handle:
        return {int(row["step"]): row["train/loss"] for row in csv.DictReader(handle) if row.get("train/loss")}


def test_a_resumed_stateful_run_logs_the_losses_of_the_uninterrupted_run(tmp_path, data_cache):
    overrides = [*small_run_overrides(data_cache, max_steps=4), "data.stateful=true", "trainer.limit_val_batches=1"]
    train(compose_train(overrides), tmp_path / "whole")
    middle = tmp_path / "whole" / "checkpoints" / "step000002.ckpt"
    checkpoint = torch.load(middle, map_location="cpu", weights_only=False)
    states = checkpoint[CARRIED_STATE_KEY]  # one entry per process, one state per block
    assert checkpoint["hyper_parameters"]["stateful"] and len(states) == 1 and len(states[0]) == 2

    train(compose_train([*overrides, f"ckpt_path={middle}"]), tmp_path / "resumed")
    whole, resumed = train_losses(tmp_path / "whole"), train_losses(tmp_path / "resumed")
    assert sorted(whole) == [0, 1, 2, 3] and sorted(resumed) == [2, 3]
    assert resumed == {step: whole[step] for step in (2, 3)}
