"""Tokenizing a source's documents into the shards of their splits, in a pool of processes (DESIGN.md §10).

Documents go to `num_proc` processes (`encoder`) in batches of about ENCODE_BATCH_BYTES and come back in order;
`tokenize_source` appends each, followed by the end-of-document id, to the shards of its split.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from xlstm_lm.data.cache.prepared import SPLITS
from xlstm_lm.data.config import DataConfig
from xlstm_lm.data.corpus import Document
from xlstm_lm.data.shards import ShardWriter
from xlstm_lm.data.sources import Source, SourceCounts
from xlstm_lm.data.tokenizer import eos_id, tokenizer_from_json

ENCODE_BATCH_BYTES = 1 << 18  # documents go to the tokenizing processes in batches of about this many bytes
BATCHES_IN_FLIGHT_PER_PROCESS = 4


def tokenize_source(
    source: Source, encode: Callable, writers: dict[str, ShardWriter], label: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Tokenize a source's documents into the writers of their splits.

    Args:
        source: the opened source.
        encode: the function `encoder` yields.
        writers: one per split.
        label: names the source on the progress bar ("" for a single source).

    Returns:
        The source's manifest record (counts, per-split documents/tokens/bytes) and, per split, an array of
        (identity hash, bytes) of its documents in order, shape (documents, 2): a mixture picks by them.
    """
    counts = SourceCounts()
    per_split = {split: {"documents": 0, "tokens": 0, "bytes": 0} for split in SPLITS}
    identities: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    start = time.perf_counter()
    tokens_done = 0
    with tqdm(desc=f"Tokenizing {label}".rstrip(), unit="B", unit_scale=True, unit_divisor=1024) as progress:
        for batch, (flat, lengths) in encode(_batches(source.documents(counts))):
            splits = np.array([split for _, split, _ in batch])
            batch_identities = np.array([(fraction, document.num_bytes) for document, _, fraction in batch])
            for split in SPLITS:
                chosen = splits == split
                if not chosen.any():
                    continue
                writers[split].add_many(flat[np.repeat(chosen, lengths)], lengths[chosen])
                identities[split].append(batch_identities[chosen])
                per_split[split]["documents"] += int(chosen.sum())
                per_split[split]["tokens"] += int(lengths[chosen].sum())
                per_split[split]["bytes"] += int(batch_identities[chosen, 1].sum())
            tokens_done += len(flat)
            progress.update(int(batch_identities[:, 1].sum()))
            progress.set_postfix_str(f"{tokens_done / (time.perf_counter() - start):,.0f} tokens/s", refresh=False)
    record = {"documents": counts.documents, "bytes": counts.bytes, "empty": counts.empty,
              "invalid_utf8": counts.invalid_utf8, "splits": per_split}
    return record, {split: np.concatenate(arrays) if arrays else np.zeros((0, 2)) for split, arrays in identities.items()}


def _batches(documents: Iterator[tuple[Document, str, float]]) -> Iterator[list[tuple[Document, str, float]]]:
    """Consecutive documents grouped into batches of about ENCODE_BATCH_BYTES."""
    batch, size = [], 0
    for item in documents:
        batch.append(item)
        size += item[0].num_bytes
        if size >= ENCODE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _Encoder:
    """Tokenizes texts into one flat id array, an end-of-document id after each text, and the texts' lengths."""

    def __init__(self, tokenizer_json: str, dtype: np.dtype) -> None:
        self.tokenizer = tokenizer_from_json(tokenizer_json)
        self.eos_id = eos_id(self.tokenizer)
        self.dtype = dtype

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(encoding.ids) + 1 for encoding in encodings), np.int64, len(encodings))
        ends = np.cumsum(lengths)
        flat = np.empty(int(ends[-1]) if len(ends) else 0, dtype=self.dtype)
        for encoding, end in zip(encodings, ends):
            flat[end - len(encoding.ids) - 1 : end - 1] = encoding.ids
        flat[ends - 1] = self.eos_id
        return flat, lengths


_worker_encoder: _Encoder | None = None


def _start_worker(tokenizer_json: str, dtype: np.dtype) -> None:
    global _worker_encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism
    _worker_encoder = _Encoder(tokenizer_json, dtype)


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _worker_encoder(texts)


@contextmanager
def encoder(tokenizer: Tokenizer, dtype: np.dtype, num_proc: int):
    """A function from batches to (batch, (flat ids, lengths)) pairs in order, encoding in num_proc processes.

    At most BATCHES_IN_FLIGHT_PER_PROCESS batches per process are read ahead, so memory stays bounded however
    large the source.
    """
    if num_proc == 1:
        single = _Encoder(tokenizer.to_str(), dtype)
        yield lambda batches: ((batch, single([document.text for document, _, _ in batch])) for batch in batches)
        return
    # Note: set while forking, so the children neither warn about nor use the tokenizer's thread pool.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
        pool = context.Pool(num_proc, initializer=_start_worker, initargs=(tokenizer.to_str(), dtype))
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous

    def encode(batches: Iterator[list]) -> Iterator[tuple[list, tuple[np.ndarray, np.ndarray]]]:
        pending: deque = deque()
        for batch in batches:
            texts = [document.text for document, _, _ in batch]
            pending.append((batch, pool.apply_async(_encode_in_worker, (texts,))))
            if len(pending) >= BATCHES_IN_FLIGHT_PER_PROCESS * num_proc:
                oldest, result = pending.popleft()
                yield oldest, result.get()
        while pending:
            oldest, result = pending.popleft()
            yield oldest, result.get()

    try:
        yield encode
    finally:
        pool.terminate()
        pool.join()


def num_proc(cfg_data: DataConfig) -> int:
    """The tokenizing processes: data.num_proc, or every core this process may use."""
    if cfg_data.num_proc is not None:
        return cfg_data.num_proc
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
