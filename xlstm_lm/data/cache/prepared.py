"""A finished cache folder: its format, its manifest, and opening it with checks (DESIGN.md §10).

The manifest records the sources (settings, file fingerprints, documents read, empty and invalid ones), the
tokenizer (SHA-256 of tokenizer.json, vocabulary size, end-of-document id) and, per split, the tokens,
documents, bytes and shards (with their SHA-256). `load` checks the format version, the tokenizer and the size
of every shard; `verify` also checks every shard's SHA-256. Neither deletes anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from xlstm_lm.data.shards import ShardedTokens, check_sizes, document_ends, verify as verify_split
from xlstm_lm.data.tokenizer import load_tokenizer

FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")


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
    if not tokenizer_file.is_file() or file_sha256(tokenizer_file) != manifest["tokenizer"]["sha256"]:
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


def file_sha256(file: Path) -> str:
    """SHA-256 of a file's bytes, as hex (the manifest's record of tokenizer.json)."""
    return hashlib.sha256(file.read_bytes()).hexdigest()
