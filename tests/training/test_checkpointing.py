"""Checkpoint writes are atomic and refuse NaN weights; a restart finds the run's newest checkpoint."""

import os

import pytest
import torch

from xlstm_lm.training import checkpointing
from xlstm_lm.training.checkpointing import AtomicCheckpointIO, find_resume_checkpoint, load_training_checkpoint


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


def test_a_ctrl_c_inside_the_write_stays_a_keyboard_interrupt(tmp_path, monkeypatch):
    # The second Ctrl-C of a run can land while torch.save writes; its zip writer then fails to close the
    # half-written file and raised a RuntimeError that hid the KeyboardInterrupt Lightning shuts down on.
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(2), last)
    save = torch.save

    class CtrlCOnThirdWrite:
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, data):
            self.writes += 1
            written = self.handle.write(data)
            if self.writes == 3:
                raise KeyboardInterrupt
            return written

        def flush(self):
            self.handle.flush()

    monkeypatch.setattr(checkpointing.torch, "save", lambda obj, handle: save(obj, CtrlCOnThirdWrite(handle)))
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(checkpoint(4), last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert os.listdir(last.parent) == ["last.ckpt"]


def test_nan_weights_are_never_written(tmp_path):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(2), last)
    with pytest.raises(FloatingPointError, match="parameter model.weight is NaN or infinite at step 4"):
        io.save_checkpoint(checkpoint(4, float("nan")), last)
    assert torch.load(last, weights_only=False)["global_step"] == 2


def write_checkpoint(path, step: int, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "hyper_parameters": {}, "state_dict": {}}, path)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_restart_resumes_from_the_highest_step_of_last_step_and_preemption_checkpoints(tmp_path, caplog):
    assert find_resume_checkpoint(tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    write_checkpoint(last, 4, 10)
    assert find_resume_checkpoint(tmp_path) == last
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    write_checkpoint(hpc, 6, 5)  # written before last.ckpt's time (e.g. by a copy of the run), yet further on
    assert find_resume_checkpoint(tmp_path) == hpc
    step_file = last.with_name("step000006.ckpt")  # the same step, written later
    write_checkpoint(step_file, 6, 20)
    assert find_resume_checkpoint(tmp_path) == step_file
    write_checkpoint(last.with_name("step000002.ckpt"), 2, 30)  # the newest file, an older step
    assert find_resume_checkpoint(tmp_path) == step_file
    (last.parent / "last.ckpt.tmp").write_bytes(b"d")  # an interrupted write is never a candidate
    (last.parent / "step000099.ckpt").write_bytes(b"not a checkpoint")  # unreadable: skipped with a warning
    assert find_resume_checkpoint(tmp_path) == step_file
    assert "not resuming from" in caplog.text and "step000099.ckpt" in caplog.text
    write_checkpoint(last.with_name("best-step000006.ckpt"), 6, 40)  # as after a validation at last.ckpt's step
    write_checkpoint(last, 6, 15)  # among equal steps last.ckpt wins, however new the others are
    assert find_resume_checkpoint(tmp_path) == last


def test_a_run_whose_checkpoints_are_all_unreadable_is_not_silently_restarted(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="holds checkpoints but none can be resumed from"):
        find_resume_checkpoint(tmp_path)


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("text", r"is not a readable training checkpoint \(not a file torch.save wrote, or one cut short\)"),
    ("export", "is an exported model, not a training checkpoint"),
    ("folder", "is a folder but not a sharded FSDP checkpoint"),
    ("weights", "is not a Lightning training checkpoint"),
])
def test_loading_something_else_as_a_training_checkpoint_says_what_it_is(tmp_path, kind, message):
    path = tmp_path / "thing"
    if kind == "text":
        path.write_text("hello")
    elif kind in ("export", "folder"):
        path.mkdir()
        if kind == "export":
            (path / "model.safetensors").write_bytes(b"")
    elif kind == "weights":
        torch.save({"model.weight": torch.zeros(2)}, path)
    with pytest.raises(FileNotFoundError if kind == "missing" else ValueError, match=message) as refused:
        load_training_checkpoint(path)
    assert "mmap" not in str(refused.value)  # torch's internal explanation for a file that is no zip archive


def test_a_model_config_recorded_before_the_split_is_compared_as_the_loaders_read_it():
    import json
    from dataclasses import asdict
    from pathlib import Path

    from xlstm_lm.models import model_config
    from xlstm_lm.training.checkpointing import _changed_hyper_parameters

    legacy = Path(__file__).parents[1] / "assets" / "legacy_exports"
    for architecture in ("xlstm", "xlstm_large"):
        saved = json.loads((legacy / architecture / "config.json").read_text())  # the former shared fields
        now = asdict(model_config(saved))
        assert _changed_hyper_parameters({"model": saved}, {"model": now}, "model") == []
    # a large model trained with the former per-head eps is not resumed under today's default silently
    default = {**now, "head_norm_eps": None}
    assert _changed_hyper_parameters({"model": saved}, {"model": default}, "model") == [
        "head_norm_eps: checkpoint 1e-05 vs now None"]
