"""Where documents come from: a folder corpus, local files, Hugging Face datasets (DESIGN.md §10).

`open_source` turns a `SourceConfig` into a `Source`: a fingerprint that changes whenever its documents may
change, and `documents()`, which yields every document with its split. Documents of a folder are split by a
hash of their relative path (`corpus.list_corpus`); every other document by a hash of its text, so the same
text never lands in both splits, whichever file or row it comes from. A source with too few documents for
that holds out the tail of each document instead (`tails`, set by `cache.split.check_splits`).

Local files (the files kind) are read in the order given; a folder stands for every file under it (sorted)
and a pattern with *, ? or [ for the files it matches (sorted, "**" spans folders; `files.expand_files`). The
format follows the name, after an optional .gz or .zst:

    .jsonl .json .ndjson  JSON lines, one document per line, its text under `text_field`
    .parquet              one document per row, its text in column `text_field`
    anything else         plain text, the whole file one document

Empty documents are skipped and counted; documents that are not valid UTF-8 are repaired or skipped by
`data.invalid_utf8` and counted. A Hugging Face dataset is read through `datasets.load_dataset` (which also
reads local files with its "json", "parquet" and "text" builders); the hub is only contacted when such a
source is used, and an unreachable hub fails at once with a message that names the local alternative.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Optional
from urllib.parse import urlparse

import pyarrow.parquet as pq
import zstandard

from xlstm_lm.data.config import DataConfig, SourceConfig
from xlstm_lm.data.corpus import Corpus, Document, decode_utf8, hash_fraction, list_corpus, tail_split
from xlstm_lm.data.files import expand_files

JSON_LINES_SUFFIXES = frozenset({".jsonl", ".json", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet"})
COMPRESSED_SUFFIXES = frozenset({".gz", ".zst"})
PARQUET_BATCH_ROWS = 1024
HF_BATCH_ROWS = 1024
HUB_PROBE_TIMEOUT_S = 5.0
OFFLINE_VALUES = frozenset({"1", "on", "yes", "true"})


class OfflineError(ConnectionError, ValueError):
    """A source or tokenizer needs the Hugging Face hub, which cannot be reached.

    Also a ValueError, so the CLIs report it like any other user mistake (one message, exit code 1).
    """


@dataclass
class SourceCounts:
    """What reading a source found: documents kept and their UTF-8 bytes, empty and invalid ones."""

    documents: int = 0
    bytes: int = 0
    empty: int = 0
    invalid_utf8: int = 0


@dataclass
class Source:
    """An opened source: its config, the settings it is read with and its fingerprint.

    Attributes:
        config: the source's settings.
        val_fraction: share of documents in the validation split.
        invalid_utf8: "replace" or "skip".
        fingerprint: JSON-ready record that changes whenever the documents may change.
        files: the local files it reads (files kind, or the data_files of an hf source).
        corpus: the listed corpus of a folder source.
        tails: split each document into a training head and a validation tail (`corpus.tail_split`) instead of
            by its hash; for sources with too few documents to split whole.
    """

    config: SourceConfig
    val_fraction: float
    invalid_utf8: str
    fingerprint: dict[str, Any]
    files: list[Path]
    corpus: Optional[Corpus] = None
    tails: bool = False

    def documents(self, counts: SourceCounts) -> Iterator[tuple[Document, str, float]]:
        """Every document of the source with its split ("train" or "val") and its identity hash, in order.

        The hash (`hash_fraction` of the relative path in a folder, of the text otherwise) decides the split:
        validation below `val_fraction` (a folder moves one document when a split would be empty). With
        `tails`, each document's head and tail follow each other, both with the document's hash.

        Args:
            counts: updated as documents are read (kept, empty, invalid UTF-8).
        """
        if self.corpus is not None:
            counts.empty, counts.invalid_utf8 = self.corpus.empty, self.corpus.invalid_utf8
            for split, documents in self.corpus.splits.items():
                for document in documents:
                    counts.documents += 1
                    counts.bytes += document.num_bytes
                    yield document, split, hash_fraction(document.path)
            return
        documents = self._hf_documents(counts) if self.config.kind == "hf" else self._file_documents(counts)
        for index, document in enumerate(documents):
            if index == self.config.max_documents:
                break
            counts.documents += 1
            counts.bytes += document.num_bytes
            fraction = hash_fraction(document.text)
            if self.tails:
                pieces = zip(tail_split(document, self.val_fraction), ("train", "val"))
                yield from ((piece, split, fraction) for piece, split in pieces if piece is not None)
            else:
                yield document, "val" if fraction < self.val_fraction else "train", fraction

    def _file_documents(self, counts: SourceCounts) -> Iterator[Document]:
        for file in self.files:
            yield from read_file(file, self.config.text_field, self.invalid_utf8, counts)

    def _hf_documents(self, counts: SourceCounts) -> Iterator[Document]:
        source = self.config
        dataset = load_hf_dataset(source, self.files)
        label = f"{source.name}[{source.split}]"
        row = 0
        for batch in dataset.select_columns([source.text_field]).iter(batch_size=HF_BATCH_ROWS):
            for text in batch[source.text_field]:
                row += 1
                if not text:
                    counts.empty += 1
                    continue
                yield Document(f"{label}#{row - 1}", text, len(text.encode("utf-8")))


def open_source(source: SourceConfig, cfg: DataConfig) -> Source:
    """List a source's files (or its folder corpus) and fingerprint it; reads no documents except a folder's.

    Args:
        source: the source.
        cfg: gives val_fraction and invalid_utf8.

    Raises:
        FileNotFoundError: a named file, folder or root does not exist.
        ValueError: a pattern matches nothing, or the source's settings do not fit its kind.
    """
    record = {"kind": source.kind, "text_field": source.text_field, "max_documents": source.max_documents}
    if source.kind == "folder":
        folder_cfg = replace(cfg, kind="folder", sources=[], root=source.root, glob=source.glob,
                             include_tests=source.include_tests)
        corpus = list_corpus(folder_cfg)
        fingerprint = {"kind": "folder", "glob": source.glob, "include_tests": source.include_tests,
                       "corpus": corpus.fingerprint}
        return Source(source, cfg.val_fraction, cfg.invalid_utf8, fingerprint, [], corpus)
    files = expand_files(source.files) if source.files else []
    record["files"] = [file_fingerprint(file) for file in files]
    if source.kind == "hf":
        record.update(name=source.name, subset=source.subset, split=source.split, revision=source.revision)
    return Source(source, cfg.val_fraction, cfg.invalid_utf8, record, files)


def file_fingerprint(file: Path) -> list[Any]:
    """Path, size and modification time: any edit, or a replaced file, changes it without reading the file."""
    stat = file.stat()
    return [str(file), stat.st_size, stat.st_mtime_ns]


def file_format(file: Path) -> str:
    """"jsonl", "parquet" or "text", from the file name (a .gz or .zst suffix is looked through)."""
    suffixes = [suffix.lower() for suffix in file.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in JSON_LINES_SUFFIXES:
        return "jsonl"
    if last in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def open_binary(file: Path) -> IO[bytes]:
    """The file's bytes, decompressed when its name ends in .gz or .zst."""
    suffix = file.suffix.lower()
    if suffix == ".gz":
        return gzip.open(file, "rb")
    if suffix == ".zst":
        return io.BufferedReader(zstandard.open(file, "rb"))  # buffered: the raw reader cannot iterate lines
    return open(file, "rb")


def read_file(file: Path, text_field: str, invalid_utf8: str, counts: SourceCounts) -> Iterator[Document]:
    """The documents of one local file, by its format; empty and invalid ones are counted in `counts`.

    Raises:
        ValueError: a JSON line that is not an object with a string under `text_field`, or a Parquet file
            without the `text_field` column.
    """
    kind = file_format(file)
    if kind == "parquet":
        yield from _parquet_documents(file, text_field, counts)
        return
    with open_binary(file) as stream:
        if kind == "text":
            data = stream.read()
            document = _decoded(str(file), data, invalid_utf8, counts)
            if document is not None:
                yield document
            return
        records = 0
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            records += 1
            where = f"{file}:{line_number}"
            line_text, invalid = decode_utf8(line, invalid_utf8)
            counts.invalid_utf8 += invalid
            if line_text is None:
                continue
            text = _json_text(line_text, text_field, where)
            if not text:
                counts.empty += 1
                continue
            yield Document(where, text, len(text.encode("utf-8")))
        counts.empty += records == 0  # an empty file counts as one empty document


def _decoded(where: str, data: bytes, invalid_utf8: str, counts: SourceCounts) -> Optional[Document]:
    if not data:
        counts.empty += 1
        return None
    text, invalid = decode_utf8(data, invalid_utf8)
    counts.invalid_utf8 += invalid
    return None if text is None else Document(where, text, len(data))


def _json_text(line: str, text_field: str, where: str) -> Optional[str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not a JSON line ({error}): JSON-lines files hold one object per line") from None
    if not isinstance(record, dict) or text_field not in record:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where} has no field {text_field!r} (it has {fields}): set data.text_field")
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} holds {type(text).__name__}, not text")
    return text


def _parquet_documents(file: Path, text_field: str, counts: SourceCounts) -> Iterator[Document]:
    parquet = pq.ParquetFile(file)
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise ValueError(f"Parquet file {file} has no column {text_field!r} (it has {columns}): set data.text_field")
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            row += 1
            if not text:
                counts.empty += 1
                continue
            yield Document(f"{file}#{row - 1}", text, len(text.encode("utf-8")))
    counts.empty += row == 0


def load_hf_dataset(source: SourceConfig, files: list[Path]):
    """`datasets.load_dataset` for an hf source, failing at once with advice when the hub is unreachable.

    Raises:
        OfflineError: the dataset is on the hub and the hub cannot be reached (or offline mode is on and it is
            not in the local cache).
        ValueError: the dataset has no `text_field` column.
    """
    import datasets  # noqa: PLC0415 (heavy, and only needed for this kind of source)

    local = bool(files) or Path(source.name).expanduser().exists()
    advice = ("or read local copies with data=files data.files=[...] (text, JSON lines or Parquet, "
              "optionally .gz/.zst)")
    if not local:
        require_hub(f"the dataset {source.name}", advice)
    try:
        dataset = datasets.load_dataset(source.name, source.subset, split=source.split, revision=source.revision,
                                        streaming=source.streaming,
                                        data_files=[str(file) for file in files] or None)
    except ConnectionError as error:
        raise OfflineError(f"Cannot read the dataset {source.name} from the Hugging Face hub ({error}): connect to "
                           f"the network, set HF_DATASETS_OFFLINE=1 if it is already in the local cache, {advice}"
                           ) from None
    columns = dataset.column_names
    if columns is not None and source.text_field not in columns:
        raise ValueError(f"The dataset {source.name} has no column {source.text_field!r} (it has {columns}): "
                         "set data.text_field")
    return dataset


def require_hub(what: str, advice: str) -> None:
    """Fail at once when the hub is needed but unreachable, instead of after the hub client's retries.

    In offline mode (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE) nothing is checked: the local cache may hold what is
    asked for, and the hub client fails fast when it does not.

    Raises:
        OfflineError: the hub's host cannot be reached within a few seconds.
    """
    if any(os.environ.get(name, "").lower() in OFFLINE_VALUES for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return
    from huggingface_hub.constants import ENDPOINT  # noqa: PLC0415

    address = urlparse(ENDPOINT)
    port = address.port or (443 if address.scheme == "https" else 80)
    try:
        socket.create_connection((address.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise OfflineError(f"{what} needs the network, but {address.hostname} cannot be reached ({error}): "
                           f"connect to the network, {advice}") from None
