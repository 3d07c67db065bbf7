"""`locate` and `prepare`: the cache folder of a set of configs, and building it atomically (DESIGN.md §10).

`prepare` checks that every source gives both splits documents (`split.check_splits`), then writes the
tokenizer, every source's shards (a mixture's into staging folders first, then mixed) and the manifest into a
temporary folder, which is renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xlstm_lm.data.cache.key import cache_path
from xlstm_lm.data.cache.mixture import mix, source_weights
from xlstm_lm.data.cache.prepared import (FORMAT_VERSION, MANIFEST_FILE, SPLITS, TOKENIZER_FILE, describe,
                                          file_sha256, token_dtype)
from xlstm_lm.data.cache.split import check_splits
from xlstm_lm.data.cache.tokenizer_sample import tokenizer_sample
from xlstm_lm.data.cache.tokenizing import encoder, num_proc, tokenize_source
from xlstm_lm.data.config import DataConfig, TokenizerConfig
from xlstm_lm.data.shards import ShardWriter
from xlstm_lm.data.sources import Source, open_source
from xlstm_lm.data.tokenizer import build_tokenizer, eos_id

logger = logging.getLogger(__name__)

STAGING_DIR = "staging"


def locate(cfg_data: DataConfig, cfg_tok: TokenizerConfig) -> Path:
    """The cache folder that `prepare` makes for these configs; lists the sources but builds nothing.

    Args:
        cfg_data: sources and cache settings.
        cfg_tok: tokenizer settings.

    Returns:
        The folder, which exists only once some process has prepared it.
    """
    return cache_path(_open_sources(cfg_data), cfg_data, cfg_tok)


def prepare(cfg_data: DataConfig, cfg_tok: TokenizerConfig) -> Path:
    """Build the cache for these configs unless it exists; idempotent.

    Args:
        cfg_data: sources and cache settings.
        cfg_tok: tokenizer settings.

    Returns:
        The finished cache folder.
    """
    start = time.perf_counter()
    sources = _open_sources(cfg_data)
    path = cache_path(sources, cfg_data, cfg_tok)
    if path.is_dir():
        logger.info("Reusing prepared data at %s", path)
        return path
    sources = check_splits(sources)
    work_dir = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex}"
    try:
        work_dir.mkdir(parents=True)
    except OSError as error:
        raise ValueError(f"cannot write the prepared data under {path.parent} ({error.strerror}): set "
                         "data.cache_dir to a writable folder") from error
    try:
        manifest = _build(sources, cfg_data, cfg_tok, work_dir, fingerprint=path.name)
        _publish(work_dir, path)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    logger.info("Prepared %s in %.1f s at %s", describe(manifest), time.perf_counter() - start, path)
    return path


def _open_sources(cfg_data: DataConfig) -> list[Source]:
    return [open_source(source, cfg_data) for source in cfg_data.source_list]


def _build(
    sources: list[Source], cfg_data: DataConfig, cfg_tok: TokenizerConfig, work_dir: Path, fingerprint: str
) -> dict[str, Any]:
    """Write tokenizer, shards and manifest of the sources into work_dir; return the manifest."""
    weights = source_weights(cfg_data)
    tokenizer = build_tokenizer(cfg_tok, lambda: tokenizer_sample(sources, weights, cfg_tok.sample_bytes))
    tokenizer.save(str(work_dir / TOKENIZER_FILE))
    vocab_size = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab_size)
    mixture = cfg_data.kind == "mixture"
    records, staged = [], []
    with encoder(tokenizer, dtype, num_proc(cfg_data)) as encode:
        for index, source in enumerate(sources):
            target = work_dir / STAGING_DIR / f"source-{index}" if mixture else work_dir
            writers = {split: ShardWriter(target, split, dtype, cfg_data.shard_tokens) for split in SPLITS}
            record, identities = tokenize_source(source, encode, writers, label=f"source {index}" if mixture else "")
            entries = {split: writer.close() for split, writer in writers.items()}
            records.append({**source.fingerprint, "weight": weights[index], **record})
            staged.append((target, entries, identities))
    if mixture:
        splits = mix(staged, weights, work_dir, dtype, cfg_data.shard_tokens, records)
        shutil.rmtree(work_dir / STAGING_DIR)
    else:
        splits = {split: {**entry, "bytes": records[0]["splits"][split]["bytes"]}
                  for split, entry in staged[0][1].items()}
    manifest = {
        "format_version": FORMAT_VERSION,
        "cache_fingerprint": fingerprint,
        "dtype": dtype.name,
        "shard_tokens": cfg_data.shard_tokens,
        "val_fraction": cfg_data.val_fraction,
        "invalid_utf8": cfg_data.invalid_utf8,
        "python_version": sys.version,
        "tokenizer": {
            "sha256": file_sha256(work_dir / TOKENIZER_FILE),
            "vocab_size": vocab_size,
            "eos_id": eos_id(tokenizer),
            "config": asdict(cfg_tok),
        },
        "sources": records,
        "splits": splits,
    }
    (work_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _publish(work_dir: Path, path: Path) -> None:
    """Rename a finished work_dir to path; if another process got there first, keep its cache."""
    try:
        os.rename(work_dir, path)
    except OSError:
        if not path.is_dir():
            raise
        logger.info("Another process finished %s first; keeping its copy", path)
