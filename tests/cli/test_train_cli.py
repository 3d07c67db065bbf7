"""`python train.py` on bad input: one clear message, a failing exit code, nothing written."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from xlstm_lm.cli.errors import WritableOutputFolder, exit_on_user_error

REPO = Path(__file__).resolve().parents[2]


def run_train(tmp_path, *overrides):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={run_dir}",
                             f"data.cache_dir={tmp_path / 'cache'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return result, run_dir


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.num_heads=3", "model.num_heads=3 does not divide model.embedding_dim=256"),
        ("data.root=/no/such/folder", "/no/such/folder"),
        ("+trainer.bogus_key=1", "unknown config key(s) trainer.bogus_key"),  # Hydra's append syntax
    ],
)
def test_bad_values_fail_with_one_message_and_no_traceback(tmp_path, override, message):
    result, run_dir = run_train(tmp_path, override)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert message in output and "Traceback" not in output
    assert not (run_dir / "checkpoints").exists() and not (tmp_path / "cache").exists()


def test_misspelt_key_fails_before_any_work_with_the_names_it_may_mean(tmp_path):
    result, run_dir = run_train(tmp_path, "model=xlstm_large", "trainer.max_stepz=3", "model.qk_factr=0.25")
    assert result.returncode == 1
    # the first unknown key, in one line, without Hydra's advice to add it with "+" (which the schemas refuse)
    assert result.stderr.strip() == ("unknown config key trainer.max_stepz: no such setting (did you mean "
                                     "trainer.max_steps?)")
    assert not run_dir.exists() and not (tmp_path / "cache").exists()
    result, _ = run_train(tmp_path, "model.zzz=1")  # nothing close: the settings there are listed
    assert result.returncode == 1 and "unknown config key model.zzz: no such setting (model has" in result.stderr
    assert "qk_factor" not in result.stderr and "ratio" in result.stderr  # the default model's own fields


def test_xlstm_train_console_script_points_at_the_same_main():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "xlstm-train"]
    from xlstm_lm.cli.train import main

    assert script.load() is main


def test_a_folder_that_cannot_be_written_is_one_message_and_exit_1(tmp_path, capsys, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = OmegaConf.create({"hydra": {"run": {"dir": str(blocker / "run")}}})
    with pytest.raises(SystemExit) as stop:  # before Hydra creates the run or evaluation folder
        WritableOutputFolder().on_run_start(config)
    printed = capsys.readouterr().err
    assert stop.value.code == 1 and printed.count("\n") == 1 and f"output folder {blocker / 'run'}" in printed
    with pytest.raises(SystemExit) as stop, exit_on_user_error(logging.getLogger("xlstm_lm.cli.train")):
        raise PermissionError(13, "Permission denied", "/runs/a/export")  # a write inside the run
    assert stop.value.code == 1
    assert [record.getMessage() for record in caplog.records] == [
        "/runs/a/export: permission denied (check its permissions, or choose another folder)"]
