"""Listing, reading and splitting of corpora (DESIGN.md §10)."""

import dataclasses
import sys
from pathlib import Path

import pytest

from tests.data.tiny_corpus import NUM_PLAIN_DOCUMENTS, SKIPPED_FILES
from xlstm_lm.data import DataConfig, default_root, hash_fraction, list_corpus
from xlstm_lm.data.corpus import INSTALLED_PACKAGE_FOLDERS, TEST_FOLDERS


def test_lists_matching_non_empty_files_sorted(configs: tuple) -> None:
    corpus = list_corpus(configs[0])
    paths = [document.path for documents in corpus.splits.values() for document in documents]
    assert len(paths) == NUM_PLAIN_DOCUMENTS + 2
    assert {"literal_eos.txt", "bad_utf8.txt", "a/b/doc01.txt"} <= set(paths)
    assert not set(SKIPPED_FILES) & set(paths)
    for documents in corpus.splits.values():
        assert [document.path for document in documents] == sorted(document.path for document in documents)


def test_include_tests_reads_test_folders_but_never_installed_packages(configs: tuple) -> None:
    corpus = list_corpus(dataclasses.replace(configs[0], include_tests=True))
    paths = {document.path for documents in corpus.splits.values() for document in documents}
    assert {"tests/excluded.txt", "test/excluded.txt", "sub/idle_test/excluded.txt"} <= paths
    assert "site-packages/pkg/installed.txt" not in paths


def test_glob_matches_like_pathlib(configs: tuple) -> None:
    corpus = list_corpus(dataclasses.replace(configs[0], glob="a/*.txt"))
    paths = [document.path for documents in corpus.splits.values() for document in documents]
    assert paths and all(path.startswith("a/") and path.count("/") == 1 for path in paths)


def test_undecodable_bytes_become_replacement_characters(configs: tuple) -> None:
    corpus = list_corpus(configs[0])
    (document,) = [d for docs in corpus.splits.values() for d in docs if d.path == "bad_utf8.txt"]
    assert document.text == "<<doc bad>>\ncaf\ufffd \ufffd\ufffd still read\n"
    assert document.num_bytes == len(b"<<doc bad>>\ncaf\xe9 \xff\xfe still read\n")


def test_invalid_utf8_files_can_be_skipped_and_are_counted(configs: tuple) -> None:
    replaced = list_corpus(configs[0])
    skipped = list_corpus(dataclasses.replace(configs[0], invalid_utf8="skip"))
    paths = {document.path for documents in skipped.splits.values() for document in documents}
    assert "bad_utf8.txt" not in paths and len(paths) == NUM_PLAIN_DOCUMENTS + 1
    for corpus in (replaced, skipped):
        assert (corpus.empty, corpus.invalid_utf8) == (1, 1)  # empty.txt, bad_utf8.txt
        assert (corpus.manifest()["empty"], corpus.manifest()["invalid_utf8"]) == (1, 1)


def test_split_follows_hash_of_relative_path(configs: tuple) -> None:
    corpus = list_corpus(configs[0])
    assert corpus.train and corpus.val
    assert all(hash_fraction(document.path) < 0.2 for document in corpus.val)
    assert all(hash_fraction(document.path) >= 0.2 for document in corpus.train)


def test_hash_fraction_is_stable_across_processes() -> None:
    # Pinned values: Python's salted hash() would change them from run to run.
    assert hash_fraction("os.py") == pytest.approx(0.9680117810747945, abs=1e-15)
    assert hash_fraction("a/b/c.txt") == pytest.approx(0.3529208446643324, abs=1e-15)


# The documents with the lowest and the highest path hash of the tiny corpus (0.0317 and 0.9754).
@pytest.mark.parametrize("val_fraction, lonely_split, moved",
                         [(1e-12, "val", "a/b/doc01.txt"), (1 - 1e-12, "train", "a/b/doc21.txt")])
def test_both_splits_are_never_empty(configs: tuple, val_fraction: float, lonely_split: str, moved: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """The fallback moves the document whose hash is nearest the threshold, and says so."""
    corpus = list_corpus(dataclasses.replace(configs[0], val_fraction=val_fraction))
    assert [document.path for document in corpus.splits[lonely_split]] == [moved]
    assert len(corpus.train) + len(corpus.val) == NUM_PLAIN_DOCUMENTS + 2
    assert f"leaves the {lonely_split} split of {NUM_PLAIN_DOCUMENTS + 2} documents empty: moved {moved}" in caplog.text


def test_fingerprint_is_deterministic_and_tracks_contents(configs: tuple, corpus_dir: Path) -> None:
    first, second = list_corpus(configs[0]), list_corpus(configs[0])
    assert first == second
    (corpus_dir / "a" / "doc00.txt").write_text("edited\n", encoding="utf-8")
    assert list_corpus(configs[0]).fingerprint != first.fingerprint


def test_manifest_counts_files_and_bytes_per_split(configs: tuple, corpus_dir: Path) -> None:
    corpus = list_corpus(configs[0])
    manifest = corpus.manifest()
    assert manifest["root"] == str(corpus_dir.resolve())
    assert manifest["python_version"] == sys.version
    for name, documents in corpus.splits.items():
        assert manifest["splits"][name]["files"] == len(documents)
        expected_bytes = sum((corpus_dir / document.path).stat().st_size for document in documents)
        assert manifest["splits"][name]["bytes"] == expected_bytes


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder.*data.root"):
        list_corpus(DataConfig(root=str(missing)))


def test_root_without_matching_files_names_root_and_glob(corpus_dir: Path) -> None:
    with pytest.raises(ValueError, match=rf"No files match glob '\*\*/\*\.rst' under {corpus_dir}"):
        list_corpus(DataConfig(root=str(corpus_dir), glob="**/*.rst"))


def test_root_with_only_empty_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="are empty"):
        list_corpus(DataConfig(root=str(tmp_path), glob="*.txt"))


def test_binary_files_are_skipped_and_named_in_the_log(tmp_path: Path, caplog) -> None:
    for index in range(6):
        (tmp_path / f"doc{index}.txt").write_text(f"document {index}\n" * 20, encoding="utf-8")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    corpus = list_corpus(DataConfig(root=str(tmp_path), glob="*.txt"))
    paths = {document.path for documents in corpus.splits.values() for document in documents}
    assert paths == {f"doc{index}.txt" for index in range(6)}
    assert "Skipped 1 binary files" in caplog.text and "image.txt" in caplog.text


def test_single_document_cannot_be_split(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("only one\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least one document each"):
        list_corpus(DataConfig(root=str(tmp_path), glob="*.txt"))


def test_a_single_file_holds_out_its_last_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = "".join(f"line {index}\n" for index in range(100))  # 790 characters
    (tmp_path / "thesis.txt").write_text(text, encoding="utf-8")
    corpus = list_corpus(DataConfig(root=str(tmp_path), glob="*.txt", val_fraction=0.1))
    (head,), (tail,) = corpus.train, corpus.val
    # 10% of 790 characters starts inside "line 90\n"; the tail starts at the next line.
    assert tail.text == "".join(f"line {index}\n" for index in range(91, 100))
    assert head.text + tail.text == text and not set(head.text.splitlines()) & set(tail.text.splitlines())
    assert (head.path, tail.path, tail.num_bytes) == ("thesis.txt[0:718]", "thesis.txt[718:]", 72)
    assert sorted([tail.path, head.path]) == [head.path, tail.path]  # in path order (evaluation), head first
    assert "holding out its last 72 of 790 characters for validation (data.val_fraction=0.1)" in caplog.text


def test_standard_library_corpus_listing() -> None:
    """The embedded default: listed only (no tokenization), deterministic, tests and packages excluded."""
    corpus = list_corpus(DataConfig())
    assert corpus == list_corpus(DataConfig())
    assert corpus.root == default_root()
    documents = corpus.train + corpus.val
    paths = {document.path for document in documents}
    assert len(documents) > 500 and {"os.py", "json/decoder.py"} <= paths
    assert all(not (TEST_FOLDERS | INSTALLED_PACKAGE_FOLDERS) & set(path.split("/")) for path in paths)
    expected_val = {path for path in paths if hash_fraction(path) < DataConfig().val_fraction}
    assert {document.path for document in corpus.val} == expected_val
    manifest = corpus.manifest()
    assert manifest["python_version"] == sys.version
    assert sum(split["files"] for split in manifest["splits"].values()) == len(documents)
