"""Preparation of sources into token shards, cached by fingerprint (DESIGN.md §10).

`prepare` opens the sources, trains (or loads) the tokenizer on a sample of the training split, tokenizes
every document in `data.num_proc` processes, appends the end-of-document token and writes each split as
fixed-size shards with a document index (`shards.ShardWriter`). The cache folder holds

    manifest.json  tokenizer.json  train/shard-00000.bin ... train/documents.npy  val/...

The manifest records the sources (settings, file fingerprints, documents read, empty and invalid ones), the
tokenizer (SHA-256 of tokenizer.json, vocabulary size, end-of-document id) and, per split, the tokens,
documents, bytes and shards (with their SHA-256). The folder is named by a fingerprint of (sources and their
fingerprints, tokenizer settings, val_fraction, invalid_utf8, shard_tokens, FORMAT_VERSION): the same inputs
find the finished cache and do no work, a changed input gets a new folder.

Mixtures: each source's weight is its share of each split's tokens. No document is repeated: the source
that runs out first (relative to its weight) is used whole and every other one is subsampled, taking its
documents in the order of their identity hash until its share is reached (within one document). A split
holds the chosen documents source after source, each source's in reading order.

Everything is written to a temporary folder that is renamed into place when complete, so an interrupted
preparation leaves no cache behind and a finished cache is never overwritten; when two processes race, the
first rename wins and the other discards its copy. (A killed process may leave a `.tmp-*` folder next to the
caches; it is never read and can be deleted.) `load` checks the format version, the tokenizer and the size of
every shard; `verify` also checks every shard's SHA-256. Neither deletes anything.

Under DDP only one process per node should call `prepare` (LightningDataModule.prepare_data does this);
every rank then calls `locate` and `load`, which build nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from xlstm_lm.data.config import DataConfig, TokenizerConfig
from xlstm_lm.data.corpus import Document
from xlstm_lm.data.shards import ShardedTokens, ShardWriter, check_sizes, document_ends, verify as verify_split
from xlstm_lm.data.sources import Source, SourceCounts, open_source
from xlstm_lm.data.tokenizer import build_tokenizer, eos_id, load_tokenizer, tokenizer_from_json

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
STAGING_DIR = "staging"
SPLITS = ("train", "val")
ENCODE_BATCH_BYTES = 1 << 18  # documents go to the tokenizing processes in batches of about this many bytes
BATCHES_IN_FLIGHT_PER_PROCESS = 4
COPY_BATCH_DOCUMENTS = 4096


@dataclass(frozen=True)
class PreparedData:
    """A finished cache folder, opened.

    Attributes:
        path: the cache folder.
        manifest: the content of manifest.json.
        tokenizer: the tokenizer the shards were made with.
    """

    path: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer

    @property
    def dtype(self) -> np.dtype:
        """Element type of the token shards."""
        return np.dtype(self.manifest["dtype"])

    @property
    def eos_id(self) -> int:
        """Id of the end-of-document token."""
        return self.manifest["tokenizer"]["eos_id"]

    @property
    def vocab_size(self) -> int:
        """Number of token ids, the end-of-document token included."""
        return self.manifest["tokenizer"]["vocab_size"]

    def split_tokens(self, split: str) -> ShardedTokens:
        """The token stream of a split ("train" or "val"), memory-mapped shard by shard."""
        return ShardedTokens.open(self.path, self.manifest["splits"][split], self.dtype)

    def document_ends(self, split: str) -> np.ndarray:
        """Cumulative end offsets of a split's documents in its token stream, shape (num_documents,)."""
        return document_ends(self.path, split)

    def tokens(self, split: str) -> np.ndarray:
        """The whole token stream of a split in memory, shape (num_tokens,); for small splits and checks."""
        stream = self.split_tokens(split)
        return stream.read(0, len(stream))


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id of a vocabulary: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def locate(cfg_data: DataConfig, cfg_tok: TokenizerConfig) -> Path:
    """The cache folder that `prepare` makes for these configs; lists the sources but builds nothing.

    Args:
        cfg_data: sources and cache settings.
        cfg_tok: tokenizer settings.

    Returns:
        The folder, which exists only once some process has prepared it.
    """
    return _cache_path(_open_sources(cfg_data), cfg_data, cfg_tok)


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
    path = _cache_path(sources, cfg_data, cfg_tok)
    if path.is_dir():
        logger.info("Reusing prepared data at %s", path)
        return path
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


def load(path: str | Path) -> PreparedData:
    """Open a finished cache folder, checking its format, its tokenizer and the size of every shard.

    Args:
        path: a folder returned by `prepare` or `locate`.

    Returns:
        The manifest and tokenizer; shards are memory-mapped on demand.

    Raises:
        FileNotFoundError: nothing was prepared there.
        ValueError: another format version, a changed tokenizer.json, or a missing or truncated shard or index.
    """
    folder = Path(path)
    manifest_file = folder / MANIFEST_FILE
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"No prepared data at {folder} (no {MANIFEST_FILE}): call prepare() or TokenDataModule.prepare_data() "
            "first, or run xlstm-prepare-data"
        )
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    redo = f"delete {folder} and prepare the data again (xlstm-prepare-data, or train.py with the same settings)"
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"Prepared data at {folder} has format {manifest.get('format_version')}, this version reads "
                         f"format {FORMAT_VERSION}: {redo}")
    tokenizer_file = folder / TOKENIZER_FILE
    if not tokenizer_file.is_file() or _file_sha256(tokenizer_file) != manifest["tokenizer"]["sha256"]:
        raise ValueError(f"{tokenizer_file} is missing or is not the tokenizer the shards were made with: {redo}")
    prepared = PreparedData(folder, manifest, load_tokenizer(tokenizer_file))
    for split, entry in manifest["splits"].items():
        check_sizes(folder, entry, prepared.dtype)
        ends = prepared.document_ends(split) if (folder / split / "documents.npy").is_file() else None
        if ends is None or len(ends) != entry["documents"] or (len(ends) and ends[-1] != entry["tokens"]):
            raise ValueError(f"The document index of split {split} in {folder} is missing or damaged: {redo}")
    return prepared


def verify(path: str | Path) -> PreparedData:
    """`load`, then check the SHA-256 of every shard against the manifest (reads every shard once).

    Raises:
        ValueError: as `load`, or a shard whose content changed.
    """
    prepared = load(path)
    for entry in prepared.manifest["splits"].values():
        verify_split(prepared.path, entry, prepared.dtype)
    return prepared


def describe(manifest: dict[str, Any]) -> str:
    """One line of totals: documents, tokens, bytes and shards per split, and what was skipped."""
    splits = "; ".join(
        f"{split}: {entry['documents']:,} documents, {entry['tokens']:,} tokens, {entry['bytes'] / 1e6:,.1f} MB, "
        f"{len(entry['shards'])} shards"
        for split, entry in manifest["splits"].items()
    )
    sources = manifest["sources"]
    empty = sum(source["empty"] for source in sources)
    invalid = sum(source["invalid_utf8"] for source in sources)
    action = "replaced" if manifest["invalid_utf8"] == "replace" else "skipped"
    return f"{splits}; {empty} empty documents skipped, {invalid} not valid UTF-8 ({action})"


def _open_sources(cfg_data: DataConfig) -> list[Source]:
    return [open_source(source, cfg_data) for source in cfg_data.source_list]


def _cache_path(sources: list[Source], cfg_data: DataConfig, cfg_tok: TokenizerConfig) -> Path:
    if cfg_tok.path is not None:
        tokenizer_identity = {"sha256": _text_sha256(load_tokenizer(cfg_tok.path).to_str())}
    elif cfg_tok.pretrained is not None:
        tokenizer_identity = {"pretrained": cfg_tok.pretrained}
    else:
        tokenizer_identity = {"vocab_size": cfg_tok.vocab_size, "min_frequency": cfg_tok.min_frequency,
                              "sample_bytes": cfg_tok.sample_bytes}
    key = {
        "format_version": FORMAT_VERSION,
        "sources": [{**source.fingerprint, "weight": weight} for source, weight in zip(sources, _weights(cfg_data))],
        "tokenizer": tokenizer_identity,
        "val_fraction": cfg_data.val_fraction,
        "invalid_utf8": cfg_data.invalid_utf8,
        "shard_tokens": cfg_data.shard_tokens,
    }
    return Path(cfg_data.cache_dir).expanduser().resolve() / _text_sha256(json.dumps(key, sort_keys=True))[:16]


def _weights(cfg_data: DataConfig) -> list[float]:
    """Each source's share of every split's tokens (summing to 1)."""
    weights = [source.weight for source in cfg_data.sources] if cfg_data.kind == "mixture" else [1.0]
    return [weight / sum(weights) for weight in weights]


def _build(
    sources: list[Source], cfg_data: DataConfig, cfg_tok: TokenizerConfig, work_dir: Path, fingerprint: str
) -> dict[str, Any]:
    """Write tokenizer, shards and manifest of the sources into work_dir; return the manifest."""
    weights = _weights(cfg_data)
    tokenizer = build_tokenizer(cfg_tok, lambda: _tokenizer_sample(sources, weights, cfg_tok.sample_bytes))
    tokenizer.save(str(work_dir / TOKENIZER_FILE))
    vocab_size = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab_size)
    mixture = cfg_data.kind == "mixture"
    records, staged = [], []
    with _encoder(tokenizer, dtype, _num_proc(cfg_data)) as encode:
        for index, source in enumerate(sources):
            target = work_dir / STAGING_DIR / f"source-{index}" if mixture else work_dir
            writers = {split: ShardWriter(target, split, dtype, cfg_data.shard_tokens) for split in SPLITS}
            record, identities = _tokenize(source, encode, writers, label=f"source {index}" if mixture else "")
            entries = {split: writer.close() for split, writer in writers.items()}
            records.append({**source.fingerprint, "weight": weights[index], **record})
            staged.append((target, entries, identities))
    if mixture:
        splits = _mix(staged, weights, work_dir, dtype, cfg_data.shard_tokens, records)
        shutil.rmtree(work_dir / STAGING_DIR)
    else:
        splits = {split: {**entry, "bytes": records[0]["splits"][split]["bytes"]}
                  for split, entry in staged[0][1].items()}
    for split, entry in splits.items():
        if entry["documents"] == 0:
            raise ValueError(
                f"The {split} split is empty ({sum(r['documents'] for r in records)} documents read): add documents "
                "or change data.val_fraction. Documents are split whole: a plain-text file is one document, so "
                "give several files, or a .jsonl with one document per line"
            )
    manifest = {
        "format_version": FORMAT_VERSION,
        "cache_fingerprint": fingerprint,
        "dtype": dtype.name,
        "shard_tokens": cfg_data.shard_tokens,
        "val_fraction": cfg_data.val_fraction,
        "invalid_utf8": cfg_data.invalid_utf8,
        "python_version": sys.version,
        "tokenizer": {
            "sha256": _file_sha256(work_dir / TOKENIZER_FILE),
            "vocab_size": vocab_size,
            "eos_id": eos_id(tokenizer),
            "config": asdict(cfg_tok),
        },
        "sources": records,
        "splits": splits,
    }
    (work_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _tokenizer_sample(sources: list[Source], weights: list[float], sample_bytes: int) -> list[str]:
    """The first training documents of each source, up to its weight's share of `sample_bytes` (at least one)."""
    texts = []
    for source, weight in zip(sources, weights):
        budget, taken = sample_bytes * weight, 0
        for document, split, _ in source.documents(SourceCounts()):
            if split != "train":
                continue
            if taken and taken + document.num_bytes > budget:
                break
            texts.append(document.text)
            taken += document.num_bytes
    logger.info("Tokenizer sample: %d training documents, %.1f MB", len(texts), sum(map(len, texts)) / 1e6)
    return texts


def _tokenize(
    source: Source, encode: Callable, writers: dict[str, ShardWriter], label: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Tokenize a source's documents into the writers of their splits.

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
def _encoder(tokenizer: Tokenizer, dtype: np.dtype, num_proc: int):
    """A function from batches to (batch, (flat ids, lengths)) pairs in order, encoding in num_proc processes.

    At most BATCHES_IN_FLIGHT_PER_PROCESS batches per process are read ahead, so memory stays bounded however
    large the source.
    """
    if num_proc == 1:
        encoder = _Encoder(tokenizer.to_str(), dtype)
        yield lambda batches: ((batch, encoder([document.text for document, _, _ in batch])) for batch in batches)
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


def _num_proc(cfg_data: DataConfig) -> int:
    if cfg_data.num_proc is not None:
        return cfg_data.num_proc
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _mix(
    staged: list[tuple[Path, dict[str, Any], dict[str, np.ndarray]]],
    weights: list[float],
    work_dir: Path,
    dtype: np.dtype,
    shard_tokens: int,
    records: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Copy each source's chosen documents from its staging shards into the final splits (module docstring).

    Records what each source kept under records[i]["splits"][split]["kept_*"]; returns the split entries.
    """
    splits = {}
    for split in SPLITS:
        totals = [entries[split]["tokens"] for _, entries, _ in staged]
        empty = [index for index, total in enumerate(totals) if total == 0]
        if empty:
            raise ValueError(f"Mixture source {empty[0]} has no documents in the {split} split, so its weight cannot be "
                             "met: give it more documents or drop it")
        scale = min(total / weight for total, weight in zip(totals, weights))
        writer = ShardWriter(work_dir, split, dtype, shard_tokens)
        split_bytes = 0
        for index, ((folder, entries, identities), weight) in enumerate(zip(staged, weights)):
            ends = document_ends(folder, split)
            lengths = np.diff(ends, prepend=0)
            chosen = _choose(identities[split][:, 0], lengths, scale * weight)
            _copy_documents(ShardedTokens.open(folder, entries[split], dtype), ends, chosen, writer)
            kept = records[index]["splits"][split]
            kept["kept_documents"], kept["kept_tokens"] = int(chosen.sum()), int(lengths[chosen].sum())
            kept["kept_bytes"] = int(identities[split][chosen, 1].sum())
            split_bytes += kept["kept_bytes"]
        splits[split] = {**writer.close(), "bytes": split_bytes}
    return splits


def _choose(fractions: np.ndarray, lengths: np.ndarray, budget: float) -> np.ndarray:
    """Documents taken in order of their identity hash until their tokens come closest to budget; a bool mask."""
    order = np.argsort(fractions, kind="stable")
    cumulative = np.cumsum(lengths[order])
    count = int(np.searchsorted(cumulative, budget, side="right"))
    below = cumulative[count - 1] if count else 0
    if count < len(order) and cumulative[count] - budget < budget - below:
        count += 1
    chosen = np.zeros(len(order), dtype=bool)
    chosen[order[:count]] = True
    return chosen


def _copy_documents(tokens: ShardedTokens, ends: np.ndarray, chosen: np.ndarray, writer: ShardWriter) -> None:
    """Append the chosen documents of a staged split to writer, in their order."""
    for first in range(0, len(ends), COPY_BATCH_DOCUMENTS):
        last = min(first + COPY_BATCH_DOCUMENTS, len(ends))
        keep = chosen[first:last]
        if not keep.any():
            continue
        start = int(ends[first - 1]) if first else 0
        flat = tokens.read(start, int(ends[last - 1]))
        lengths = np.diff(ends[first:last], prepend=start)
        writer.add_many(flat[np.repeat(keep, lengths)], lengths[keep])


def _publish(work_dir: Path, path: Path) -> None:
    """Rename a finished work_dir to path; if another process got there first, keep its cache."""
    try:
        os.rename(work_dir, path)
    except OSError:
        if not path.is_dir():
            raise
        logger.info("Another process finished %s first; keeping its copy", path)


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()
