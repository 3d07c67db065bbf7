"""The documents a tokenizer is trained on: the start of each source's training split (DESIGN.md §10)."""

from __future__ import annotations

import logging

from xlstm_lm.data.sources import Source, SourceCounts

logger = logging.getLogger(__name__)


def tokenizer_sample(sources: list[Source], weights: list[float], sample_bytes: int) -> list[str]:
    """The first training documents of each source, up to its weight's share of `sample_bytes` (at least one).

    Args:
        sources: the opened sources.
        weights: each source's share (summing to 1), as `mixture.source_weights`.
        sample_bytes: the UTF-8 bytes of the whole sample.
    """
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
