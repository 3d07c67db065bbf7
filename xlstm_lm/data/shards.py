"""Fixed-size binary token shards and their document index: the on-disk format of a prepared split (DESIGN.md §10).

A split of a cache folder is

    <split>/shard-00000.bin ...  raw token ids of the split's token stream, every shard exactly `shard_tokens`
                                 long except the last (so a global offset maps to a shard by division)
    <split>/documents.npy        int64 cumulative end offsets of the documents: document k is
                                 tokens[ends[k-1]:ends[k]] and its last token is the end-of-document id

and a manifest entry {"tokens", "documents", "shard_tokens", "shards": [{"file", "tokens", "sha256"}]}.
`ShardWriter` produces both; `ShardedTokens` reads them back memory-mapped, as one array.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

DOCUMENTS_FILE = "documents.npy"
HASH_BLOCK_BYTES = 1 << 24


class ShardWriter:
    """Appends documents to a split's shards, rolling over to a new shard every `shard_tokens` tokens.

    Args:
        cache_dir: the cache folder (usually a temporary one that is renamed when complete).
        split: the split's name; its files go to cache_dir/split.
        dtype: element type of the ids.
        shard_tokens: tokens per shard.
    """

    def __init__(self, cache_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        (self.cache_dir / split).mkdir(parents=True, exist_ok=True)
        self._shards: list[dict[str, Any]] = []
        self._file = None
        self._hash = None
        self._document_ends: list[np.ndarray] = []
        self._num_tokens = 0

    def add(self, ids: np.ndarray) -> None:
        """Append one document (its end-of-document id included)."""
        self.add_many(ids, np.array([len(ids)]))

    def add_many(self, flat_ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append several documents given as their concatenated ids and their lengths."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != len(flat_ids):
            raise ValueError(f"document lengths sum to {int(lengths.sum())}, but {len(flat_ids)} ids were given")
        if (lengths < 1).any():
            raise ValueError("every document needs at least one token (its end-of-document id)")
        self._document_ends.append(self._num_tokens + np.cumsum(lengths))
        ids = np.asarray(flat_ids).astype(self.dtype, copy=False)
        while len(ids):
            if self._file is None:
                self._open_shard()
            room = self.shard_tokens - self._shards[-1]["tokens"]
            piece, ids = ids[:room], ids[room:]
            data = piece.tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._shards[-1]["tokens"] += len(piece)
            self._num_tokens += len(piece)
            if self._shards[-1]["tokens"] == self.shard_tokens:
                self._close_shard()

    def close(self) -> dict[str, Any]:
        """Finish the last shard and write the document index; returns the split's manifest entry."""
        self._close_shard()
        ends = np.concatenate(self._document_ends) if self._document_ends else np.zeros(0, dtype=np.int64)
        np.save(self.cache_dir / self.split / DOCUMENTS_FILE, ends.astype(np.int64))
        return {
            "tokens": self._num_tokens,
            "documents": len(ends),
            "shard_tokens": self.shard_tokens,
            "shards": self._shards,
        }

    def _open_shard(self) -> None:
        name = f"{self.split}/shard-{len(self._shards):05d}.bin"
        self._file = open(self.cache_dir / name, "wb")
        self._hash = hashlib.sha256()
        self._shards.append({"file": name, "tokens": 0, "sha256": ""})

    def _close_shard(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._shards[-1]["sha256"] = self._hash.hexdigest()
        self._file = self._hash = None


class ShardedTokens:
    """A split's shards read as one flat token array; shards are memory-mapped on first use in each process.

    Pickling drops the maps, so DataLoader workers never copy tokens.

    Args:
        cache_dir: the cache folder.
        entry: the split's manifest entry written by `ShardWriter.close`.
        dtype: element type of the ids.
    """

    def __init__(self, cache_dir: Path, entry: dict[str, Any], dtype: np.dtype) -> None:
        self.cache_dir = Path(cache_dir)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = int(entry["shard_tokens"])
        self.files = [self.cache_dir / shard["file"] for shard in entry["shards"]]
        self.num_tokens = int(entry["tokens"])
        self._maps: list[Optional[np.memmap]] = [None] * len(self.files)

    @classmethod
    def open(cls, cache_dir: Path, entry: dict[str, Any], dtype: np.dtype) -> "ShardedTokens":
        """Open a split after checking that every shard has the size the manifest promises."""
        check_sizes(cache_dir, entry, dtype)
        return cls(cache_dir, entry, dtype)

    def __len__(self) -> int:
        return self.num_tokens

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the split, copied out of the maps (they may span several shards)."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) is outside the split's {self.num_tokens} tokens")
        pieces = []
        while start < stop:
            shard, offset = divmod(start, self.shard_tokens)
            take = min(stop - start, self.shard_tokens - offset)
            pieces.append(self._map(shard)[offset : offset + take])
            start += take
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

    def _map(self, shard: int) -> np.memmap:
        if self._maps[shard] is None:
            self._maps[shard] = np.memmap(self.files[shard], dtype=self.dtype, mode="r")
        return self._maps[shard]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = [None] * len(self.files)
        return state


def document_ends(cache_dir: Path, split: str) -> np.ndarray:
    """The cumulative end offsets of a split's documents, shape (num_documents,)."""
    return np.load(Path(cache_dir) / split / DOCUMENTS_FILE)


def check_sizes(cache_dir: Path, entry: dict[str, Any], dtype: np.dtype) -> None:
    """Raise ValueError naming the first shard that is missing or not the size the manifest gives (truncation)."""
    itemsize = np.dtype(dtype).itemsize
    for shard in entry["shards"]:
        file = Path(cache_dir) / shard["file"]
        expected = shard["tokens"] * itemsize
        actual = file.stat().st_size if file.is_file() else None
        if actual != expected:
            found = "missing" if actual is None else f"{actual} bytes"
            raise ValueError(
                f"Shard {file} is {found}, the manifest says {expected} bytes: the cache at {cache_dir} is damaged; "
                "delete that folder and prepare the data again"
            )


def verify(cache_dir: Path, entry: dict[str, Any], dtype: np.dtype) -> None:
    """Check sizes and SHA-256 of every shard of a split; raise ValueError naming the first corrupted one."""
    check_sizes(cache_dir, entry, dtype)
    for shard in entry["shards"]:
        file = Path(cache_dir) / shard["file"]
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            while block := handle.read(HASH_BLOCK_BYTES):
                digest.update(block)
        if digest.hexdigest() != shard["sha256"]:
            raise ValueError(
                f"Shard {file} does not match its SHA-256 in the manifest (corrupted): delete {cache_dir} "
                "and prepare the data again"
            )
