"""A checkpoint with its tokenizer: the vocabulary must fit, a missing tokenizer or a non-checkpoint is one error."""

import shutil

import pytest
import torch

from tests.evaluation.tiny_export import MODEL_VOCAB, corpus_texts, tiny_export  # noqa: F401 (a fixture)
from xlstm_lm.cli.loading import load_checkpoint, resolve_device
from xlstm_lm.data.config import TokenizerConfig
from xlstm_lm.data.tokenizer import EOS_TOKEN, train_tokenizer


def test_export_loads_in_eval_mode_with_its_tokenizer(tiny_export):  # noqa: F811
    model, tokenizer = load_checkpoint(str(tiny_export))
    assert not model.training and model.config.vocab_size == MODEL_VOCAB
    assert tokenizer.token_to_id(EOS_TOKEN) not in tokenizer.encode(f"a {EOS_TOKEN} b").ids  # flag restored


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tiny_export, tmp_path):  # noqa: F811
    big = tmp_path / "big.json"
    train_tokenizer(corpus_texts(), TokenizerConfig(vocab_size=MODEL_VOCAB + 80)).save(str(big))
    message = f"tokenizer has {MODEL_VOCAB + 80} tokens but the model .* only {MODEL_VOCAB}"
    with pytest.raises(ValueError, match=message):
        load_checkpoint(str(tiny_export), tokenizer_path=str(big))


def test_an_export_without_tokenizer_needs_one(tiny_export, tmp_path):  # noqa: F811
    bare = shutil.copytree(tiny_export, tmp_path / "bare")
    (bare / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer_path=PATH"):
        load_checkpoint(str(bare))
    model, tokenizer = load_checkpoint(str(bare), tokenizer_path=str(tiny_export / "tokenizer.json"))
    assert tokenizer.get_vocab_size() <= model.config.vocab_size


def test_a_file_that_is_not_a_checkpoint_is_one_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="not an xlstm-lm checkpoint") as caught:
        load_checkpoint(str(tmp_path / "notes.txt"))
    assert caught.value.__cause__ is not None  # why torch.load failed stays in the traceback


def test_device_names_are_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device=gpu is not a device name"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_another_tokenizer_than_the_checkpoints_is_warned_about(tiny_export, tmp_path, caplog):  # noqa: F811
    other = tmp_path / "other.json"
    train_tokenizer(corpus_texts()[:3], TokenizerConfig(vocab_size=260)).save(str(other))  # fits, but differs
    load_checkpoint(str(tiny_export), tokenizer_path=str(other))
    assert "is not the tokenizer" in caplog.text
    caplog.clear()
    load_checkpoint(str(tiny_export), tokenizer_path=str(tiny_export / "tokenizer.json"))
    assert "is not the tokenizer" not in caplog.text
