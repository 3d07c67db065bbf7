"""Preparation of a corpus into memory-mappable token arrays, cached by fingerprint (DESIGN.md §10).

`prepare` lists the corpus, trains (or loads) the tokenizer on the training split, tokenizes both splits in
parallel with `datasets`, appends the end-of-document token after every document and writes each split as
one flat raw binary array (uint16 when the vocabulary fits, else uint32). The cache folder holds

    train.bin  val.bin  tokenizer.json  manifest.json

and is named by a fingerprint of (corpus file list and contents, tokenizer config, val_fraction,
include_tests, glob, FORMAT_VERSION): the same inputs find the finished cache and do no work, a changed input
gets a new folder. Everything is written to a temporary folder that is renamed into place when complete, so
an interrupted preparation leaves no cache behind and a finished cache is never overwritten; when two
processes race, the first rename wins and the other discards its copy. (A killed process may leave a
`.tmp-*` folder next to the caches; it is never read and can be deleted.)

Under DDP only one process per node should call `prepare` (LightningDataModule.prepare_data does this);
every rank then calls `locate` and `load`, which build nothing.
"""

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features, List, Value
from tokenizers import Tokenizer
from tqdm import tqdm

from xlstm_lm.data.config import DataConfig, TokenizerConfig
from xlstm_lm.data.corpus import Corpus, list_corpus
from xlstm_lm.data.tokenizer import build_tokenizer, eos_id, load_tokenizer

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZE_BATCH_DOCUMENTS = 64
WRITE_BATCH_DOCUMENTS = 1024


@dataclass(frozen=True)
class PreparedData:
    """A finished cache folder, opened.

    Attributes:
        path: the cache folder.
        manifest: the content of manifest.json.
        tokenizer: the tokenizer the arrays were made with.
    """

    path: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer

    @property
    def dtype(self) -> np.dtype:
        """Element type of the token arrays."""
        return np.dtype(self.manifest["dtype"])

    @property
    def eos_id(self) -> int:
        """Id of the end-of-document token."""
        return self.manifest["tokenizer"]["eos_id"]

    @property
    def vocab_size(self) -> int:
        """Number of token ids, the end-of-document token included."""
        return self.manifest["tokenizer"]["vocab_size"]

    def tokens_file(self, split: str) -> Path:
        """The raw binary token array of a split ("train" or "val")."""
        return self.path / f"{split}.bin"

    def tokens(self, split: str) -> np.memmap:
        """The flat token array of a split ("train" or "val"), memory-mapped read-only, shape (num_tokens,)."""
        return np.memmap(self.tokens_file(split), dtype=self.dtype, mode="r")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id of a vocabulary: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def locate(cfg_data: DataConfig, cfg_tok: TokenizerConfig) -> Path:
    """The cache folder that `prepare` makes for these configs; lists the corpus but builds nothing.

    Args:
        cfg_data: corpus and cache settings.
        cfg_tok: tokenizer settings.

    Returns:
        The folder, which exists only once some process has prepared it.
    """
    return _cache_path(list_corpus(cfg_data), cfg_data, cfg_tok)


def prepare(cfg_data: DataConfig, cfg_tok: TokenizerConfig) -> Path:
    """Build the cache for these configs unless it exists; idempotent.

    Args:
        cfg_data: corpus and cache settings.
        cfg_tok: tokenizer settings.

    Returns:
        The finished cache folder.
    """
    start = time.perf_counter()
    corpus = list_corpus(cfg_data)
    path = _cache_path(corpus, cfg_data, cfg_tok)
    if path.is_dir():
        logger.info("Reusing prepared data at %s", path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    work_dir = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex}"
    work_dir.mkdir()
    try:
        manifest = _build(corpus, cfg_data, cfg_tok, work_dir, fingerprint=path.name)
        _publish(work_dir, path)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    splits = manifest["splits"]
    logger.info(
        "Prepared %d files (%.1f MB) into %d train + %d val tokens in %.1f s at %s",
        sum(split["files"] for split in splits.values()),
        sum(split["bytes"] for split in splits.values()) / 1e6,
        splits["train"]["tokens"],
        splits["val"]["tokens"],
        time.perf_counter() - start,
        path,
    )
    return path


def load(path: str | Path) -> PreparedData:
    """Open a finished cache folder.

    Args:
        path: a folder returned by `prepare` or `locate`.

    Returns:
        The manifest and tokenizer; token arrays are memory-mapped on demand.
    """
    folder = Path(path)
    manifest_file = folder / MANIFEST_FILE
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"No prepared data at {folder} (no {MANIFEST_FILE}): call prepare() or TokenDataModule.prepare_data() first"
        )
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"Prepared data at {folder} has format {manifest.get('format_version')}, expected {FORMAT_VERSION}"
        )
    prepared = PreparedData(folder, manifest, load_tokenizer(folder / TOKENIZER_FILE))
    for split, counts in manifest["splits"].items():
        expected_bytes = counts["tokens"] * prepared.dtype.itemsize
        if prepared.tokens_file(split).stat().st_size != expected_bytes:
            raise ValueError(f"{prepared.tokens_file(split)} is not {expected_bytes} bytes: delete {folder}")
    return prepared


def _cache_path(corpus: Corpus, cfg_data: DataConfig, cfg_tok: TokenizerConfig) -> Path:
    if cfg_tok.path is None:
        tokenizer_identity = {"vocab_size": cfg_tok.vocab_size, "min_frequency": cfg_tok.min_frequency}
    else:
        tokenizer_identity = {"sha256": _text_sha256(load_tokenizer(cfg_tok.path).to_str())}
    key = {
        "format_version": FORMAT_VERSION,
        "corpus": corpus.fingerprint,
        "tokenizer": tokenizer_identity,
        "val_fraction": cfg_data.val_fraction,
        "include_tests": cfg_data.include_tests,
        "glob": cfg_data.glob,
    }
    return Path(cfg_data.cache_dir).expanduser().resolve() / _text_sha256(json.dumps(key, sort_keys=True))[:16]


def _build(
    corpus: Corpus, cfg_data: DataConfig, cfg_tok: TokenizerConfig, work_dir: Path, fingerprint: str
) -> dict[str, Any]:
    """Write tokenizer, token arrays and manifest of a corpus into work_dir; return the manifest."""
    texts = {split: [document.text for document in documents] for split, documents in corpus.splits.items()}
    tokenizer = build_tokenizer(texts["train"], cfg_tok)
    tokenizer.save(str(work_dir / TOKENIZER_FILE))
    vocab_size = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab_size)
    manifest = {
        "format_version": FORMAT_VERSION,
        "cache_fingerprint": fingerprint,
        "dtype": dtype.name,
        "tokenizer": {
            "sha256": _text_sha256(tokenizer.to_str()),
            "vocab_size": vocab_size,
            "eos_id": eos_id(tokenizer),
            "config": {"vocab_size": cfg_tok.vocab_size, "min_frequency": cfg_tok.min_frequency, "path": cfg_tok.path},
        },
        **corpus.manifest(),
    }
    for split, split_texts in texts.items():
        manifest["splits"][split]["tokens"] = _write_tokens(
            split_texts, tokenizer, dtype, work_dir / f"{split}.bin", cfg_data.num_proc, f"{fingerprint}-{split}"
        )
    (work_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _write_tokens(
    texts: list[str], tokenizer: Tokenizer, dtype: np.dtype, file: Path, num_proc: int, fingerprint: str
) -> int:
    """Tokenize documents in parallel, append the end-of-document id to each and write them flat to file.

    Args:
        fingerprint: names this step for `datasets`, which would otherwise hash the tokenizer to name it.

    Returns:
        The number of tokens written.
    """
    end_of_document = eos_id(tokenizer)

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        # Note: a tokenizer pickled into a worker process loses this flag (tokenizer.json does not store it).
        tokenizer.encode_special_tokens = True
        return {"ids": [encoding.ids + [end_of_document] for encoding in tokenizer.encode_batch(batch["text"])]}

    arrow_dir = file.parent / f"{file.stem}.arrow"
    arrow_dir.mkdir()
    tokenized = Dataset.from_dict({"text": texts}).map(
        encode,
        batched=True,
        batch_size=TOKENIZE_BATCH_DOCUMENTS,
        remove_columns=["text"],
        features=Features({"ids": List(Value(dtype.name))}),
        num_proc=min(num_proc, len(texts)),
        cache_file_name=str(arrow_dir / "tokens.arrow"),
        new_fingerprint=fingerprint,
        desc=f"Tokenizing {file.stem}",
    )
    num_tokens = 0
    with open(file, "wb") as out:
        batches = tokenized.with_format("arrow").iter(batch_size=WRITE_BATCH_DOCUMENTS)
        total = -(-len(tokenized) // WRITE_BATCH_DOCUMENTS)
        for table in tqdm(batches, total=total, desc=f"Writing {file.name}", unit="batch"):
            for chunk in table.column("ids").chunks:
                ids = chunk.flatten().to_numpy()
                ids.tofile(out)
                num_tokens += len(ids)
    del tokenized
    shutil.rmtree(arrow_dir)
    return num_tokens


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
