"""Configs of the data pipeline: where documents come from, how they are split, tokenized, stored and windowed
(DESIGN.md §10).

Plain dataclasses with Hydra-friendly field types; they are registered in Hydra's ConfigStore elsewhere.
`__post_init__` only validates.
"""

from dataclasses import dataclass, field
from typing import Optional

# Every byte-level vocabulary holds the 256 byte tokens and the end-of-document token.
MIN_VOCAB_SIZE = 256 + 1
SOURCE_KINDS = ("folder", "files", "hf")
INVALID_UTF8_POLICIES = ("replace", "skip")


@dataclass
class DocumentsConfig:
    """Local documents: a folder of text files picked by a glob, or listed files.

    Shared by a training source (`SourceConfig`) and the documents an evaluation scores
    (`xlstm_lm.evaluation.documents.EvalDataConfig`), so both read `data.root`, `data.files`, ... alike.

    Attributes:
        root: folder kind: folder of text files; None means the running interpreter's standard library.
        glob: folder kind: pattern of the files under root ("**" spans any number of folders).
        include_tests: folder kind: also read folders named test, tests or idle_test.
        files: files kind: paths, folders (every file under them) and glob patterns; hf kind: the data_files
            of a builder such as "json" or "parquet".
        text_field: the column or JSON key that holds the text (JSON lines, Parquet, hf).
    """

    root: Optional[str] = None
    glob: str = "**/*.py"
    include_tests: bool = False
    files: list[str] = field(default_factory=list)
    text_field: str = "text"


@dataclass
class SourceConfig(DocumentsConfig):
    """One source of documents: local ones (inherited fields) or a Hugging Face dataset.

    Attributes:
        kind: "folder" (root and glob; each file one document, split by a hash of its relative path),
            "files" (files, folders and globs of plain text, JSON lines or Parquet, optionally .gz/.zst) or
            "hf" (a Hugging Face dataset through `datasets.load_dataset`). Files and hf documents are split by a
            hash of their text.
        name: hf kind: the dataset name on the hub (e.g. "HuggingFaceFW/fineweb-edu") or a builder ("json").
        subset: hf kind: the configuration (e.g. "sample-10BT"), or None.
        split: hf kind: the split to read (train and validation are both cut from it by the hash).
        revision: hf kind: a commit, tag or branch; None means the main branch.
        streaming: hf kind: read the dataset as a stream instead of downloading it whole first.
        max_documents: read at most this many documents of the source (in its order), None for all.
        weight: in a mixture, the source's share of each split's tokens (weights are normalized).
    """

    kind: str = "folder"
    name: Optional[str] = None
    subset: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    streaming: bool = False
    max_documents: Optional[int] = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"data kind must be one of {SOURCE_KINDS} (or mixture at the top), got {self.kind!r}")
        if self.kind == "folder" and self.files:
            raise ValueError("data.files is set but the source is a folder: use data=files data.files=[...]")
        if self.kind == "folder" and self.max_documents is not None:
            raise ValueError("max_documents applies to files and hf sources, not to a folder")
        if not self.glob:
            raise ValueError("glob must be a non-empty pattern such as '**/*.py'")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"max_documents must be positive or null, got {self.max_documents}")
        if not self.weight > 0:
            raise ValueError(f"weight must be positive, got {self.weight}")


@dataclass
class SplitConfig:
    """The train/validation split; shared with the evaluation, which must score the split training held out.

    Attributes:
        val_fraction: share of documents in the validation split, chosen by a hash of each document's identity;
            a source with too few documents for that holds out this share of each document's tail instead.
    """

    val_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class PackingConfig:
    """How documents become the cached token shards.

    Attributes:
        invalid_utf8: what to do with a document that is not valid UTF-8: "replace" undecodable bytes with U+FFFD
            or "skip" the document; either way they are counted in the manifest.
        shard_tokens: tokens per shard file (the last shard of a split holds the rest).
        num_proc: tokenizing processes; None means every core this process may use.
        cache_dir: folder of prepared caches; "~" is expanded.
    """

    invalid_utf8: str = "replace"
    shard_tokens: int = 2**24
    num_proc: Optional[int] = None
    cache_dir: str = "~/.cache/xlstm_lm/data"

    def __post_init__(self) -> None:
        if self.invalid_utf8 not in INVALID_UTF8_POLICIES:
            raise ValueError(f"invalid_utf8 must be one of {INVALID_UTF8_POLICIES}, got {self.invalid_utf8!r}")
        if self.shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {self.shard_tokens}")
        if self.num_proc is not None and self.num_proc < 1:
            raise ValueError(f"num_proc must be at least 1 or null (every core), got {self.num_proc}")


@dataclass
class LoaderConfig:
    """How the shards are cut into windows and batched.

    Attributes:
        seq_len: tokens per training window (the model sees seq_len inputs and seq_len labels).
        batch_size: windows per batch.
        num_workers: DataLoader worker processes.
        stateful: serve each batch row a contiguous stream, window after window (`StreamSampler`), and carry
            the model's recurrent state, detached, from one window to the next (truncated backpropagation
            through time); recurrent models only.
    """

    seq_len: int = 256
    batch_size: int = 16
    num_workers: int = 0
    stateful: bool = False

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass
class DataConfig(LoaderConfig, PackingConfig, SplitConfig, SourceConfig):
    """The `data` group: where the documents come from and how they become shards and training windows.

    One flat set of keys (`data.root`, `data.val_fraction`, `data.seq_len`, ...), grouped by concern in the
    bases: the single source's fields (`SourceConfig`) or, for kind "mixture", `sources`; the split
    (`SplitConfig`); packing into shards (`PackingConfig`); windows and batches (`LoaderConfig`).

    Attributes:
        sources: mixture kind: the sources, each with its weight (share of each split's tokens).
    """

    sources: list[SourceConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind != "mixture":
            SourceConfig.__post_init__(self)
            if self.sources:
                raise ValueError(f"data.sources is only read by data=mixture, but data.kind is {self.kind!r}")
        SplitConfig.__post_init__(self)
        PackingConfig.__post_init__(self)
        LoaderConfig.__post_init__(self)

    @property
    def source_list(self) -> list[SourceConfig]:
        """The sources to read: the mixture's, or this config itself as the single source.

        Note: the presets leave the required lists empty (data.files, data.sources, data.name) so that every
        preset composes; an empty one is reported here, when the data is first used.
        """
        if self.kind == "mixture" and not self.sources:
            raise ValueError("data=mixture needs data.sources=[{kind: files, files: [...], weight: 3}, ...]")
        sources = list(self.sources) if self.kind == "mixture" else [self]
        for source in sources:
            if source.kind == "files" and not source.files:
                raise ValueError("data=files needs data.files=[...]: files, folders or glob patterns")
            if source.kind == "hf" and not source.name:
                raise ValueError("a Hugging Face source needs data.name (e.g. HuggingFaceFW/fineweb-edu)")
        return sources


@dataclass
class TokenizerConfig:
    """Byte-level BPE tokenizer trained on a sample of the training split, or a ready one.

    Attributes:
        vocab_size: tokens in the trained vocabulary (256 byte tokens and the special token included).
        path: a tokenizer.json to load instead of training one.
        pretrained: a tokenizer on the Hugging Face hub (e.g. "gpt2", "EleutherAI/gpt-neox-20b"), used when
            path is unset; needs the network once (then the hub's local cache).
        min_frequency: fewest occurrences of a pair for it to be merged.
        sample_bytes: the BPE is trained on the first training documents up to this many UTF-8 bytes (in a
            mixture, each source contributes by its weight).
    """

    vocab_size: int = 8192
    path: Optional[str] = None
    pretrained: Optional[str] = None
    min_frequency: int = 2
    sample_bytes: int = 2**28

    def __post_init__(self) -> None:
        if self.vocab_size <= MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must exceed {MIN_VOCAB_SIZE} (256 byte tokens + end-of-document), got {self.vocab_size}"
            )
        if self.min_frequency < 0:
            raise ValueError(f"min_frequency must be >= 0, got {self.min_frequency}")
        if self.sample_bytes < 1:
            raise ValueError(f"sample_bytes must be positive, got {self.sample_bytes}")

    @property
    def trained(self) -> bool:
        """Whether the tokenizer is trained here (no path and no pretrained name)."""
        return self.path is None and self.pretrained is None
