"""Preparation into token shards, the manifest, caching and damage detection (DESIGN.md §10)."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from xlstm_lm.data import DataConfig, SourceConfig, TokenizerConfig, list_corpus, load, locate, prepare, token_dtype
from xlstm_lm.data import verify
from xlstm_lm.data.cache import build
from xlstm_lm.data.cache.split import check_splits
import xlstm_lm.data.tokenizer as tokenizer_module


def documents_of(prepared, split: str) -> list[list[int]]:
    """A split's documents from the stream and the index, each without its end-of-document token."""
    tokens, ends = prepared.tokens(split), prepared.document_ends(split)
    assert (tokens[ends - 1] == prepared.eos_id).all()
    starts = np.concatenate([[0], ends[:-1]])
    return [tokens[start : end - 1].tolist() for start, end in zip(starts, ends)]


def write_jsonl(file: Path, texts: list[str]) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return file


def test_splits_are_the_documents_each_followed_by_end_of_document(prepared_configs: tuple) -> None:
    prepared = load(locate(*prepared_configs))
    corpus = list_corpus(prepared_configs[0])
    for split, documents in corpus.splits.items():
        expected = [prepared.tokenizer.encode(document.text).ids for document in documents]
        assert documents_of(prepared, split) == expected
        entry = prepared.manifest["splits"][split]
        assert entry["tokens"] == len(prepared.tokens(split)) == sum(map(len, expected)) + len(documents)
        assert entry["documents"] == len(documents)
        assert entry["bytes"] == sum(document.num_bytes for document in documents)


def test_manifest_records_format_tokenizer_sources_and_counts(prepared_configs: tuple) -> None:
    data, tokenizer = prepared_configs
    path = locate(data, tokenizer)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    corpus = list_corpus(data)
    assert (manifest["format_version"], manifest["cache_fingerprint"], manifest["dtype"]) == (2, path.name, "uint16")
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256((path / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest["tokenizer"]["vocab_size"] == load(path).tokenizer.get_vocab_size() <= tokenizer.vocab_size
    assert manifest["tokenizer"]["config"]["vocab_size"] == tokenizer.vocab_size
    (source,) = manifest["sources"]
    assert (source["kind"], source["corpus"], source["glob"]) == ("folder", corpus.fingerprint, "**/*.txt")
    assert (source["documents"], source["empty"], source["invalid_utf8"]) == (len(corpus.train) + len(corpus.val), 1, 1)
    for split in ("train", "val"):
        entry = manifest["splits"][split]
        assert source["splits"][split] == {key: entry[key] for key in ("documents", "tokens", "bytes")}
        assert [shard["file"] for shard in entry["shards"]] == [f"{split}/shard-00000.bin"]
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "tokenizer.json", "train", "val"]
    assert sorted(p.name for p in (path / "val").iterdir()) == ["documents.npy", "shard-00000.bin"]


@pytest.mark.parametrize("vocab_size, dtype", [(384, np.uint16), (65536, np.uint16), (65537, np.uint32)])
def test_token_dtype(vocab_size: int, dtype: type) -> None:
    assert token_dtype(vocab_size) == np.dtype(dtype)


def test_shards_hold_shard_tokens_each_except_the_last(prepared_configs: tuple, tmp_path: Path) -> None:
    data, tokenizer = prepared_configs
    whole = load(locate(data, tokenizer))
    sharded = load(prepare(dataclasses.replace(data, cache_dir=str(tmp_path), shard_tokens=1000, num_proc=1),
                           TokenizerConfig(path=str(whole.path / "tokenizer.json"))))
    for split in ("train", "val"):
        shards = sharded.manifest["splits"][split]["shards"]
        sizes = [(sharded.path / shard["file"]).stat().st_size // 2 for shard in shards]
        assert [shard["tokens"] for shard in shards] == sizes
        assert len(shards) == -(-len(whole.tokens(split)) // 1000) and sizes[:-1] == [1000] * (len(shards) - 1)
        assert np.array_equal(sharded.tokens(split), whole.tokens(split))
        assert np.array_equal(sharded.document_ends(split), whole.document_ends(split))


def test_second_prepare_reuses_the_cache(configs: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    path = prepare(*configs)
    modified = {file: file.stat().st_mtime_ns for file in path.rglob("*")}
    monkeypatch.setattr(build, "_build", pytest.fail)
    assert prepare(*configs) == path
    assert {file: file.stat().st_mtime_ns for file in path.rglob("*")} == modified


@pytest.mark.parametrize(
    "data_change, tokenizer_change",
    [
        ({"val_fraction": 0.3}, {}),
        ({"include_tests": True}, {}),
        ({"glob": "*/**/*.txt"}, {}),
        ({"shard_tokens": 1000}, {}),
        ({"invalid_utf8": "skip"}, {}),
        ({}, {"vocab_size": 300}),
        ({}, {"min_frequency": 3}),
        ({}, {"sample_bytes": 1000}),
        ({}, {"pretrained": "gpt2"}),
    ],
)
def test_changed_settings_get_another_cache(configs: tuple, data_change: dict, tokenizer_change: dict) -> None:
    data, tokenizer = configs
    changed = locate(dataclasses.replace(data, **data_change), dataclasses.replace(tokenizer, **tokenizer_change))
    assert changed != locate(data, tokenizer)
    assert changed.parent == locate(data, tokenizer).parent


def test_cache_key_is_pinned(configs: tuple, corpus_dir: Path) -> None:
    """Caches written by earlier versions keep being found: the key of fixed settings never changes."""
    assert locate(*configs).name == "26d56ffd4c27000c"
    sources = [SourceConfig(root=str(corpus_dir), glob="**/*.txt", weight=3.0),
               SourceConfig(kind="hf", name="some/dataset", subset="small", max_documents=10)]
    mixed = DataConfig(kind="mixture", sources=sources, val_fraction=0.1, invalid_utf8="skip", shard_tokens=1000,
                       cache_dir=configs[0].cache_dir)
    assert locate(mixed, TokenizerConfig(pretrained="gpt2")).name == "c0ab329b65357741"


def test_settings_that_do_not_change_the_shards_share_the_cache(configs: tuple) -> None:
    data, tokenizer = configs
    other = dataclasses.replace(data, seq_len=64, batch_size=2, num_workers=1, num_proc=2)
    assert locate(other, tokenizer) == locate(data, tokenizer)


def test_edited_file_gets_a_fresh_cache(configs: tuple, corpus_dir: Path) -> None:
    before = prepare(*configs)
    edited = "<<doc d00>>\nedited text\n"
    (corpus_dir / "a" / "doc00.txt").write_text(edited, encoding="utf-8")
    after = prepare(*configs)
    assert after != before and before.is_dir()
    for path, expected in [(before, False), (after, True)]:
        prepared = load(path)
        text = "".join(prepared.tokenizer.decode(prepared.tokens(split).tolist()) for split in ("train", "val"))
        assert (edited in text) == expected


def test_tokenizer_trains_on_a_sample_of_the_training_split(configs: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    train_texts = [document.text for document in list_corpus(configs[0]).train]
    seen = []
    original_train = tokenizer_module.train_tokenizer

    def recording_train(texts, cfg):
        seen.append(list(texts))
        return original_train(texts, cfg)

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", recording_train)
    prepare(*configs)
    sample_bytes = sum(len(text.encode()) for text in train_texts[:5])
    prepare(configs[0], dataclasses.replace(configs[1], sample_bytes=sample_bytes))
    assert seen == [train_texts, train_texts[:5]]


def test_same_shards_with_one_or_two_tokenizing_processes(prepared_configs: tuple, tmp_path: Path) -> None:
    data, tokenizer = prepared_configs  # prepared with num_proc=2
    two = load(locate(data, tokenizer))
    one = load(prepare(dataclasses.replace(data, num_proc=1, cache_dir=str(tmp_path)), tokenizer))
    assert one.manifest["splits"] == two.manifest["splits"]


def test_interrupted_preparation_leaves_nothing(configs: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    data, tokenizer = configs
    original_tokenize = build.tokenize_source

    def tokenize_then_interrupt(*args, **kwargs):
        original_tokenize(*args, **kwargs)  # the shards are written into the temporary folder
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "tokenize_source", tokenize_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(data, tokenizer)
    assert list(Path(data.cache_dir).iterdir()) == []

    monkeypatch.setattr(build, "tokenize_source", original_tokenize)
    assert load(prepare(data, tokenizer)).manifest["splits"]["val"]["tokens"] > 0


def test_finished_cache_of_another_process_is_kept(configs: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    data, tokenizer = configs
    final = locate(data, tokenizer)
    original_build = build._build

    def build_while_another_process_finishes(*args, **kwargs):
        manifest = original_build(*args, **kwargs)
        final.mkdir()
        (final / "from_other_process").write_text("first", encoding="utf-8")
        return manifest

    monkeypatch.setattr(build, "_build", build_while_another_process_finishes)
    assert prepare(data, tokenizer) == final
    assert [file.name for file in final.iterdir()] == ["from_other_process"]
    assert [folder.name for folder in Path(data.cache_dir).iterdir()] == [final.name]


@pytest.fixture
def prepared_copy(configs: tuple) -> Path:
    """A cache of this test's own, which the test may damage."""
    return prepare(configs[0], configs[1])


def test_truncated_shard_is_refused_by_load(prepared_copy: Path) -> None:
    shard = prepared_copy / "train" / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"shard-00000.bin is \d+ bytes, the manifest says \d+ bytes.*delete"):
        load(prepared_copy)
    assert shard.is_file()  # nothing is deleted


def test_corrupted_shard_is_found_by_verify(prepared_copy: Path) -> None:
    shard = prepared_copy / "val" / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    load(prepared_copy)  # same size: only the checksum sees it
    with pytest.raises(ValueError, match="does not match its SHA-256.*prepare the data again"):
        verify(prepared_copy)


def test_other_format_version_says_to_prepare_again(prepared_copy: Path) -> None:
    manifest_file = prepared_copy / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ValueError, match=f"format 1, this version reads format 2: delete {prepared_copy}"):
        load(prepared_copy)


def test_replaced_tokenizer_is_refused(prepared_copy: Path) -> None:
    (prepared_copy / "tokenizer.json").write_text(load(prepared_copy).tokenizer.to_str(pretty=False))
    with pytest.raises(ValueError, match="not the tokenizer the shards were made with"):
        load(prepared_copy)


def test_missing_document_index_is_refused(prepared_copy: Path) -> None:
    (prepared_copy / "val" / "documents.npy").unlink()
    with pytest.raises(ValueError, match="document index of split val"):
        load(prepared_copy)


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


def files_config(tmp_path: Path, files: list[str], **overrides) -> DataConfig:
    return DataConfig(kind="files", files=files, val_fraction=0.25, num_proc=1, cache_dir=str(tmp_path / "cache"),
                      **overrides)


def test_files_source_prepares_disjoint_splits_with_counts(tmp_path: Path) -> None:
    texts = [f"line {index}: " + "word " * (index % 9 + 1) for index in range(60)]
    write_jsonl(tmp_path / "a.jsonl", texts[:30] + ["", texts[0]])  # an empty record and a duplicate
    write_jsonl(tmp_path / "b.jsonl", texts[30:])
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    data = files_config(tmp_path, [str(tmp_path / "*.jsonl"), str(tmp_path / "bad.txt")], invalid_utf8="skip")
    prepared = load(prepare(data, TokenizerConfig(vocab_size=300)))
    decoded = {split: {prepared.tokenizer.decode(ids) for ids in documents_of(prepared, split)}
               for split in ("train", "val")}
    assert decoded["train"] | decoded["val"] == set(texts) and not decoded["train"] & decoded["val"]
    (source,) = prepared.manifest["sources"]
    assert (source["documents"], source["empty"], source["invalid_utf8"]) == (61, 1, 1)
    assert [Path(file[0]).name for file in source["files"]] == ["a.jsonl", "b.jsonl", "bad.txt"]


def test_a_source_too_short_to_split_fails_before_the_tokenizer(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tokenizer(*args):
        raise AssertionError("the split must be checked before the tokenizer is built")

    monkeypatch.setattr(build, "build_tokenizer", no_tokenizer)
    data = files_config(tmp_path, [str(write_jsonl(tmp_path / "a.jsonl", ["x"]))])
    with pytest.raises(ValueError, match=r"The val split of the source is empty: its text \(1 documents, 1 bytes\) is "
                                         r"too short .* \(data.val_fraction=0.25\): raise data.val_fraction"):
        prepare(data, TokenizerConfig(vocab_size=300))
    assert not (tmp_path / "cache").exists()


# Three "novels" whose text hashes are 0.540, 0.654 and 0.666: at val_fraction 0.05 none goes to validation, at
# 0.7 none to training, at 0.6 the split of whole documents works.
NOVELS = {name: "".join(f"{name} line {index}: " + "word " * (index % 7) + "\n" for index in range(40))
          for name in ("first", "second", "third")}


def test_too_few_documents_to_split_hold_out_the_tail_of_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name, text in NOVELS.items():
        (tmp_path / "novels" / f"{name}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "novels" / f"{name}.txt").write_text(text, encoding="utf-8")
    data = dataclasses.replace(files_config(tmp_path, [str(tmp_path / "novels")]), val_fraction=0.05)
    prepared = load(prepare(data, TokenizerConfig(vocab_size=300)))
    decoded = {split: [prepared.tokenizer.decode(ids) for ids in documents_of(prepared, split)]
               for split in ("train", "val")}
    # 5% of each text starts inside line 38; the tail is the last line, 35 or 36 characters.
    last_lines = [text.splitlines(keepends=True)[-1] for text in NOVELS.values()]
    assert decoded["val"] == last_lines == [f"{name} line 39: word word word word \n" for name in NOVELS]
    assert decoded["train"] == [text.removesuffix(line) for text, line in zip(NOVELS.values(), last_lines)]
    train_lines = {line for text in decoded["train"] for line in text.splitlines()}
    assert not train_lines & {line for text in decoded["val"] for line in text.splitlines()}
    assert ("data.val_fraction=0.05 puts none of the 3 documents of the source in the val split (a split of whole "
            "documents by a hash of their text): holding out the last 5% of each document") in caplog.text
    (source,) = prepared.manifest["sources"]
    assert (source["documents"], source["splits"]["val"]["documents"]) == (3, 3)
    for val_fraction, tails in ((0.7, True), (0.6, False)):  # no training document; a split of whole documents
        (checked,) = check_splits(build._open_sources(dataclasses.replace(data, val_fraction=val_fraction)))
        assert checked.tails is tails


def mixture(tmp_path: Path, weights: tuple[float, float], cache_name: str = "cache") -> DataConfig:
    short = write_jsonl(tmp_path / "short.jsonl", [f"s{index} " + "ab " * (index % 5 + 1) for index in range(300)])
    long = write_jsonl(tmp_path / "long.jsonl", [f"l{index} " + "xyz " * (index % 11 + 3) for index in range(200)])
    sources = [SourceConfig(kind="files", files=[str(short)], weight=weights[0]),
               SourceConfig(kind="files", files=[str(long)], weight=weights[1])]
    return DataConfig(kind="mixture", sources=sources, val_fraction=0.2, num_proc=1,
                      cache_dir=str(tmp_path / cache_name))


@pytest.mark.parametrize("weights", [(3.0, 1.0), (1.0, 4.0)])
def test_mixture_weights_are_shares_of_each_splits_tokens(tmp_path: Path, weights: tuple) -> None:
    prepared = load(prepare(mixture(tmp_path, weights), TokenizerConfig(vocab_size=300)))
    sources = prepared.manifest["sources"]
    for split in ("train", "val"):
        kept = [source["splits"][split]["kept_tokens"] for source in sources]
        total = prepared.manifest["splits"][split]["tokens"]
        assert sum(kept) == total
        longest = max(np.diff(prepared.document_ends(split), prepend=0))
        for tokens, weight in zip(kept, weights):
            assert abs(tokens - total * weight / sum(weights)) <= longest
        limiting = min(range(2), key=lambda i: sources[i]["splits"][split]["tokens"] / weights[i])
        assert sources[limiting]["splits"][split]["kept_documents"] == sources[limiting]["splits"][split]["documents"]
        texts = [prepared.tokenizer.decode(ids) for ids in documents_of(prepared, split)]
        first = [text[0] for text in texts]
        assert first == sorted(first, key="sl".index)  # source after source
        assert len(set(texts)) == len(texts)  # nothing repeated


def test_mixture_is_deterministic(tmp_path: Path) -> None:
    first = load(prepare(mixture(tmp_path, (2.0, 1.0)), TokenizerConfig(vocab_size=300)))
    second = load(prepare(mixture(tmp_path, (2.0, 1.0), "other_cache"), TokenizerConfig(vocab_size=300)))
    for split in ("train", "val"):
        assert np.array_equal(first.tokens(split), second.tokens(split))
    assert not (first.path / "staging").exists()


def test_an_unwritable_cache_dir_names_the_setting(configs: tuple, tmp_path: Path) -> None:
    data, tokenizer = configs
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="set data.cache_dir to a writable folder"):
        prepare(dataclasses.replace(data, cache_dir=str(blocker / "cache")), tokenizer)
