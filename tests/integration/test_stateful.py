"""Stateful training end to end: a run resumed from a mid-run checkpoint, which holds the carried recurrent
states, logs bit for bit the losses of the uninterrupted run."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves

from tests.conftest import compose_train, small_run_overrides
from xlstm_lm.cli.train import train
from xlstm_lm.training.module import CARRIED_STATE_KEY

REPO = Path(__file__).resolve().parents[2]


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


def test_a_resumed_two_process_ddp_stateful_run_continues_every_rank_exactly(tmp_path, data_cache):
    """Each rank carries its own rows' states through the checkpoint: after the resume the logged losses and every
    rank's carried states equal the uninterrupted run's, bit for bit (same CPU arithmetic in the same order).
    train.py runs as a subprocess because Lightning's `ddp` re-launches the command per rank (gloo)."""
    overrides = [*small_run_overrides(data_cache, max_steps=4), "data.stateful=true", "trainer.limit_val_batches=1",
                 "trainer.strategy=ddp", "trainer.devices=2", "model.num_blocks=1"]

    def run(name: str, *extra: str) -> Path:
        run_dir = tmp_path / name
        command = [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={run_dir}", *extra]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr[-3000:]
        return run_dir

    whole = run("whole")
    resumed = run("resumed", f"ckpt_path={whole / 'checkpoints' / 'step000002.ckpt'}")
    whole_losses, resumed_losses = train_losses(whole), train_losses(resumed)
    assert sorted(whole_losses) == [0, 1, 2, 3] and sorted(resumed_losses) == [2, 3]
    assert resumed_losses == {step: whole_losses[step] for step in (2, 3)}

    def carried(run_dir: Path) -> list[list[torch.Tensor]]:  # per rank, its carried tensors after the last step
        checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert checkpoint["global_step"] == 4
        return [tree_leaves(states) for states in checkpoint[CARRIED_STATE_KEY]]

    whole_states, resumed_states = carried(whole), carried(resumed)
    assert len(whole_states) == len(resumed_states) == 2 and whole_states[0]
    for rank in range(2):
        assert len(resumed_states[rank]) == len(whole_states[rank])
        assert all(torch.equal(ours, theirs) for ours, theirs in zip(resumed_states[rank], whole_states[rank]))
    assert not any(torch.equal(first, second) for first, second in zip(*whole_states))  # each rank its own rows
