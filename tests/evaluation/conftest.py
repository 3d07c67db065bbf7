"""Fixtures of the evaluation tests: the tiny export and its tokenizer."""

import pytest

from tests.evaluation.tiny_export import tiny_export  # noqa: F401 (a fixture)
from xlstm_lm.data.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tiny_export):  # noqa: F811
    return load_tokenizer(tiny_export / "tokenizer.json")
