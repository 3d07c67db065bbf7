"""Training end to end on a slice of the embedded corpus: metrics, checkpoints, export, resume, overfit."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose_train, small_run_overrides
from xlstm_lm.cli.train import train
from xlstm_lm.data import load
from xlstm_lm.models.io import load_model, load_pretrained
from xlstm_lm.training.checkpointing import load_model_from_checkpoint
from xlstm_lm.training.module import LanguageModelModule

REPO = Path(__file__).resolve().parents[2]


def logged_steps(run_dir: Path, metric: str) -> list[int]:
    with open(run_dir / "logs" / "metrics.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get(metric)]


def test_train_py_end_to_end_and_export_reloads_identically(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    command = [sys.executable, str(REPO / "train.py"), "model=xlstm_7_1",
               *small_run_overrides(data_cache), f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "parameters" in log and "validation loss" in log
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    export = run_dir / "export"
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_config.yaml"} <= {p.name for p in export.iterdir()}

    exported = load_pretrained(export).eval()
    module = LanguageModelModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    from_ckpt, tokenizer_json = load_model_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert tokenizer_json == (export / "tokenizer.json").read_text()  # the checkpoint carries its tokenizer
    ids = torch.randint(0, exported.config.vocab_size, (2, 40))
    with torch.no_grad():
        assert torch.equal(exported(ids), module.model(ids))
        assert torch.equal(exported(ids), from_ckpt.eval()(ids))
    assert logged_steps(run_dir, "train/loss")  # the CSV logger wrote the training curve
    assert logged_steps(run_dir, "val/ppl")


@pytest.mark.parametrize("model", ["llama", "lstm", "mamba", "xlstm_large", "xlstm_0_1"])
def test_every_architecture_trains_and_reloads(tmp_path, data_cache, model):
    run_dir = tmp_path / "run"
    overrides = [*small_run_overrides(data_cache, max_steps=3), f"model={model}", "trainer.peak_tflops=0.21"]
    metrics = train(compose_train(overrides), run_dir)
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["train/loss"])
    assert 0 < metrics["train/mfu"] < 1  # model FLOPs utilization against a 210 GFLOP/s CPU peak
    reloaded, _ = load_model(run_dir / "export")
    assert reloaded.config.architecture == ("xlstm" if model == "xlstm_0_1" else model)


def test_two_process_ddp_on_cpu_trains_exports_and_keeps_its_checkpoints_across_a_restart(tmp_path, data_cache):
    """Lightning's `ddp` re-launches the command per rank, so this runs train.py as a subprocess (gloo)."""
    run_dir = tmp_path / "run"

    def run(max_steps: int, *extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(REPO / "train.py"), *small_run_overrides(data_cache, max_steps),
                   "trainer.strategy=ddp", "trainer.devices=2", "trainer.keep_last_checkpoints=1",
                   f"hydra.run.dir={run_dir}", *extra]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    result = run(4)
    assert (run_dir / "train_ddp_process_1.log").is_file()  # the second rank ran
    assert "sync_dist" not in result.stderr  # Lightning's advice does not apply: val/loss is reduced over ranks
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert math.isfinite(load_pretrained(run_dir / "export")(torch.zeros(1, 4, dtype=torch.long)).sum().item())
    checkpoints = run_dir / "checkpoints"
    best = next(checkpoints.glob("best-step*.ckpt"))
    (checkpoints / "step000001.ckpt").write_bytes(best.read_bytes())  # a file of a run before, unknown to Lightning
    run(8, f"ckpt_path={best}")  # trained longer from the best file: what the runs before wrote is pruned too
    files = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert [name for name in files if name.startswith("step")] == ["step000008.ckpt"], files
    assert len([name for name in files if name.startswith("best-step")]) == 1 and "last.ckpt" in files, files
    assert len(files) == 3, files


def test_resume_from_last_checkpoint_continues_at_the_right_step(tmp_path, data_cache):
    first = tmp_path / "first"
    train(compose_train(small_run_overrides(data_cache, max_steps=2)), first)
    ckpt = first / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2

    second = tmp_path / "second"
    metrics = train(compose_train([*small_run_overrides(data_cache, max_steps=4), f"ckpt_path={ckpt}"]), second)
    assert logged_steps(first, "train/loss") == [0, 1]  # a row's step: the optimizer steps done before it
    assert logged_steps(second, "train/loss") == [2, 3]
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert math.isfinite(metrics["val/loss"])


def test_resume_with_another_model_config_fails_before_training(tmp_path, data_cache):
    first = tmp_path / "first"
    train(compose_train(small_run_overrides(data_cache, max_steps=2)), first)
    ckpt = first / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    overrides = [*small_run_overrides(data_cache), "model.embedding_dim=64", f"ckpt_path={ckpt}"]
    with pytest.raises(ValueError, match="embedding_dim: checkpoint 32 vs now 64"):
        train(compose_train(overrides), tmp_path / "second")
    with pytest.raises(ValueError, match="another model config") as refused:  # fields of another architecture
        train(compose_train([*small_run_overrides(data_cache), "model=llama", f"ckpt_path={ckpt}"]), tmp_path / "third")
    assert "architecture: checkpoint 'xlstm' vs now 'llama'" in str(refused.value)
    assert "None" not in str(refused.value)  # not one "vs now None" for the xLSTM fields Llama lacks
    assert ckpt.read_bytes() == before and not (tmp_path / "second" / "checkpoints").exists()


def test_resume_with_data_of_another_tokenizer_fails_before_training(tmp_path, data_cache):
    first = tmp_path / "first"
    train(compose_train([*small_run_overrides(data_cache, max_steps=2), "model.vocab_size=1024"]), first)
    ckpt = first / "checkpoints" / "last.ckpt"
    overrides = [*small_run_overrides(data_cache), "model.vocab_size=1024", "tokenizer.vocab_size=500",
                 f"ckpt_path={ckpt}"]
    with pytest.raises(ValueError, match="another tokenizer than the data of this run"):
        train(compose_train(overrides), tmp_path / "second")
    assert not (tmp_path / "second" / "checkpoints").exists()


def test_restarting_a_run_keeps_the_metrics_logged_before_and_may_train_longer(tmp_path, data_cache, caplog):
    run_dir = tmp_path / "run"
    train(compose_train(small_run_overrides(data_cache, max_steps=2)), run_dir)
    first_log = (run_dir / "logs" / "metrics.csv").read_bytes()
    train(compose_train(small_run_overrides(data_cache, max_steps=4)), run_dir)  # ckpt_path=auto resumes
    assert "trainer.max_steps changed from 2 to 4" in caplog.text
    assert (run_dir / "logs" / "metrics-1.csv").read_bytes() == first_log  # Lightning would have deleted it
    assert logged_steps(run_dir, "train/loss") == [2, 3]  # no step number skipped, whichever hook saved last.ckpt
    assert logged_steps(run_dir, "val/loss") == [3]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_resume_with_another_learning_rate_or_seed_fails_before_the_run_directory_changes(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    train(compose_train(small_run_overrides(data_cache, max_steps=2)), run_dir)
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match="optimizer.lr: checkpoint 0.002 vs now 1e-05"):
        train(compose_train([*small_run_overrides(data_cache, max_steps=2), "optimizer.lr=1e-5"]), run_dir)
    with pytest.raises(ValueError, match="training data order does not fit this run .*seed: checkpoint 1337 vs now 1"):
        train(compose_train([*small_run_overrides(data_cache, max_steps=2), "seed=1"]), run_dir)
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before


def test_a_fresh_run_in_a_directory_holding_a_run_is_refused(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    train(compose_train(small_run_overrides(data_cache, max_steps=2)), run_dir)
    with pytest.raises(ValueError, match="already holds a run's checkpoints and ckpt_path=null"):
        train(compose_train([*small_run_overrides(data_cache, max_steps=2), "ckpt_path=null"]), run_dir)


def test_a_gpu_trainer_without_a_gpu_fails_before_preparing_data(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="trainer.accelerator=gpu but torch sees no CUDA GPU.*use trainer=cpu"):
        train(compose_train([*small_run_overrides(cache), "trainer=gpu"]), tmp_path / "run")
    assert not cache.exists()


def test_triton_kernels_on_a_cpu_trainer_fail_before_preparing_data(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="model.backend=triton runs on CUDA GPUs"):
        train(compose_train([*small_run_overrides(cache), "model.backend=triton"]), tmp_path / "run")
    assert not cache.exists()


def test_stateful_training_of_a_model_without_a_recurrent_state_fails_before_preparing_data(tmp_path, monkeypatch):
    prepared = []
    monkeypatch.setattr("xlstm_lm.data.TokenDataModule.prepare_data", lambda self: prepared.append(self))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="data.stateful=true .* model=llama has none.*data.stateful=false"):
        train(compose_train([*small_run_overrides(cache), "model=llama", "data.stateful=true"]), tmp_path / "run")
    assert not prepared and not cache.exists()


def test_missing_data_root_fails_with_the_path(tmp_path):
    overrides = [*small_run_overrides(tmp_path / "cache"), f"data.root={tmp_path / 'nowhere'}"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(compose_train(overrides), tmp_path / "run")


def test_tokenizer_larger_than_the_model_vocabulary_fails(tmp_path, data_cache):
    overrides = [*small_run_overrides(data_cache), "model.vocab_size=100"]
    with pytest.raises(ValueError, match="model.vocab_size=100 is smaller"):
        train(compose_train(overrides), tmp_path / "run")


def test_overfits_a_tiny_corpus_well_below_the_unigram_entropy(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), size=5)) for _ in range(40)]
    text = " ".join(rng.choice(words, size=300)) + "\n"  # one random text, memorizable, in every document
    for index in range(6):
        (corpus / f"doc{index}.txt").write_text(text)
    overrides = [*small_run_overrides(tmp_path / "cache", max_steps=60), f"data.root={corpus}", "data.glob=*.txt",
                 "data.val_fraction=0.3", "tokenizer.vocab_size=300", "optimizer.lr=1e-2",
                 "trainer.val_check_interval=60", "model.num_blocks=2"]
    metrics = train(compose_train(overrides), tmp_path / "run")

    cache = next((tmp_path / "cache").iterdir())
    train_tokens = np.asarray(load(cache).tokens("train"))
    probabilities = np.bincount(train_tokens) / train_tokens.size
    probabilities = probabilities[probabilities > 0]
    unigram_entropy = float(-(probabilities * np.log(probabilities)).sum())
    # a memorized text is predictable from its context: the loss must fall far below the unigram entropy
    assert metrics["train/loss"] < 0.5 * unigram_entropy, (metrics["train/loss"], unigram_entropy)


def test_wandb_logger_works_offline(tmp_path, data_cache, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    train(compose_train([*small_run_overrides(data_cache, max_steps=2), "logger=wandb"]), run_dir)
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs and any(offline_runs[0].glob("*.wandb"))


def test_folder_without_matching_text_fails_with_root_and_glob(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.md").write_text("not matched by the glob")
    overrides = [*small_run_overrides(tmp_path / "cache"), f"data.root={folder}"]
    with pytest.raises(ValueError, match=r"No files match .*notes.*check data.root and data.glob"):
        train(compose_train(overrides), tmp_path / "run")
