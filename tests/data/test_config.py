"""Validation of the data configs (DESIGN.md §10)."""

import pytest

from xlstm_lm.data import DataConfig, SourceConfig, TokenizerConfig


def test_defaults_are_valid() -> None:
    data, tokenizer = DataConfig(), TokenizerConfig()
    assert (data.kind, data.root, data.glob, data.include_tests, data.val_fraction) == (
        "folder", None, "**/*.py", False, 0.05)
    assert (data.num_proc, data.invalid_utf8, data.shard_tokens) == (None, "replace", 2**24)
    assert data.source_list == [data]
    assert (tokenizer.vocab_size, tokenizer.path, tokenizer.pretrained, tokenizer.trained) == (8192, None, None, True)


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
        ({"kind": "web"}, "kind must be one of"),
        ({"files": ["a.txt"]}, "use data=files"),
        ({"max_documents": 3}, "not to a folder"),
        ({"kind": "files", "files": ["a"], "max_documents": 0}, "max_documents"),
        ({"weight": 0.0}, "weight"),
        ({"invalid_utf8": "ignore"}, "invalid_utf8"),
        ({"shard_tokens": 0}, "shard_tokens"),
        ({"sources": [SourceConfig()]}, "only read by data=mixture"),
    ],
)
def test_data_config_rejects(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig(**overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"kind": "files"}, "data=files needs data.files"),
        ({"kind": "hf"}, "needs data.name"),
        ({"kind": "mixture"}, "data=mixture needs data.sources"),
        ({"kind": "mixture", "sources": [SourceConfig(kind="hf")]}, "needs data.name"),
    ],
)
def test_required_lists_are_checked_when_the_sources_are_read(overrides: dict, message: str) -> None:
    config = DataConfig(**overrides)  # the presets compose with these lists still empty
    with pytest.raises(ValueError, match=message):
        config.source_list


def test_mixture_reads_its_sources() -> None:
    sources = [SourceConfig(kind="files", files=["a.txt"], weight=3.0), SourceConfig()]
    assert DataConfig(kind="mixture", sources=sources).source_list == sources


@pytest.mark.parametrize("overrides", [{"vocab_size": 257}, {"min_frequency": -1}, {"sample_bytes": 0}])
def test_tokenizer_config_rejects(overrides: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        TokenizerConfig(**overrides)


def test_smallest_vocab_is_bytes_plus_end_of_document() -> None:
    assert TokenizerConfig(vocab_size=258).vocab_size == 258
