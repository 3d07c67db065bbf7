"""Preparation and caching of token arrays (DESIGN.md §10)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from xlstm_lm.data import DataConfig, TokenizerConfig, list_corpus, load, locate, prepare, token_dtype
from xlstm_lm.data import cache


def split_at_end_of_document(tokens: np.ndarray, end_of_document: int) -> list[list[int]]:
    """The documents of a flat array, each without its trailing end-of-document token."""
    assert tokens[-1] == end_of_document
    boundaries = np.flatnonzero(tokens == end_of_document)
    starts = np.concatenate([[0], boundaries[:-1] + 1])
    return [tokens[start:stop].tolist() for start, stop in zip(starts, boundaries)]


def test_arrays_are_documents_each_followed_by_end_of_document(prepared_configs: tuple) -> None:
    prepared = load(locate(*prepared_configs))
    corpus = list_corpus(prepared_configs[0])
    for split, documents in corpus.splits.items():
        tokens = prepared.tokens(split)
        expected = [prepared.tokenizer.encode(document.text).ids for document in documents]
        assert len(tokens) == sum(len(ids) for ids in expected) + len(documents)
        assert split_at_end_of_document(np.asarray(tokens), prepared.eos_id) == expected
        assert prepared.manifest["splits"][split]["tokens"] == len(tokens)


def test_manifest_records_sources_counts_and_tokenizer(prepared_configs: tuple) -> None:
    data, tokenizer = prepared_configs
    path = locate(data, tokenizer)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    corpus_manifest = list_corpus(data).manifest()
    assert {key: manifest[key] for key in corpus_manifest} == {
        **corpus_manifest,
        "splits": {
            split: {**counts, "tokens": manifest["splits"][split]["tokens"]}
            for split, counts in corpus_manifest["splits"].items()
        },
    }
    assert manifest["cache_fingerprint"] == path.name
    assert manifest["dtype"] == "uint16"
    assert manifest["tokenizer"]["config"]["vocab_size"] == tokenizer.vocab_size
    assert manifest["tokenizer"]["vocab_size"] == load(path).tokenizer.get_vocab_size()
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "tokenizer.json", "train.bin", "val.bin"]


def test_small_vocabulary_is_stored_as_uint16(prepared_configs: tuple) -> None:
    prepared = load(locate(*prepared_configs))
    assert prepared.tokens("train").dtype == np.uint16
    assert (prepared.path / "train.bin").stat().st_size == 2 * prepared.manifest["splits"]["train"]["tokens"]


@pytest.mark.parametrize("vocab_size, dtype", [(384, np.uint16), (65536, np.uint16), (65537, np.uint32)])
def test_token_dtype(vocab_size: int, dtype: type) -> None:
    assert token_dtype(vocab_size) == np.dtype(dtype)


def test_second_prepare_reuses_the_cache(configs: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    path = prepare(*configs)
    modified = {file.name: file.stat().st_mtime_ns for file in path.iterdir()}

    def fail_to_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache, "_build", fail_to_rebuild)
    assert prepare(*configs) == path
    assert {file.name: file.stat().st_mtime_ns for file in path.iterdir()} == modified


@pytest.mark.parametrize(
    "data_change, tokenizer_change",
    [
        ({"val_fraction": 0.3}, {}),
        ({"include_tests": True}, {}),
        ({"glob": "*/**/*.txt"}, {}),
        ({}, {"vocab_size": 300}),
        ({}, {"min_frequency": 3}),
    ],
)
def test_changed_settings_get_another_cache(configs: tuple, data_change: dict, tokenizer_change: dict) -> None:
    data, tokenizer = configs
    changed = locate(dataclasses.replace(data, **data_change), dataclasses.replace(tokenizer, **tokenizer_change))
    assert changed != locate(data, tokenizer)
    assert changed.parent == locate(data, tokenizer).parent


def test_settings_that_do_not_change_the_arrays_share_the_cache(configs: tuple) -> None:
    data, tokenizer = configs
    other = dataclasses.replace(data, seq_len=64, batch_size=2, num_workers=1, num_proc=2)
    assert locate(other, tokenizer) == locate(data, tokenizer)


def test_edited_file_gets_a_fresh_cache(configs: tuple, corpus_dir: Path) -> None:
    before = prepare(*configs)
    edited = "<<doc d00>>\nedited text\n"
    (corpus_dir / "a" / "doc00.txt").write_text(edited, encoding="utf-8")
    after = prepare(*configs)
    assert after != before and before.is_dir()
    split = "val" if "a/doc00.txt" in load(after).manifest["splits"]["val"]["paths"] else "train"
    for path, expected in [(before, False), (after, True)]:
        prepared = load(path)
        assert (edited in prepared.tokenizer.decode(prepared.tokens(split).tolist())) == expected


def test_tokenizer_sees_only_the_training_split(configs: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    train_texts = [document.text for document in list_corpus(configs[0]).train]

    def recording_build(texts, cfg):
        seen.extend(texts)
        return original_build(texts, cfg)

    original_build = cache.build_tokenizer
    monkeypatch.setattr(cache, "build_tokenizer", recording_build)
    prepare(*configs)
    assert seen == train_texts


def test_interrupted_preparation_leaves_nothing(configs: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    data, tokenizer = configs
    original_write = cache._write_tokens

    def write_train_then_fail(texts, tok, dtype, file, num_proc, fingerprint):
        if file.stem == "val":
            raise KeyboardInterrupt
        return original_write(texts, tok, dtype, file, num_proc, fingerprint)

    monkeypatch.setattr(cache, "_write_tokens", write_train_then_fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(data, tokenizer)
    assert not locate(data, tokenizer).exists()
    assert list(Path(data.cache_dir).iterdir()) == []

    monkeypatch.setattr(cache, "_write_tokens", original_write)
    assert load(prepare(data, tokenizer)).manifest["splits"]["val"]["tokens"] > 0


def test_finished_cache_of_another_process_is_kept(configs: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    data, tokenizer = configs
    final = locate(data, tokenizer)
    original_build = cache._build

    def build_while_another_process_finishes(*args, **kwargs):
        manifest = original_build(*args, **kwargs)
        final.mkdir()
        (final / "from_other_process").write_text("first", encoding="utf-8")
        return manifest

    monkeypatch.setattr(cache, "_build", build_while_another_process_finishes)
    assert prepare(data, tokenizer) == final
    assert [file.name for file in final.iterdir()] == ["from_other_process"]
    assert [folder.name for folder in Path(data.cache_dir).iterdir()] == [final.name]


def test_loaded_tokenizer_file_reproduces_the_arrays(prepared_configs: tuple, tmp_path: Path) -> None:
    data, tokenizer = prepared_configs
    original = load(locate(data, tokenizer))
    reuse = TokenizerConfig(path=str(original.path / "tokenizer.json"))
    copy = load(prepare(dataclasses.replace(data, cache_dir=str(tmp_path), num_proc=1), reuse))
    assert copy.path != original.path
    for split in ("train", "val"):
        assert np.array_equal(copy.tokens(split), original.tokens(split))


def test_load_without_manifest_says_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare"):
        load(tmp_path)


def test_cache_dir_expands_home(configs: tuple, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = dataclasses.replace(configs[0], cache_dir="~/data_cache")
    assert locate(data, configs[1]).parent == tmp_path / "home" / "data_cache"


def test_missing_root_fails_before_any_write(tmp_path: Path) -> None:
    data = DataConfig(root=str(tmp_path / "absent"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="absent"):
        prepare(data, TokenizerConfig())
    assert not (tmp_path / "cache").exists()
