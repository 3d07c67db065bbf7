"""The text an evaluation scores: given files, or one split of a corpus folder (DESIGN.md §10, §12).

By default the validation split of the embedded standard-library corpus, chosen exactly as training chose
it (`xlstm_lm.data.corpus.list_corpus`), so a model is never scored on text it was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from xlstm_lm.data.config import DataConfig, DocumentsConfig, SplitConfig
from xlstm_lm.data.corpus import Document, list_corpus
from xlstm_lm.data.files import expand_files
from xlstm_lm.data.sources import SourceCounts, read_file

logger = logging.getLogger(__name__)

SPLITS = ("val", "train", "all")


@dataclass
class EvalDataConfig(SplitConfig, DocumentsConfig):
    """Which documents to score: the local-document fields and val_fraction mean what they mean in training.

    Given files (read like training's data.files: plain text files scored whole, JSON lines and Parquet one
    document per record, .gz/.zst decompressed) are scored as they are, and root and glob are unused; otherwise
    a split of the folder corpus under root. val_fraction is the training run's validation share (it decides
    the split).

    Attributes:
        split: which documents of root to score: "val" (held out in training), "train" or "all".
        max_bytes: score only the first this many UTF-8 bytes of the documents (in their order), cutting the last
            one at a character boundary, so the start of one long file can be scored; None = all. The same text
            is then scored for every checkpoint and context length, whatever its tokenizer.
        concatenate: score the documents as one token stream (end-of-document tokens between them, no memory
            reset), so windows can be longer than any document.
    """

    split: str = "val"
    max_bytes: Optional[int] = None
    concatenate: bool = False

    def __post_init__(self) -> None:
        # Note: glob and val_fraction are checked when a folder is listed (`list_corpus`), as given files skip them.
        if self.split not in SPLITS:
            raise ValueError(f"data.split must be one of {SPLITS}, got {self.split!r}")
        if self.files and self.root is not None:
            raise ValueError("give data.files or data.root, not both")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"data.max_bytes must be positive or null, got {self.max_bytes}")


def load_documents(cfg: EvalDataConfig) -> list[Document]:
    """Read the documents `cfg` picks.

    Args:
        cfg: the files, or the folder, glob and split.

    Returns:
        Non-empty documents in order (files as given, corpus documents by path), cut at `max_bytes`.

    Raises:
        FileNotFoundError: a file or the root does not exist.
        ValueError: nothing to score.
    """
    if cfg.files:
        counts = SourceCounts()  # undecodable bytes become U+FFFD, as in the corpus; empty documents are skipped
        documents = [document for file in expand_files(cfg.files)
                     for document in read_file(file, cfg.text_field, "replace", counts)]
        if not documents:
            raise ValueError(f"data.files={cfg.files} are all empty: nothing to score")
    else:
        corpus = list_corpus(DataConfig(root=cfg.root, glob=cfg.glob, include_tests=cfg.include_tests,
                                        val_fraction=cfg.val_fraction))
        documents = list(corpus.train + corpus.val) if cfg.split == "all" else list(corpus.splits[cfg.split])
        documents.sort(key=lambda document: document.path)
    if cfg.max_bytes is not None:
        documents = _first_bytes(documents, cfg.max_bytes)
    logger.info("Scoring %d documents (%.2f MB)", len(documents), sum(d.num_bytes for d in documents) / 1e6)
    return documents


def _first_bytes(documents: list[Document], max_bytes: int) -> list[Document]:
    """The first `max_bytes` UTF-8 bytes of the documents: the leading ones, the last cut to fit (path kept)."""
    chosen, left = [], max_bytes
    for document in documents:
        data = document.text.encode("utf-8")
        if len(data) > left:
            head = data[:left].decode("utf-8", errors="ignore")  # drops a character cut in two
            if head:
                chosen.append(Document(document.path, head, len(head.encode("utf-8"))))
                logger.info("data.max_bytes=%d: scoring the first %d of the %d bytes of %s", max_bytes,
                            chosen[-1].num_bytes, len(data), document.path)
            break
        chosen.append(document)
        left -= len(data)
    if not chosen:
        raise ValueError(f"data.max_bytes={max_bytes} is shorter than the first character: nothing to score")
    return chosen
