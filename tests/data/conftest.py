"""Fixtures of the data tests: the tiny corpus, its configs and a cache prepared once (DESIGN.md §10)."""

from pathlib import Path

import pytest

from tests.data.tiny_corpus import tiny_configs, write_corpus
from xlstm_lm.data import DataConfig, TokenizerConfig, prepare


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A fresh copy of the tiny corpus that a test may edit."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def configs(corpus_dir: Path, tmp_path: Path) -> tuple[DataConfig, TokenizerConfig]:
    """Configs over this test's corpus copy with a cache of its own."""
    return tiny_configs(corpus_dir, tmp_path / "cache")


@pytest.fixture(scope="session")
def prepared_configs(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataConfig, TokenizerConfig]:
    """Configs whose cache is prepared once per session, with two tokenizing processes; do not edit."""
    folder = tmp_path_factory.mktemp("shared")
    data, tokenizer = tiny_configs(write_corpus(folder / "corpus"), folder / "cache", num_proc=2)
    prepare(data, tokenizer)
    return data, tokenizer
