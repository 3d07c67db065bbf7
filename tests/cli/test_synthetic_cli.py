"""A synthetic task end to end: a few training steps log validation accuracy, and `xlstm-eval` on the export
scores accuracy against test length (table, JSON and plot)."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_train
from tests.data.test_synthetic import majority
from tests.evaluation.tiny_export import tiny_model
from xlstm_lm.cli.eval import evaluate
from xlstm_lm.cli.prepare import prepare_data
from xlstm_lm.cli.schemas import EvalConfig, to_config
from xlstm_lm.cli.train import train
from xlstm_lm.data.synthetic import make_batch, vocabulary
from xlstm_lm.data.task_datamodule import TaskDataModule
from xlstm_lm.evaluation.accuracy import TaskEvalConfig
from xlstm_lm.models.io import save_pretrained


def test_parity_trains_and_evaluates_accuracy_by_length(tmp_path, capsys):
    cfg = compose_train(["data=parity", "model=xlstm_1_0", "size=synthetic", "model.embedding_dim=16",
                         "model.num_blocks=1", "model.chunk_size=8", "data.batch_size=4", "data.max_length=8",
                         "data.val_batches=2", "data.test_lengths=[8,16]", "trainer.max_steps=5",
                         "trainer.val_check_interval=5", "trainer.checkpoint_every_n_steps=5",
                         "trainer.log_every_n_steps=1", "scheduler.warmup_steps=1"])
    metrics = train(cfg, tmp_path / "run")
    assert 0.0 <= metrics["val/acc"] <= 1.0 and 0.0 <= metrics["val/seq_acc"] <= 1.0
    assert metrics["val/loss"] < 5.0  # the loss of one answer among 64 logits, not of every token

    report = evaluate(EvalConfig(ckpt=str(tmp_path / "run" / "export"), device="cpu",
                                 task=TaskEvalConfig(batches=2)), tmp_path / "eval")
    rows = report["results"]
    assert [row["length"] for row in rows] == [8, 16] and report["task"]["task"] == "parity"
    assert all(row["answers"] == row["sequences"] == 8 for row in rows)  # one answer per parity sequence
    assert all(0.0 <= row["sequence_accuracy"] == row["token_accuracy"] <= 1.0 for row in rows)
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == report
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "token acc" in table and "seq acc" in table and f"{rows[1]['sequence_accuracy']:.4f}" in table


def test_majority_export_is_scored_against_the_majority_of_each_test_sequence(tmp_path):
    # an untrained model saved as train's export would be, without the training run; its head's rows of the five
    # symbols are centred (their logits sum to zero) and the other rows are zero, so its greedy answer is always a
    # symbol, which varies with the input and is right at random
    config = to_config(compose_train(["data=majority", "data.batch_size=8", "data.test_lengths=[8,16]", "seed=5"]))
    model = tiny_model("xlstm")
    with torch.no_grad():
        model.head.weight[:5] -= model.head.weight[:5].mean(0)
        model.head.weight[5:] = 0
    export = save_pretrained(model, tmp_path / "export")
    (export / "tokenizer.json").write_text(TaskDataModule(config.data).tokenizer_json)
    OmegaConf.save(OmegaConf.structured(config), export / "train_config.yaml")

    report = evaluate(EvalConfig(ckpt=str(export), device="cpu", task=TaskEvalConfig(batches=2)), tmp_path / "eval")
    tokens = vocabulary(config.data)
    rights = []
    for row in report["results"]:  # the model's greedy answer after "=" against Counter's majority, batch by batch
        right = 0
        for index in range(2):
            batch = make_batch(config.data, 5, "test", index, row["length"])
            with torch.no_grad():
                guesses = model(torch.from_numpy(batch["input_ids"]))[:, -1].argmax(-1).tolist()
            right += sum(tokens[guess] == majority([tokens[token] for token in inputs[:-1]])
                         for guess, inputs in zip(guesses, batch["input_ids"]))
        assert row["answers"] == row["sequences"] == 16
        assert row["token_accuracy"] == row["sequence_accuracy"] == right / 16
        rights.append(right)
    assert 0 < sum(rights) < 32, rights  # neither all wrong nor all right: the comparison means something
    assert [row["length"] for row in report["results"]] == [8, 16] and report["task"]["num_symbols"] == 5


def test_a_task_has_nothing_to_prepare_and_no_other_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="data=parity is generated on the fly"):
        prepare_data(compose_train(["data=parity"]))
    with pytest.raises(ValueError, match="own fixed vocabulary"):
        train(compose_train(["data=mqar", "tokenizer=gpt2"]), tmp_path)
