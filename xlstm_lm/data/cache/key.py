"""The cache key: the name of the folder a set of configs prepares into (DESIGN.md §10).

The folder is named by a fingerprint of (sources and their fingerprints, tokenizer settings, val_fraction,
invalid_utf8, shard_tokens, FORMAT_VERSION): the same inputs find the finished cache and do no work, a changed
input gets a new folder. Settings that do not change the shards (seq_len, batch_size, num_workers, num_proc)
are left out, so they share a cache. Caches written by earlier versions are found only while this key stays
the same for the same settings (tests/data/test_cache.py pins it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from xlstm_lm.data.cache.mixture import source_weights
from xlstm_lm.data.cache.prepared import FORMAT_VERSION
from xlstm_lm.data.config import DataConfig, TokenizerConfig
from xlstm_lm.data.sources import Source
from xlstm_lm.data.tokenizer import load_tokenizer


def cache_path(sources: list[Source], cfg_data: DataConfig, cfg_tok: TokenizerConfig) -> Path:
    """The cache folder of opened sources under these configs: data.cache_dir / 16 hex digits of the key.

    Args:
        sources: the opened sources of cfg_data (their fingerprints enter the key).
        cfg_data: the split, UTF-8 and shard settings, the weights and cache_dir.
        cfg_tok: the tokenizer settings.
    """
    key = {
        "format_version": FORMAT_VERSION,
        "sources": [{**source.fingerprint, "weight": weight}
                    for source, weight in zip(sources, source_weights(cfg_data))],
        "tokenizer": _tokenizer_identity(cfg_tok),
        "val_fraction": cfg_data.val_fraction,
        "invalid_utf8": cfg_data.invalid_utf8,
        "shard_tokens": cfg_data.shard_tokens,
    }
    return Path(cfg_data.cache_dir).expanduser().resolve() / _text_sha256(json.dumps(key, sort_keys=True))[:16]


def _tokenizer_identity(cfg_tok: TokenizerConfig) -> dict[str, Any]:
    """What decides the tokenizer: a given file's content, a hub name, or the training settings."""
    if cfg_tok.path is not None:
        return {"sha256": _text_sha256(load_tokenizer(cfg_tok.path).to_str())}
    if cfg_tok.pretrained is not None:
        return {"pretrained": cfg_tok.pretrained}
    return {"vocab_size": cfg_tok.vocab_size, "min_frequency": cfg_tok.min_frequency,
            "sample_bytes": cfg_tok.sample_bytes}


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
