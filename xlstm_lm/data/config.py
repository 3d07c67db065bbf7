"""Configs of the data pipeline: which text files, how they are split, tokenized and windowed (DESIGN.md §10).

Plain dataclasses with Hydra-friendly field types; they are registered in Hydra's ConfigStore elsewhere.
`__post_init__` only validates.
"""

from dataclasses import dataclass
from typing import Optional

# Every byte-level vocabulary holds the 256 byte tokens and the end-of-document token.
MIN_VOCAB_SIZE = 256 + 1


@dataclass
class DataConfig:
    """Where the documents come from and how they become training windows.

    Attributes:
        root: folder of text files; None means the source of the running interpreter's standard library.
        glob: pattern of the files to read, relative to root ("**" spans any number of folders).
        include_tests: also read files under folders named test, tests or idle_test.
        val_fraction: share of documents in the validation split, chosen by a hash of the relative path.
        seq_len: tokens per training window (the model sees seq_len inputs and seq_len labels).
        batch_size: windows per batch.
        num_workers: DataLoader worker processes.
        num_proc: processes for tokenization with `datasets.map`.
        cache_dir: folder of prepared caches; "~" is expanded.
    """

    root: Optional[str] = None
    glob: str = "**/*.py"
    include_tests: bool = False
    val_fraction: float = 0.05
    seq_len: int = 256
    batch_size: int = 16
    num_workers: int = 0
    num_proc: int = 2
    cache_dir: str = "~/.cache/xlstm_lm/data"

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be at least 1, got {self.num_proc}")
        if not self.glob:
            raise ValueError("glob must be a non-empty pattern such as '**/*.py'")


@dataclass
class TokenizerConfig:
    """Byte-level BPE tokenizer trained on the training split, or loaded from a file.

    Attributes:
        vocab_size: tokens in the trained vocabulary (256 byte tokens and the special token included).
        path: a tokenizer.json to load instead of training one; vocab_size and min_frequency are then unused.
        min_frequency: fewest occurrences of a pair for it to be merged.
    """

    vocab_size: int = 8192
    path: Optional[str] = None
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if self.vocab_size <= MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must exceed {MIN_VOCAB_SIZE} (256 byte tokens + end-of-document), got {self.vocab_size}"
            )
        if self.min_frequency < 0:
            raise ValueError(f"min_frequency must be >= 0, got {self.min_frequency}")
