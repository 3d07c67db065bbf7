"""TokenDataModule: windows, labels, document starts and split hygiene (DESIGN.md §10)."""

import dataclasses
import pickle
import re

import numpy as np
import pytest
import torch

from xlstm_lm.data import EOS_TOKEN, TokenDataModule, TokenWindows, list_corpus, load, locate


@pytest.fixture
def datamodule(prepared_configs: tuple) -> TokenDataModule:
    """A datamodule over the shared cache, set up for fitting."""
    module = TokenDataModule(*prepared_configs)
    module.prepare_data()
    module.setup("fit")
    return module


def document_starts(prepared_configs: tuple, split: str) -> set[int]:
    """Offsets of the first token of each document in a split's flat array, from per-document encodings."""
    prepared = load(locate(*prepared_configs))
    documents = list_corpus(prepared_configs[0]).splits[split]
    lengths = [len(prepared.tokenizer.encode(document.text).ids) + 1 for document in documents]
    return set(np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist())


def split_windows(datamodule: TokenDataModule, split: str) -> TokenWindows:
    """The windows a split's loader serves."""
    loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
    return loader.dataset


def test_batches_have_shapes_and_dtypes(datamodule: TokenDataModule, prepared_configs: tuple) -> None:
    data = prepared_configs[0]
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"input_ids", "labels", "doc_starts"}
        for name, dtype in [("input_ids", torch.int64), ("labels", torch.int64), ("doc_starts", torch.bool)]:
            assert batch[name].shape == (data.batch_size, data.seq_len)
            assert batch[name].dtype == dtype


@pytest.mark.parametrize("split", ["train", "val"])
def test_windows_tile_the_flat_array_with_labels_shifted_by_one(datamodule, prepared_configs, split) -> None:
    seq_len = prepared_configs[0].seq_len
    flat = torch.from_numpy(load(datamodule.cache_path).tokens(split).astype(np.int64))
    windows = split_windows(datamodule, split)
    assert len(windows) == (len(flat) - 1) // seq_len
    for index in range(len(windows)):
        item = windows[index]
        assert torch.equal(item["input_ids"], flat[index * seq_len : (index + 1) * seq_len])
        assert torch.equal(item["labels"], flat[index * seq_len + 1 : (index + 1) * seq_len + 1])


@pytest.mark.parametrize("split", ["train", "val"])
def test_doc_starts_flag_exactly_the_first_token_of_each_document(datamodule, prepared_configs, split) -> None:
    seq_len = prepared_configs[0].seq_len
    starts = document_starts(prepared_configs, split)
    windows = split_windows(datamodule, split)
    flagged = {
        index * seq_len + position
        for index in range(len(windows))
        for position in torch.nonzero(windows[index]["doc_starts"]).flatten().tolist()
    }
    assert flagged == {start for start in starts if start < len(windows) * seq_len}


def test_first_window_position_follows_the_previous_token(prepared_configs: tuple) -> None:
    prepared = load(locate(*prepared_configs))
    flat = prepared.tokens("train")
    end = int(np.flatnonzero(np.asarray(flat) == prepared.eos_id)[0])  # the first document ends at `end`
    for seq_len in (end, end + 1):  # window 1 starts at the eos (same document) or right after it (a new one)
        windows = TokenWindows(prepared.tokens_file("train"), prepared.dtype, seq_len, prepared.eos_id)
        assert windows[0]["doc_starts"][0]
        assert bool(windows[1]["doc_starts"][0]) == (seq_len == end + 1)


def test_validation_windows_hold_only_validation_documents(datamodule, prepared_configs) -> None:
    corpus = list_corpus(prepared_configs[0])
    markers = {
        split: {re.match(r"<<doc (\w+)>>", document.text).group(1) for document in documents}
        for split, documents in corpus.splits.items()
    }
    assert markers["val"] and not markers["val"] & markers["train"]
    seen = set()
    for batch in datamodule.val_dataloader():
        for window in batch["input_ids"]:
            seen |= set(re.findall(r"<<doc (\w+)>>", datamodule.tokenizer.decode(window.tolist())))
    assert seen and seen <= markers["val"]


def test_training_loader_shuffles_and_drops_the_incomplete_batch(prepared_configs: tuple) -> None:
    data, tokenizer = prepared_configs
    prepared = load(locate(data, tokenizer))
    windows = TokenWindows(prepared.tokens_file("train"), prepared.dtype, data.seq_len, prepared.eos_id)
    batch_size = len(windows) // 2 + 1  # one full batch and a remainder
    datamodule = TokenDataModule(dataclasses.replace(data, batch_size=batch_size), tokenizer)
    datamodule.setup("fit")
    epochs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        epochs.append([batch["input_ids"] for batch in datamodule.train_dataloader()])
    assert [batch.shape for batch in epochs[0]] == [(batch_size, data.seq_len)]
    assert not torch.equal(epochs[0][0], epochs[1][0])
    every_window = {tuple(windows[index]["input_ids"].tolist()) for index in range(len(windows))}
    assert {tuple(row.tolist()) for row in epochs[0][0]} <= every_window


def test_validation_loader_keeps_every_window_in_order(datamodule: TokenDataModule) -> None:
    windows = datamodule.val_dataloader().dataset
    served = torch.cat([batch["input_ids"] for batch in datamodule.val_dataloader()])
    assert torch.equal(served, torch.stack([windows[index]["input_ids"] for index in range(len(windows))]))


def test_worker_processes_give_the_same_batches(prepared_configs: tuple) -> None:
    serial = TokenDataModule(*prepared_configs)
    parallel = TokenDataModule(dataclasses.replace(prepared_configs[0], num_workers=2), prepared_configs[1])
    for module in (serial, parallel):
        module.setup("validate")
    for one, other in zip(serial.val_dataloader(), parallel.val_dataloader(), strict=True):
        assert all(torch.equal(one[key], other[key]) for key in one)


def test_pickling_copies_no_tokens_and_keeps_literal_eos_text(datamodule: TokenDataModule) -> None:
    windows = datamodule.train_dataloader().dataset
    windows[0]  # opens the memory map
    assert len(pickle.dumps(windows)) < 1000
    assert torch.equal(pickle.loads(pickle.dumps(windows))[3]["input_ids"], windows[3]["input_ids"])
    restored = pickle.loads(pickle.dumps(datamodule))
    assert restored.eos_id not in restored.tokenizer.encode(EOS_TOKEN).ids


def test_properties(datamodule: TokenDataModule, prepared_configs: tuple) -> None:
    assert datamodule.cache_path == locate(*prepared_configs)
    assert datamodule.vocab_size == datamodule.tokenizer.get_vocab_size()
    assert datamodule.eos_id == datamodule.tokenizer.token_to_id(EOS_TOKEN)
    assert datamodule.manifest["splits"]["val"]["files"] == len(list_corpus(prepared_configs[0]).val)


def test_properties_before_prepare_data_say_to_prepare(configs: tuple) -> None:
    with pytest.raises(FileNotFoundError, match="prepare"):
        TokenDataModule(*configs).vocab_size


def test_validation_split_too_short_for_one_window(prepared_configs: tuple) -> None:
    val_tokens = load(locate(*prepared_configs)).manifest["splits"]["val"]["tokens"]
    module = TokenDataModule(dataclasses.replace(prepared_configs[0], seq_len=val_tokens), prepared_configs[1])
    with pytest.raises(ValueError, match="lower data.seq_len or raise data.val_fraction"):
        module.setup("fit")
    just_enough = dataclasses.replace(prepared_configs[0], seq_len=val_tokens - 1, batch_size=1)
    TokenDataModule(just_enough, prepared_configs[1]).setup("fit")


def test_training_split_shorter_than_a_batch(prepared_configs: tuple) -> None:
    module = TokenDataModule(dataclasses.replace(prepared_configs[0], batch_size=10_000), prepared_configs[1])
    with pytest.raises(ValueError, match="fewer than one batch"):
        module.setup("fit")
