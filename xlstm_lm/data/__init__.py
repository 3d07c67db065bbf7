"""Data pipeline: corpus listing, byte-level BPE tokenizer, cached token arrays and the DataModule (DESIGN.md §10).

    corpus.list_corpus -> tokenizer.build_tokenizer -> cache.prepare / cache.load -> TokenDataModule
"""

from xlstm_lm.data.cache import PreparedData, load, locate, prepare, token_dtype
from xlstm_lm.data.config import DataConfig, TokenizerConfig
from xlstm_lm.data.corpus import Corpus, Document, default_root, hash_fraction, list_corpus
from xlstm_lm.data.datamodule import TokenDataModule, TokenWindows
from xlstm_lm.data.tokenizer import EOS_TOKEN, build_tokenizer, eos_id, load_tokenizer, train_tokenizer

__all__ = [
    "EOS_TOKEN",
    "Corpus",
    "DataConfig",
    "Document",
    "PreparedData",
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
]
