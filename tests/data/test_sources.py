"""Sources of documents: local file formats, compression, globs, bad input, Hugging Face loading (DESIGN.md §10)."""

import gzip
import socket
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.formats import TEXTS, write_formats
from xlstm_lm.data import DataConfig, OfflineError, SourceConfig, hash_fraction
from xlstm_lm.data.sources import SourceCounts, open_source, read_file


def read_all(file: Path, text_field: str = "text", invalid_utf8: str = "replace") -> tuple[list[str], SourceCounts]:
    counts = SourceCounts()
    return [document.text for document in read_file(file, text_field, invalid_utf8, counts)], counts


@pytest.mark.parametrize("kind", ["jsonl", "gz", "zst", "parquet"])
def test_every_record_format_reads_the_same_documents(tmp_path: Path, kind: str) -> None:
    files = write_formats(tmp_path, TEXTS)
    assert read_all(files[kind])[0] == TEXTS


@pytest.mark.parametrize("name", ["one.txt.zst", "one.txt.gz", "plain/0.txt"])
def test_plain_text_file_is_one_document_compressed_or_not(tmp_path: Path, name: str) -> None:
    write_formats(tmp_path, TEXTS)
    assert read_all(tmp_path / name)[0] == [TEXTS[0]]


def test_jsonl_without_the_text_field_names_file_line_and_fields(tmp_path: Path) -> None:
    file = tmp_path / "docs.jsonl"
    file.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    with pytest.raises(ValueError, match=r"docs.jsonl:2 has no field 'text' \(it has \['content'\]\): set data.text_field"):
        read_all(file)
    with pytest.raises(ValueError, match="docs.jsonl:1 has no field 'content'"):
        read_all(file, text_field="content")


def test_jsonl_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    file = tmp_path / "docs.jsonl"
    file.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match="docs.jsonl:2 is not a JSON line"):
        read_all(file)


def test_parquet_without_the_text_column_lists_its_columns(tmp_path: Path) -> None:
    file = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["a"], "id": [0]}), file)
    with pytest.raises(ValueError, match=r"has no column 'text' \(it has \['content', 'id'\]\): set data.text_field"):
        read_all(file)
    assert read_all(file, text_field="content")[0] == ["a"]


@pytest.mark.parametrize("policy, expected", [("replace", ["ok", "caf\ufffd"]), ("skip", ["ok"])])
def test_invalid_utf8_is_replaced_or_skipped_and_counted(tmp_path: Path, policy: str, expected: list[str]) -> None:
    lines = tmp_path / "docs.jsonl"
    lines.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n{"text": ""}\n{"text": null}\n\n')
    texts, counts = read_all(lines, invalid_utf8=policy)
    assert texts == expected and (counts.invalid_utf8, counts.empty) == (1, 2)
    plain = tmp_path / "bad.txt"
    plain.write_bytes(b"caf\xe9")
    texts, counts = read_all(plain, invalid_utf8=policy)
    assert texts == expected[1:] and counts.invalid_utf8 == 1


def test_empty_files_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "empty.jsonl.gz").write_bytes(gzip.compress(b"\n"))
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    for name in ("empty.txt", "empty.jsonl.gz", "empty.parquet"):
        texts, counts = read_all(tmp_path / name)
        assert texts == [] and counts.empty == 1, name


def source_documents(source: SourceConfig, **data) -> list[tuple[str, str]]:
    opened = open_source(source, DataConfig(val_fraction=0.3, **data))
    return [(document.text, split) for document, split, _ in opened.documents(SourceCounts())]


def test_files_are_split_by_a_hash_of_the_text_so_duplicates_never_straddle(tmp_path: Path) -> None:
    texts = [f"document number {index}\n" for index in range(40)]
    write_formats(tmp_path / "a", texts)
    documents = source_documents(SourceConfig(kind="files", files=[str(tmp_path / "a" / "docs.jsonl"),
                                                                    str(tmp_path / "a" / "docs.parquet")]))
    assert [text for text, _ in documents] == texts + texts
    assert all(split == ("val" if hash_fraction(text) < 0.3 else "train") for text, split in documents)
    splits = {text: {split for t, split in documents if t == text} for text in texts}
    assert all(len(found) == 1 for found in splits.values()) and {"train", "val"} == set().union(*splits.values())


def test_max_documents_reads_only_the_first(tmp_path: Path) -> None:
    files = write_formats(tmp_path, TEXTS)
    documents = source_documents(SourceConfig(kind="files", files=[str(files["jsonl"])], max_documents=2))
    assert [text for text, _ in documents] == TEXTS[:2]


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_source_reads_local_files_through_datasets(tmp_path: Path, monkeypatch, streaming: bool) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(socket, "create_connection", pytest.fail)  # local files never need the hub
    files = write_formats(tmp_path, TEXTS)
    for builder, file in [("json", files["jsonl"]), ("parquet", files["parquet"])]:
        source = SourceConfig(kind="hf", name=builder, files=[str(file)], streaming=streaming)
        assert source_documents(source) == source_documents(SourceConfig(kind="files", files=[str(file)]))


def test_hf_source_without_the_text_column_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    files = write_formats(tmp_path, TEXTS)
    with pytest.raises(ValueError, match=r"no column 'content'.*set data.text_field"):
        source_documents(SourceConfig(kind="hf", name="parquet", files=[str(files["parquet"])], text_field="content"))


def refuse_connection(*args, **kwargs):
    raise OSError("Name or service not known")


def test_unreachable_hub_fails_at_once_naming_local_files(monkeypatch) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse_connection)
    start = time.perf_counter()
    with pytest.raises(OfflineError, match=r"roneneldan/TinyStories needs the network.*data=files data.files"):
        source_documents(SourceConfig(kind="hf", name="roneneldan/TinyStories"))
    assert time.perf_counter() - start < 2.0
    assert issubclass(OfflineError, ValueError)  # the CLIs report it as one message and exit code 1
