"""A run written by the code of commit 0c87b00 (tests/fixtures/run_0c87b00: a step-2 Lightning checkpoint and the
run's export) still loads, with the parameters it was saved with, through every entry point that reads one: the
model loaders, a resume with ckpt_path, xlstm-eval and xlstm-generate."""

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.test_eval_cli import compose_eval
from tests.cli.test_generate_cli import compose_generate
from tests.conftest import compose_train
from xlstm_lm.cli.eval import evaluate
from xlstm_lm.cli.generate import generate_text
from xlstm_lm.cli.loading import load_checkpoint
from xlstm_lm.cli.train import train
from xlstm_lm.models.io import load_model, load_pretrained
from xlstm_lm.training.checkpointing import load_model_from_checkpoint
from xlstm_lm.training.module import LanguageModelModule

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run_0c87b00"
RECORD = json.loads((FIXTURE / "fixture.json").read_text())
CHECKPOINT = FIXTURE / RECORD["checkpoint"]
EXPORT = FIXTURE / "run" / "export"
SAVED = {"checkpoint": CHECKPOINT, "export": EXPORT}


def saved_parameters(kind: str) -> dict[str, torch.Tensor]:
    """The model's tensors as that code wrote them, read with torch and safetensors alone."""
    if kind == "export":
        return load_file(str(EXPORT / "model.safetensors"))
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=False)["state_dict"]
    return {name.removeprefix("model."): tensor for name, tensor in state.items()}


def assert_saved_parameters(model: torch.nn.Module, kind: str) -> None:
    expected, loaded = saved_parameters(kind), model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected), kind


def test_the_checkpoint_and_the_export_load_with_their_saved_parameters():
    tokenizer_json = (EXPORT / "tokenizer.json").read_text()
    assert_saved_parameters(load_pretrained(EXPORT), "export")
    for kind, read in (("export", load_model), ("checkpoint", load_model_from_checkpoint)):
        model, saved_tokenizer = read(SAVED[kind])
        assert_saved_parameters(model, kind)
        assert saved_tokenizer == tokenizer_json
    for kind, path in SAVED.items():
        model, tokenizer = load_checkpoint(str(path))
        assert_saved_parameters(model, kind)
        assert tokenizer.to_str() == load_checkpoint(str(EXPORT))[1].to_str()
    assert_saved_parameters(LanguageModelModule.load_from_checkpoint(CHECKPOINT, map_location="cpu").model,
                            "checkpoint")


def train_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "logs" / "metrics.csv") as handle:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")}


def test_resuming_the_checkpoint_logs_the_losses_of_the_run_that_wrote_it(tmp_path):
    before = CHECKPOINT.read_bytes()
    overrides = [f"data.root={FIXTURE / 'corpus'}", f"data.cache_dir={tmp_path / 'cache'}", *RECORD["overrides"],
                 f"ckpt_path={CHECKPOINT}"]
    train(compose_train([*overrides, "trainer.max_steps=2"]), tmp_path / "same")  # nothing left to train
    assert_saved_parameters(load_pretrained(tmp_path / "same" / "export"), "checkpoint")
    # the weights, optimizer state, schedule and data position all carry over: the same losses as then
    train(compose_train(overrides), tmp_path / "resumed")
    expected = {int(step): loss for step, loss in RECORD["losses_after_checkpoint"].items()}
    losses = train_losses(tmp_path / "resumed")
    assert sorted(losses) == sorted(expected)
    assert [losses[step] for step in sorted(expected)] == pytest.approx([expected[step] for step in sorted(expected)],
                                                                        rel=1e-4)  # as the golden loss test
    assert CHECKPOINT.read_bytes() == before


def test_xlstm_eval_and_xlstm_generate_read_both_as_that_code_did(tmp_path):
    settings = RECORD["eval"]
    text_file = FIXTURE / "corpus" / settings["file"]
    report = evaluate(compose_eval([f"ckpt=[{CHECKPOINT},{EXPORT}]", f"data.files=[{text_file}]",
                                    f"eval.context_lengths=[{settings['context_length']}]"]), tmp_path)
    losses = {kind: row["loss"] for kind, row in zip(SAVED, report["results"])}
    assert losses == pytest.approx(settings["loss"], rel=1e-4)
    for kind, path in SAVED.items():
        text = generate_text(compose_generate([f"ckpt={path}", *RECORD["generate"]["overrides"]]))
        assert text == RECORD["generate"]["text"][kind], kind
