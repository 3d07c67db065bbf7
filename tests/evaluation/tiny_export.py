"""A tiny untrained model saved as an export folder with a small tokenizer, for the evaluation and CLI tests."""

from pathlib import Path

import pytest
import torch

from tests.conftest import SMALL_CORPUS
from xlstm_lm.data.config import TokenizerConfig
from xlstm_lm.data.tokenizer import train_tokenizer
from xlstm_lm.models import build_model
from xlstm_lm.models.io import save_pretrained

TOKENIZER_VOCAB = 300
MODEL_VOCAB = 320  # the tokenizer's rounded up to 64, as training sets it
# One small model of each kind, all with the forward signature of DESIGN.md §2.
MODEL_CONFIGS = {
    "xlstm": dict(architecture="xlstm", vocab_size=MODEL_VOCAB, embedding_dim=32, num_blocks=2, num_heads=4,
                  ratio="1:1", chunk_size=8),
    "lstm": dict(architecture="lstm", vocab_size=MODEL_VOCAB, embedding_dim=32, num_blocks=2),
    "llama": dict(architecture="llama", vocab_size=MODEL_VOCAB, embedding_dim=32, num_blocks=4, num_heads=4),
    "mamba": dict(architecture="mamba", vocab_size=MODEL_VOCAB, embedding_dim=32, num_blocks=2),
}


def corpus_texts(count: int = 6) -> list[str]:
    """The first files of the small stdlib slice, as text."""
    return [path.read_text() for path in sorted(Path(SMALL_CORPUS).glob("*.py"))[:count]]


def tiny_model(kind: str = "xlstm", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(MODEL_CONFIGS[kind]).eval()


def write_tiny_export(folder: Path) -> Path:
    """An export folder (config.json, model.safetensors, tokenizer.json) of the tiny xLSTM model."""
    save_pretrained(tiny_model("xlstm"), folder)
    train_tokenizer(corpus_texts(), TokenizerConfig(vocab_size=TOKENIZER_VOCAB)).save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    return write_tiny_export(tmp_path_factory.mktemp("export"))
