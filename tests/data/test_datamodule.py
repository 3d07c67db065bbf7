"""TokenDataModule: windows, labels, document starts and split hygiene (DESIGN.md §10)."""

import dataclasses
import pickle
import re
from types import SimpleNamespace

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
    tokens = load(datamodule.cache_path).split_tokens(split)
    flat = torch.from_numpy(tokens.read(0, len(tokens)).astype(np.int64))
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
    tokens = prepared.split_tokens("train")
    end = int(np.flatnonzero(tokens.read(0, len(tokens)) == prepared.eos_id)[0])  # the first document ends at `end`
    for seq_len in (end, end + 1):  # window 1 starts at the eos (same document) or right after it (a new one)
        windows = TokenWindows(tokens, seq_len, prepared.eos_id)
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


def first_batches(datamodule: TokenDataModule, count: int) -> list[torch.Tensor]:
    return [batch["input_ids"] for _, batch in zip(range(count), datamodule.train_dataloader())]


def test_training_loader_serves_every_window_once_per_epoch_in_a_seeded_order(prepared_configs: tuple) -> None:
    data, tokenizer = prepared_configs
    prepared = load(locate(data, tokenizer))
    windows = TokenWindows(prepared.split_tokens("train"), data.seq_len, prepared.eos_id)
    every_window = sorted(tuple(windows[index]["input_ids"].tolist()) for index in range(len(windows)))
    epochs = {}
    for seed in (0, 1):
        module = TokenDataModule(dataclasses.replace(data, batch_size=1), tokenizer, seed=seed)
        module.setup("fit")
        epochs[seed] = [tuple(batch[0].tolist()) for batch in first_batches(module, 2 * len(windows))]
        assert sorted(epochs[seed][: len(windows)]) == every_window  # batches continue past the epoch end
        assert sorted(epochs[seed][len(windows) :]) == every_window
        assert epochs[seed][: len(windows)] != epochs[seed][len(windows) :]
    assert epochs[0] != epochs[1]


def test_resumed_datamodule_continues_where_the_checkpoint_was_taken(prepared_configs: tuple) -> None:
    data, tokenizer = prepared_configs
    trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=2, global_rank=0, world_size=1)
    uninterrupted = TokenDataModule(data, tokenizer, seed=3)
    uninterrupted.setup("fit")
    expected = first_batches(uninterrupted, 10)

    first = TokenDataModule(data, tokenizer, seed=3)
    first.trainer = trainer
    first.setup("fit")
    first.train_dataloader()
    trainer.global_step = 3  # 3 optimizer steps x 2 micro-batches done
    state = first.state_dict()
    assert state["position"] == 6 * data.batch_size

    resumed = TokenDataModule(data, tokenizer, seed=3)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    assert all(torch.equal(one, other) for one, other in zip(first_batches(resumed, 4), expected[6:], strict=True))


def test_checkpoint_from_other_data_or_seed_is_refused(prepared_configs: tuple) -> None:
    data, tokenizer = prepared_configs
    module = TokenDataModule(data, tokenizer, seed=3)
    module.setup("fit")
    state = module.state_dict()
    for changed in (TokenDataModule(data, tokenizer, seed=4),
                    TokenDataModule(dataclasses.replace(data, seq_len=data.seq_len - 1), tokenizer, seed=3)):
        changed.setup("fit")
        with pytest.raises(ValueError, match="same data=, tokenizer=, data.seq_len and seed"):
            changed.load_state_dict(state)


def test_validation_loader_keeps_every_window_in_order(datamodule: TokenDataModule) -> None:
    windows = datamodule.val_dataloader().dataset
    served = torch.cat([batch["input_ids"] for batch in datamodule.val_dataloader()])
    assert torch.equal(served, torch.stack([windows[index]["input_ids"] for index in range(len(windows))]))


def test_worker_processes_give_the_same_batches(prepared_configs: tuple) -> None:
    serial = TokenDataModule(*prepared_configs)
    parallel = TokenDataModule(dataclasses.replace(prepared_configs[0], num_workers=2), prepared_configs[1])
    for module in (serial, parallel):
        module.setup("fit")
    for one, other in zip(serial.val_dataloader(), parallel.val_dataloader(), strict=True):
        assert all(torch.equal(one[key], other[key]) for key in one)
    train_batches = [list(zip(range(6), module.train_dataloader())) for module in (serial, parallel)]
    for (_, one), (_, other) in zip(*train_batches, strict=True):
        assert all(torch.equal(one[key], other[key]) for key in one)


def test_pickling_copies_no_tokens_and_keeps_literal_eos_text(datamodule: TokenDataModule) -> None:
    windows = datamodule.train_dataloader().dataset
    windows[0]  # opens the memory map
    assert len(pickle.dumps(windows)) < 2000
    assert torch.equal(pickle.loads(pickle.dumps(windows))[3]["input_ids"], windows[3]["input_ids"])
    restored = pickle.loads(pickle.dumps(datamodule))
    assert restored.eos_id not in restored.tokenizer.encode(EOS_TOKEN).ids


def test_properties(datamodule: TokenDataModule, prepared_configs: tuple) -> None:
    assert datamodule.cache_path == locate(*prepared_configs)
    assert datamodule.vocab_size == datamodule.tokenizer.get_vocab_size()
    assert datamodule.eos_id == datamodule.tokenizer.token_to_id(EOS_TOKEN)
    assert datamodule.manifest["splits"]["val"]["documents"] == len(list_corpus(prepared_configs[0]).val)


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


def served_windows(datamodule: TokenDataModule, count: int) -> tuple[list[dict], dict[tuple, int]]:
    """The first `count` training batches and, for each window content (input ids and labels, unique in the tiny
    corpus), its offset in the split's token stream."""
    stream = load(datamodule.cache_path).tokens("train")
    seq_len = datamodule.data_config.seq_len
    offsets = {tuple(stream[offset : offset + seq_len + 1].tolist()): offset
               for offset in range(0, len(stream) - seq_len, seq_len)}
    assert len(offsets) == (len(stream) - 1) // seq_len  # no two windows alike: a window's content is its offset
    return [batch for _, batch in zip(range(count), datamodule.train_dataloader())], offsets


def row_offsets(batch: dict, offsets: dict[tuple, int]) -> list[int]:
    return [offsets[tuple(ids) + (labels[-1],)] for ids, labels in zip(batch["input_ids"].tolist(),
                                                                        batch["labels"].tolist())]


@pytest.mark.parametrize("stateful", [False, True])
def test_served_doc_starts_are_the_document_boundaries_of_the_token_stream(prepared_configs, stateful) -> None:
    data, tokenizer = prepared_configs
    prepared = load(locate(data, tokenizer))
    stream, ends = prepared.tokens("train"), prepared.document_ends("train")
    starts = {0, *ends[:-1].tolist()}  # document k + 1 starts where document k ends
    assert ends[-1] == len(stream) and all(stream[start - 1] == prepared.eos_id for start in starts - {0})
    module = TokenDataModule(dataclasses.replace(data, stateful=stateful), tokenizer)
    module.setup("fit")
    batches, offsets = served_windows(module, 40)
    for batch in batches:
        for row, offset in enumerate(row_offsets(batch, offsets)):
            expected = [offset + position in starts for position in range(data.seq_len)]
            assert batch["doc_starts"][row].tolist() == expected


def test_stateful_rows_continue_window_after_window_until_the_epoch_ends(prepared_configs) -> None:
    data, tokenizer = prepared_configs
    module = TokenDataModule(dataclasses.replace(data, stateful=True), tokenizer, seed=5)
    module.setup("fit")
    run_length = len(module.train_dataloader().dataset) // data.batch_size
    batches, offsets = served_windows(module, run_length + 3)
    rows = [row_offsets(batch, offsets) for batch in batches]
    for step, batch in enumerate(batches):
        continues = step % run_length != 0  # every row starts its stream at an epoch's start
        assert batch["continues"].tolist() == [continues] * data.batch_size
        if continues:
            assert rows[step] == [offset + data.seq_len for offset in rows[step - 1]]
        else:  # a new stream: the start of one of the runs the windows are cut into
            assert all(offset // data.seq_len % run_length == 0 for offset in rows[step])
    assert sorted(rows[0]) == sorted(rows[run_length]) and rows[0] != rows[run_length]  # epoch 2 deals runs anew


def test_a_stateful_checkpoint_resumes_only_a_stateful_run_of_its_batch_size(prepared_configs) -> None:
    data, tokenizer = prepared_configs
    modules = {}
    for name, changes in {"plain": {}, "stateful": {"stateful": True},
                          "other_batch": {"stateful": True, "batch_size": data.batch_size + 1}}.items():
        modules[name] = TokenDataModule(dataclasses.replace(data, **changes), tokenizer)
        modules[name].setup("fit")
    modules["stateful"].load_state_dict(modules["stateful"].state_dict())
    for saved, resumed, change in [("plain", "stateful", "stateful: checkpoint None vs now True"),
                                   ("stateful", "plain", "stateful: checkpoint True vs now None"),
                                   ("stateful", "other_batch", f"batch_size: checkpoint {data.batch_size} vs")]:
        with pytest.raises(ValueError, match=change):
            modules[resumed].load_state_dict(modules[saved].state_dict())
