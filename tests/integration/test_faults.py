"""Fault tolerance with real training runs: checkpoint policy, NaN stop, SLURM pre-emption, kill and resume."""

import csv
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train, small_run_overrides
from xlstm_lm.cli.train import train
from xlstm_lm.training import module as module_file
from xlstm_lm.training.checkpointing import first_nonfinite_tensor

REPO = Path(__file__).resolve().parents[2]


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_nan_stops_with_the_step_and_checkpoints_keep_last_k_plus_best(tmp_path, data_cache, monkeypatch):
    calls = []

    def loss_turning_nan_at_step_9(self, input_ids, doc_starts=None, labels=None, reduction="mean"):
        loss = forward(self, input_ids, doc_starts, labels, reduction)
        if labels is not None and reduction == "mean":
            calls.append(1)
            if len(calls) == 10:  # the 10th training batch: global step 9
                return loss * float("nan")
        return loss

    forward = module_file.LanguageModelModule.forward
    monkeypatch.setattr(module_file.LanguageModelModule, "forward", loss_turning_nan_at_step_9)
    overrides = [*small_run_overrides(data_cache, max_steps=12), "trainer.keep_last_checkpoints=2",
                 "trainer.nonfinite=stop"]
    with pytest.raises(FloatingPointError, match="training stopped at step 9: the loss is nan"):
        train(compose_train(overrides), tmp_path)
    checkpoints = tmp_path / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert [n for n in names if n.startswith("step")] == ["step000006.ckpt", "step000008.ckpt"]
    assert len([n for n in names if n.startswith("best-step")]) == 1 and "last.ckpt" in names
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8 and first_nonfinite_tensor(last["state_dict"]) is None


LIBRARY_NOISE = ("litlogger", "`weights_only` was not set", "LeafSpec", "sync_dist")


def test_the_last_step_is_checkpointed_when_it_is_no_multiple_of_the_interval_with_no_library_noise(
        tmp_path, data_cache, caplog, capfd):
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(compose_train([*small_run_overrides(data_cache, max_steps=5), "trainer.checkpoint_every_minutes=null"]),
              tmp_path)  # step checkpoints every 2 steps: 2 and 4
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 5  # so the same command does not train step 5 again
    printed = "\n".join([caplog.text, *capfd.readouterr(), *(str(warning.message) for warning in caught)])
    assert "Seed set to 1337" in printed and not [noise for noise in LIBRARY_NOISE if noise in printed]


def test_time_based_checkpoints_refresh_last_between_step_checkpoints(tmp_path, data_cache):
    overrides = [*small_run_overrides(data_cache, max_steps=3), "trainer.checkpoint_every_n_steps=100",
                 "trainer.checkpoint_every_minutes=0.0001"]
    train(compose_train(overrides), tmp_path)
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 3
    assert not list((tmp_path / "checkpoints").glob("step*.ckpt"))  # no step checkpoint was due
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))  # both callbacks write the one last.ckpt


def test_restarts_keep_last_the_last_k_step_checkpoints_and_the_best(tmp_path, data_cache, caplog):
    """Lightning prunes only what its own process saved and never the file it resumed from: without our
    retention each restart left the earlier runs' step and best files behind."""
    caplog.set_level(logging.INFO, logger="xlstm_lm.cli.train")
    checkpoints = tmp_path / "checkpoints"

    def run(max_steps: int, *extra: str) -> dict[str, int]:
        train(compose_train([*small_run_overrides(data_cache, max_steps), "trainer.keep_last_checkpoints=2",
                             "model.num_blocks=1", "trainer.limit_val_batches=1",
                             "trainer.checkpoint_every_minutes=null", *extra]), tmp_path)
        return {path.name: step_of(path) for path in checkpoints.iterdir()}

    files = run(4)
    best = next(name for name in files if name.startswith("best-step"))
    assert files[best] == files["last.ckpt"] == 4  # the case that made ckpt_path=auto resume from the best file
    files = run(6, f"ckpt_path={checkpoints / best}")  # restart 1: from best-step000004.ckpt explicitly
    assert sorted(name for name in files if name.startswith("step")) == ["step000004.ckpt", "step000006.ckpt"]
    (checkpoints / "step000002.ckpt").write_bytes((checkpoints / "step000004.ckpt").read_bytes())  # a leftover
    for restart, max_steps in enumerate((8, 10), start=2):  # restarts 2 and 3: ckpt_path=auto
        caplog.clear()
        files = run(max_steps)
        assert f"resuming from {checkpoints / 'last.ckpt'}" in caplog.text, restart
        assert sorted(name for name in files if name.startswith("step")) == [
            f"step{max_steps - 2:06d}.ckpt", f"step{max_steps:06d}.ckpt"], restart
        assert len([name for name in files if name.startswith("best-step")]) == 1, (restart, files)
        assert len(files) == 4 and files["last.ckpt"] == max_steps, (restart, files)


def train_command(run_dir: Path, data_cache: Path, max_steps: int, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *small_run_overrides(data_cache, max_steps), f"run_dir={run_dir}",
            "trainer.checkpoint_every_minutes=null", *extra]


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_slurm_preemption_signal_checkpoints_then_requeues(tmp_path, data_cache):
    run_dir, record, bin_dir = tmp_path / "run", tmp_path / "scontrol.txt", tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # records its arguments and the checkpoints present when it is called
    scontrol.write_text(f'#!/bin/sh\n{{ echo "$@"; ls "{run_dir}"; }} > "{record}.part"\nmv "{record}.part" "{record}"\n')
    scontrol.chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    env = {**os.environ, **slurm, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    command = train_command(run_dir, data_cache, 100000, "trainer.val_check_interval=100000")
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        # after the first checkpoint: a signal during the very first torch.save lands inside torch's lazy import
        # of its serialization config, and Lightning's handler saving again then finds that module half-made
        wait_for(lambda: (run_dir / "checkpoints" / "step000002.ckpt").exists(), process)
        process.send_signal(signal.SIGUSR1)
        wait_for(record.exists, process)
    finally:
        process.kill()
        process.communicate()
    command_line, listing = record.read_text().split("\n", 1)
    assert command_line == "requeue 4242"
    assert "hpc_ckpt_1.ckpt" in listing.split()  # written before the requeue
    assert step_of(run_dir / "hpc_ckpt_1.ckpt") > 0


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """train/loss per step; a step logged twice (before a kill and after the resume) keeps the later value.
    Rows the killed process had not flushed yet are lost with it."""
    with open(run_dir / "logs" / "metrics.csv") as handle:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")}


def test_sigkill_and_restart_with_the_same_command_gives_the_uninterrupted_losses(tmp_path, data_cache):
    """Needs the resumable data sampler: the batches after the resume must be the ones the uninterrupted run saw."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    steps, extra = 24, ("trainer.checkpoint_every_n_steps=4", "trainer.val_check_interval=12")
    reference = tmp_path / "reference"
    subprocess.run(train_command(reference, data_cache, steps, *extra), cwd=tmp_path, env=env, check=True,
                   capture_output=True)

    run_dir = tmp_path / "killed"
    command = train_command(run_dir, data_cache, steps, *extra)
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    wait_for(lambda: (run_dir / "checkpoints" / "step000008.ckpt").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    newest = max((run_dir / "checkpoints").glob("*.ckpt"), key=lambda path: path.stat().st_mtime_ns)
    resumed_from = step_of(newest)
    assert 8 <= resumed_from < steps

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {newest}" in (run_dir / "train.log").read_text()
    expected, resumed = losses_by_step(reference), losses_by_step(run_dir)
    assert set(range(resumed_from, steps)) <= set(resumed) and set(resumed) <= set(expected)
    mismatched = {step: (resumed[step], expected[step]) for step in resumed
                  if abs(resumed[step] - expected[step]) > 1e-6 * abs(expected[step])}
    assert not mismatched, f"resumed from step {resumed_from}; (resumed, uninterrupted) losses differ at {mismatched}"


def interrupt_training(tmp_path: Path, data_cache: Path, send_sigint, *extra: str) -> tuple[Path, int]:
    """Start an endless training run in its own process group, call send_sigint(process) once it has logged a
    step, and check it exits 130 with last.ckpt written at the step it names; returns (run_dir, that step)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = train_command(run_dir, data_cache, 100000, "trainer.val_check_interval=100000",
                            "trainer.checkpoint_every_n_steps=100000", *extra)
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        wait_for(lambda: (run_dir / "logs" / "metrics.csv").exists(), process, timeout=300)
        send_sigint(process)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr[-3000:]
    step = step_of(run_dir / "checkpoints" / "last.ckpt")
    assert step > 0 and f"interrupted at step {step}" in (run_dir / "train.log").read_text()
    return run_dir, step


def test_ctrl_c_finishes_the_step_writes_last_ckpt_and_exits_130(tmp_path, data_cache):
    """As a terminal sends it: to the whole process group, the data loader's worker included."""
    run_dir, _ = interrupt_training(tmp_path, data_cache, lambda process: os.killpg(process.pid, signal.SIGINT),
                                    "data.num_workers=1")
    assert not (run_dir / "export").exists()  # stopped at once: no final validation or export


def test_ctrl_c_on_rank_0_of_ddp_stops_both_ranks_at_the_same_step(tmp_path, data_cache):
    """Only the launching process gets the signal here: the request reaches rank 1 through the all-reduce."""
    run_dir, step = interrupt_training(tmp_path, data_cache, lambda process: process.send_signal(signal.SIGINT),
                                       "trainer.strategy=ddp", "trainer.devices=2")
    assert f"interrupted at step {step}" in (run_dir / "train_ddp_process_1.log").read_text()


def checksums(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`: its content's SHA-256 (folders: "dir")."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in folder.rglob("*")}


def test_a_second_ctrl_c_exits_130_with_one_message_and_a_refused_restart_leaves_the_run_as_it_was(
        tmp_path, data_cache):
    """Ctrl-C twice: the second lands in the step or in the checkpoint's write, and must stop at once without a
    traceback and without damaging the checkpoints. Then a restart with another model config is refused: Hydra
    used to write the refused command's .hydra/ and log lines into the run directory before the refusal."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    command = train_command(run_dir, data_cache, 100000, "trainer.val_check_interval=100000",
                            "trainer.checkpoint_every_n_steps=1")  # a checkpoint is written after every step
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        wait_for(last.exists, process, timeout=300)
        process.send_signal(signal.SIGINT)
        lines = []  # the second Ctrl-C as soon as the first is acknowledged: while the step and its checkpoint run
        while not lines or "Ctrl-C: stopping after this step" not in lines[-1]:
            lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)[-3000:]  # the run ended before acknowledging the first Ctrl-C
        process.send_signal(signal.SIGINT)
        output = "".join(lines) + process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert len([line for line in output.splitlines() if "second Ctrl-C: stopped at once" in line]) == 1
    assert step_of(last) > 0 and not list(last.parent.glob("*.tmp"))  # the newest complete checkpoint stays

    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "train.log"} <= set(checksums(run_dir))
    before = checksums(run_dir)
    refused = subprocess.run([*command, "model.embedding_dim=64"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 1, refused.stderr[-3000:]
    errors = [line for line in refused.stdout.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "was trained with another model config" in errors[0], refused.stdout[-3000:]
    assert checksums(run_dir) == before
