"""Synthetic task generators: reproducible, answers right (checked by an independent computation), held-out
sequences never trained on, and the task schemas refuse unknown keys."""

import itertools
from collections import Counter

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import compose_train
from xlstm_lm.cli.schemas import to_config
from xlstm_lm.data.synthetic import (IGNORE_INDEX, CycleNavigationConfig, MajorityConfig, ModularArithmeticConfig,
                                     MQARConfig, ParityConfig, TaskConfig, make_batch, vocabulary)
from xlstm_lm.data.task_datamodule import TaskDataModule

TASKS = [ParityConfig(batch_size=8), ModularArithmeticConfig(batch_size=8), CycleNavigationConfig(batch_size=8),
         MajorityConfig(batch_size=8), MQARConfig(batch_size=8, vocab_size=64, num_kv_pairs=4, min_length=24, max_length=32)]


def expected_answers(config: TaskConfig, words: list[str]) -> list[str]:
    """The answers computed from the token strings, independently of the generators' arithmetic on ids."""
    if config.task == "parity":
        return [str(words[:-1].count("1") % 2)]
    if config.task == "modular_arithmetic":
        value = int(words[0])
        for operator, operand in zip(words[1:-1:2], words[2:-1:2]):
            value = eval(f"({value}) {operator} {operand}") % config.modulus  # the Python operator itself
        return [str(value)]
    if config.task == "cycle_navigation":
        return [str(sum({"L": -1, "S": 0, "R": 1}[word] for word in words[:-1]) % config.cycle)]
    if config.task == "majority":
        return [majority(words[:-1])]
    pairs = dict(zip(words[0:2 * config.num_kv_pairs:2], words[1:2 * config.num_kv_pairs:2]))
    queries = [word for word in words[2 * config.num_kv_pairs:] if word != "_"]
    assert sorted(queries) == sorted(pairs)  # every key queried once
    return [pairs[word] for word in queries]


def majority(words: list[str]) -> str:
    """The most frequent symbol, a tie going to the smallest symbol (as a number: "10" > "9")."""
    counts = Counter(words)
    return min(counts, key=lambda word: (-counts[word], int(word)))


@pytest.mark.parametrize("config", TASKS, ids=lambda config: config.task)
def test_batches_are_reproducible_and_answers_right(config):
    tokens = vocabulary(config)
    for split, index in [("train", 0), ("train", 1), ("val", 0)]:
        batch = make_batch(config, 7, split, index)
        again = make_batch(config, 7, split, index)
        assert all(np.array_equal(batch[key], again[key]) for key in batch)
        assert not np.array_equal(batch["input_ids"], make_batch(config, 8, split, index)["input_ids"])
        for inputs, labels in zip(batch["input_ids"], batch["labels"]):
            answers = [tokens[label] for label in labels if label != IGNORE_INDEX]
            assert answers == expected_answers(config, [tokens[token] for token in inputs])
    test = make_batch(config, 7, "test", 0, config.test_lengths[-1])
    assert test["input_ids"].shape[0] == config.batch_size


@pytest.mark.parametrize("config, sequences", [
    # parity of 3-6 bits has 120 sequences: many batches draw each of them many times
    (ParityConfig(min_length=3, max_length=6, test_lengths=[3, 6], batch_size=16), sum(2**n for n in range(3, 7))),
    (MajorityConfig(num_symbols=3, min_length=3, max_length=4, test_lengths=[3, 4], batch_size=16), 3**3 + 3**4),
], ids=["parity", "majority"])
def test_no_held_out_sequence_is_a_training_sequence(config, sequences):
    train = {tuple(row) for index in range(40) for row in make_batch(config, 0, "train", index)["input_ids"]}
    held = {tuple(row) for index in range(40) for row in make_batch(config, 0, "val", index)["input_ids"]}
    held |= {tuple(row) for length, index in itertools.product(config.test_lengths, range(10))
             for row in make_batch(config, 0, "test", index, length)["input_ids"]}
    assert train and held and not train & held
    assert len(train) + len(held) == sequences  # both sides together: every sequence


def test_majority_ties_go_to_the_smallest_symbol():
    # 2 symbols at length 4: "0 1 1 0" and the other five ties of two against two are frequent
    config = MajorityConfig(num_symbols=2, min_length=4, max_length=4, batch_size=32)
    batch = make_batch(config, 0, "train", 0)
    ties = [labels[-1] for inputs, labels in zip(batch["input_ids"], batch["labels"]) if inputs[:-1].sum() == 2]
    assert ties and set(ties) == {0}
    assert vocabulary(config)[:3] == ["0", "1", "="]


def test_too_few_sequences_for_a_split_is_a_clear_error():
    # the four parity sequences of 2 bits all hash to the training side: none is left to test on
    with pytest.raises(ValueError, match="too few distinct sequences of length 2"):
        make_batch(ParityConfig(batch_size=4), 0, "test", 0, 2)


def test_datamodule_resumes_at_its_position_and_refuses_other_settings():
    module = TaskDataModule(ParityConfig(batch_size=4), seed=3)
    first = list(itertools.islice(iter(module.train_dataloader()), 3))
    resumed = TaskDataModule(ParityConfig(batch_size=4), seed=3)
    resumed.load_state_dict({**module.state_dict(), "position": 2})
    assert np.array_equal(next(iter(resumed.train_dataloader()))["input_ids"], first[2]["input_ids"])
    with pytest.raises(ValueError, match="training data order does not fit this run"):
        TaskDataModule(ParityConfig(batch_size=8), seed=3).load_state_dict(module.state_dict())
    assert module.tokenizer.decode([0, 1, 2]) == "0 1 ="


def test_task_schemas_compose_and_refuse_unknown_keys():
    config = to_config(compose_train(["data=mqar", "data.num_kv_pairs=4"]))
    assert isinstance(config.data, MQARConfig) and config.data.num_kv_pairs == 4
    with pytest.raises(ConfigCompositionException, match="num_kv_pairs"):
        compose_train(["data=parity", "data.num_kv_pairs=4"])  # a key of another task's schema
    with pytest.raises(ValueError, match="MQAR lengths"):
        to_config(compose_train(["data=mqar", "data.num_kv_pairs=30"]))
    config = to_config(compose_train(["data=majority", "data.num_symbols=3"]))
    assert isinstance(config.data, MajorityConfig) and config.data.num_symbols == 3
    with pytest.raises(ConfigCompositionException, match="cycle"):
        compose_train(["data=majority", "data.cycle=3"])
    with pytest.raises(ValueError, match="data.num_symbols must be at least 2"):
        to_config(compose_train(["data=majority", "data.num_symbols=1"]))
