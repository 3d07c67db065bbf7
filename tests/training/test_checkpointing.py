"""Checkpoint writes are atomic and refuse NaN weights; a restart finds the run's newest checkpoint."""

import os

import pytest
import torch

from xlstm_lm.training import checkpointing
from xlstm_lm.training.checkpointing import AtomicCheckpointIO, find_resume_checkpoint


def checkpoint(step: int, value: float = 1.0) -> dict:
    return {"global_step": step, "state_dict": {"model.weight": torch.full((64, 64), value)}}


def test_a_write_that_dies_half_way_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    io, last = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(checkpoint(2), last)

    def die_half_way(obj, handle):
        handle.write(b"\x80" * 1000)  # the first part of a pickle, then the job is killed
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", die_half_way)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(checkpoint(4), last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert os.listdir(last.parent) == ["last.ckpt"]  # no temporary file left behind


def test_nan_weights_are_never_written(tmp_path):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(2), last)
    with pytest.raises(FloatingPointError, match="parameter model.weight is NaN or infinite at step 4"):
        io.save_checkpoint(checkpoint(4, float("nan")), last)
    assert torch.load(last, weights_only=False)["global_step"] == 2


def test_restart_finds_the_newest_of_last_and_preemption_checkpoints(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"a")
    assert find_resume_checkpoint(tmp_path) == last
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"b")
    os.utime(last, ns=(1, 1))
    assert find_resume_checkpoint(tmp_path) == hpc
    os.utime(hpc, ns=(0, 0))
    assert find_resume_checkpoint(tmp_path) == last
    step_file = last.with_name("step000008.ckpt")  # killed after the step file, before last.ckpt
    step_file.write_bytes(b"c")
    assert find_resume_checkpoint(tmp_path) == step_file
    (last.parent / "last.ckpt.tmp").write_bytes(b"d")  # an interrupted write is never a candidate
    assert find_resume_checkpoint(tmp_path) == step_file
