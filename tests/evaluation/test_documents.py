"""The documents an evaluation scores: given files, or the training split of a folder."""

import logging

import pytest

from tests.conftest import SMALL_CORPUS
from xlstm_lm.data import DataConfig, list_corpus
from xlstm_lm.evaluation.documents import EvalDataConfig, load_documents


def test_files_are_read_whole_and_empty_ones_skipped(tmp_path):
    (tmp_path / "book.txt").write_bytes("chapter one\ncafé\n".encode("utf-8"))
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    files = [str(tmp_path / name) for name in ("book.txt", "empty.txt", "bad.txt")]
    documents = load_documents(EvalDataConfig(files=files))
    assert [(d.path.split("/")[-1], d.text, d.num_bytes) for d in documents] == [
        ("book.txt", "chapter one\ncafé\n", 18), ("bad.txt", "caf\ufffd\n", 5)]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.txt"):
        load_documents(EvalDataConfig(files=[str(tmp_path / "no_such.txt")]))


@pytest.mark.parametrize("split", ["val", "train"])
def test_a_folder_split_is_the_training_split(split):
    corpus = list_corpus(DataConfig(root=SMALL_CORPUS, val_fraction=0.2))
    documents = load_documents(EvalDataConfig(root=SMALL_CORPUS, val_fraction=0.2, split=split))
    assert [d.path for d in documents] == [d.path for d in corpus.splits[split]]


def test_the_default_is_the_stdlib_validation_split():
    documents = load_documents(EvalDataConfig())
    assert [d.path for d in documents] == [d.path for d in list_corpus(DataConfig()).val]


def test_all_and_max_bytes_take_documents_in_path_order():
    everything = load_documents(EvalDataConfig(root=SMALL_CORPUS, split="all"))
    assert [d.path for d in everything] == sorted(d.path for d in everything) and len(everything) > 3
    first_two = everything[0].num_bytes + 1
    cut = load_documents(EvalDataConfig(root=SMALL_CORPUS, split="all", max_bytes=first_two))
    assert [d.path for d in cut] == [d.path for d in everything[:2]]


def test_max_bytes_scores_the_start_of_one_long_file(tmp_path, caplog):
    book = tmp_path / "book.txt"
    book.write_bytes("chapter one: café\n".encode("utf-8") * 100)  # 19 bytes a line, é is two
    (tmp_path / "sequel.txt").write_bytes(book.read_bytes())
    files = [str(book), str(tmp_path / "sequel.txt")]
    with caplog.at_level(logging.INFO):
        (cut,) = load_documents(EvalDataConfig(files=files, max_bytes=19 * 3 + 17))  # ends inside é: it is dropped
    assert (cut.path, cut.text, cut.num_bytes) == (str(book), "chapter one: café\n" * 3 + "chapter one: caf", 73)
    assert f"data.max_bytes=74: scoring the first 73 of the 1900 bytes of {book}" in caplog.text
    whole, head = load_documents(EvalDataConfig(files=files, max_bytes=1900 + 19))
    assert (whole.num_bytes, head.text) == (1900, "chapter one: café\n")
    (tmp_path / "accent.txt").write_text("é", encoding="utf-8")
    with pytest.raises(ValueError, match="data.max_bytes=1 is shorter than the first character"):
        load_documents(EvalDataConfig(files=[str(tmp_path / "accent.txt")], max_bytes=1))


@pytest.mark.parametrize("fields,message", [(dict(split="test"), "data.split"),
                                            (dict(files=["a.txt"], root="/tmp"), "not both"),
                                            (dict(max_bytes=0), "data.max_bytes")])
def test_bad_settings_fail(fields, message):
    with pytest.raises(ValueError, match=message):
        EvalDataConfig(**fields)
