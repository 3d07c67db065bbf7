"""Mixtures: each source's weight is its share of each split's tokens (DESIGN.md §10).

No document is repeated: the source that runs out first (relative to its weight) is used whole and every other
one is subsampled, taking its documents in the order of their identity hash until its share is reached (within
one document). A split holds the chosen documents source after source, each source's in reading order. Each
source is first tokenized into staging shards of its own; `mix` copies the chosen documents into the splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xlstm_lm.data.cache.prepared import SPLITS
from xlstm_lm.data.config import DataConfig
from xlstm_lm.data.shards import ShardedTokens, ShardWriter, document_ends

COPY_BATCH_DOCUMENTS = 4096


def source_weights(cfg_data: DataConfig) -> list[float]:
    """Each source's share of every split's tokens (summing to 1); a single source has all of it."""
    weights = [source.weight for source in cfg_data.sources] if cfg_data.kind == "mixture" else [1.0]
    return [weight / sum(weights) for weight in weights]


def mix(
    staged: list[tuple[Path, dict[str, Any], dict[str, np.ndarray]]],
    weights: list[float],
    work_dir: Path,
    dtype: np.dtype,
    shard_tokens: int,
    records: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Copy each source's chosen documents from its staging shards into the final splits.

    Args:
        staged: per source, its staging folder, its split entries and the (identity hash, bytes) of its
            documents per split, as `tokenizing.tokenize_source` returns them.
        weights: each source's share, as `source_weights`.
        work_dir: the cache folder being written.
        dtype: element type of the ids.
        shard_tokens: tokens per shard of the final splits.
        records: the sources' manifest records; what each source kept goes under
            records[i]["splits"][split]["kept_*"].

    Returns:
        The entry of each final split.
    """
    splits = {}
    for split in SPLITS:
        totals = [entries[split]["tokens"] for _, entries, _ in staged]  # none is 0: `split.check_splits`
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
