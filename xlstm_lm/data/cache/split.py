"""The split check before any tokenizing: every source gives both splits documents (DESIGN.md §10).

A folder is split when it is listed (`corpus.list_corpus`). Every other source is split by a hash of each
document's text; `check_splits` reads it until both splits have a document, which takes about
1 / val_fraction documents of a large source. A source that ends first has too few documents to split whole
(three novels, one thesis): it holds out the tail of each document instead (`corpus.tail_split`), about
val_fraction of its text. Only sources whose split by documents leaves a split empty, which failed before, are
split this way: every split that worked before is unchanged, and so is the cache key.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from xlstm_lm.data.cache.prepared import SPLITS
from xlstm_lm.data.sources import Source, SourceCounts

logger = logging.getLogger(__name__)


def check_splits(sources: list[Source]) -> list[Source]:
    """The sources, each split so that both splits get documents; reads what that takes, tokenizes nothing.

    Args:
        sources: the opened sources.

    Returns:
        The sources, those with too few documents for a split by hash switched to `tails`.

    Raises:
        ValueError: a source whose documents are too short to hold out a tail (names data.val_fraction).
    """
    return [_checked(source, f"source {index}" if len(sources) > 1 else "the source")
            for index, source in enumerate(sources)]


def _checked(source: Source, label: str) -> Source:
    if source.corpus is not None:
        return source
    counts = SourceCounts()
    seen = _splits_seen(source, counts)
    if seen == set(SPLITS):
        return source
    (empty,) = set(SPLITS) - seen
    tails = replace(source, tails=True)
    seen = _splits_seen(tails, SourceCounts())
    if seen != set(SPLITS):
        (empty,) = set(SPLITS) - seen
        change = "raise" if empty == "val" else "lower"
        raise ValueError(
            f"The {empty} split of {label} is empty: its text ({counts.documents} documents, {counts.bytes:,} bytes) "
            f"is too short to hold out the last {source.val_fraction:.0%} of a document for validation "
            f"(data.val_fraction={source.val_fraction}): {change} data.val_fraction, or add documents or text"
        )
    logger.warning(
        "data.val_fraction=%s puts none of the %d documents of %s in the %s split (a split of whole documents by "
        "a hash of their text): holding out the last %g%% of each document for validation instead",
        source.val_fraction, counts.documents, label, empty, round(100 * source.val_fraction, 2),
    )
    return tails


def _splits_seen(source: Source, counts: SourceCounts) -> set[str]:
    """The splits of the source's first documents, read until both splits appear or the source ends."""
    seen: set[str] = set()
    for _, split, _ in source.documents(counts):
        seen.add(split)
        if len(seen) == len(SPLITS):
            break
    return seen
