"""Validation of the data configs (DESIGN.md §10)."""

import pytest

from xlstm_lm.data import DataConfig, TokenizerConfig


def test_defaults_are_valid() -> None:
    data, tokenizer = DataConfig(), TokenizerConfig()
    assert (data.root, data.glob, data.include_tests, data.val_fraction) == (None, "**/*.py", False, 0.05)
    assert (tokenizer.vocab_size, tokenizer.path) == (8192, None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"seq_len": 1}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_proc": 0}, "num_proc"),
        ({"glob": ""}, "glob"),
    ],
)
def test_data_config_rejects(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig(**overrides)


@pytest.mark.parametrize("overrides", [{"vocab_size": 257}, {"min_frequency": -1}])
def test_tokenizer_config_rejects(overrides: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        TokenizerConfig(**overrides)


def test_smallest_vocab_is_bytes_plus_end_of_document() -> None:
    assert TokenizerConfig(vocab_size=258).vocab_size == 258
