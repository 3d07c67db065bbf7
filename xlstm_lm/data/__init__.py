"""Data pipeline: sources, byte-level BPE tokenizer, cached token shards and the DataModule (DESIGN.md §10).

    sources.open_source -> tokenizer.build_tokenizer -> cache.prepare / cache.load -> TokenDataModule
"""

from xlstm_lm.data.cache import PreparedData, load, locate, prepare, token_dtype, verify
from xlstm_lm.data.config import DataConfig, SourceConfig, TokenizerConfig
from xlstm_lm.data.corpus import Corpus, Document, default_root, hash_fraction, list_corpus
from xlstm_lm.data.datamodule import TokenDataModule, TokenWindows
from xlstm_lm.data.sources import OfflineError
from xlstm_lm.data.tokenizer import EOS_TOKEN, build_tokenizer, eos_id, load_tokenizer, train_tokenizer

__all__ = [
    "EOS_TOKEN",
    "Corpus",
    "DataConfig",
    "Document",
    "OfflineError",
    "PreparedData",
    "SourceConfig",
    "TokenDataModule",
    "TokenWindows",
    "TokenizerConfig",
    "build_tokenizer",
    "default_root",
    "eos_id",
    "hash_fraction",
    "list_corpus",
    "load",
    "load_tokenizer",
    "locate",
    "prepare",
    "token_dtype",
    "train_tokenizer",
    "verify",
]
