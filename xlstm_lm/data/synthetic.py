"""Synthetic tasks of the xLSTM paper: formal languages (state tracking) and multi-query associative recall.

Each task has a fixed vocabulary (`vocabulary`, no BPE) and makes examples of a given length as token ids
with their labels aligned to the inputs: `labels[t]` is the token the model must predict after reading
`inputs[: t + 1]`, and `IGNORE_INDEX` everywhere except the answer tokens, so the loss and the accuracy count
answers only.

    parity               bits, "=", then the parity of the number of ones (length: the number of bits)
    modular_arithmetic   n operands mod m joined by + - *, evaluated left to right, "=", the result mod m
    cycle_navigation     moves L (-1), S (0), R (+1) on a cycle of `cycle` positions from 0, "=", the position
    majority             symbols 0 .. num_symbols - 1, "=", the most frequent one (a tie: the smallest of them)
    mqar                 Zoology's multi-query associative recall (Arora et al. 2023): key-value pairs, then
                         every key queried once at random places of the rest of the sequence; the label at a
                         query is its value (length: the sequence length)

Exactly reproducible and never repeated between splits: batch `index` of a split is drawn by a generator
seeded with (seed, split, index), and every example is assigned to the training or the held-out side by a hash
of its input tokens (`held_out`), so a validation or test sequence is never a training sequence, even at short
lengths where the space of sequences is small enough to be drawn many times.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from xlstm_lm.data.tokenizer import EOS_TOKEN
from xlstm_lm.models.head_loss import IGNORE_INDEX
SPLITS = ("train", "val", "test")
MAX_TRIES = 64  # draws per example before a length is judged to have too few sequences on the split's side


@dataclass
class TaskConfig:
    """What every task shares: training and test lengths, batches.

    Attributes:
        task: the task's name (fixed by its schema).
        min_length: shortest training (and validation) length.
        max_length: longest training length; each batch draws one length uniformly in [min_length, max_length].
        test_lengths: the lengths `xlstm-eval` scores (the generalization to longer sequences).
        batch_size: sequences per batch.
        val_batches: batches of the validation split (held-out sequences at the training lengths).
    """

    task: str = ""
    min_length: int = 3
    max_length: int = 40
    test_lengths: list[int] = field(default_factory=lambda: [40, 64, 128, 256])
    batch_size: int = 32
    val_batches: int = 8

    def __post_init__(self) -> None:
        if self.task not in TASKS or not isinstance(self, TASKS[self.task][0]):
            raise ValueError(f"data.task must be one of {sorted(TASKS)} with its own schema, got {self.task!r}")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= data.min_length <= data.max_length, got {self.min_length}, {self.max_length}")
        if not self.test_lengths or min(self.test_lengths) < 1:
            raise ValueError(f"data.test_lengths must be positive lengths, got {self.test_lengths}")
        if self.batch_size < 1 or self.val_batches < 1:
            raise ValueError(f"data.batch_size and data.val_batches must be positive, got {self.batch_size}, "
                             f"{self.val_batches}")


@dataclass
class ParityConfig(TaskConfig):
    """Parity of a bit string (NX-AI's config: lengths 3-40 to train, 40-256 to test)."""

    task: str = "parity"


@dataclass
class AlphabetTaskConfig(TaskConfig):
    """A task over a small alphabet whose size is one key of its own schema (named by `ALPHABET_KEY`, so the
    keys users type stay the tasks' own: data.modulus, data.cycle, ...); it must be at least 2."""

    ALPHABET_KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        size = getattr(self, self.ALPHABET_KEY)
        if size < 2:
            raise ValueError(f"data.{self.ALPHABET_KEY} must be at least 2, got {size}")


@dataclass
class ModularArithmeticConfig(AlphabetTaskConfig):
    """Arithmetic without brackets mod `modulus`, evaluated left to right.

    Attributes:
        modulus: m; operands and the result are in [0, m).
    """

    ALPHABET_KEY: ClassVar[str] = "modulus"
    task: str = "modular_arithmetic"
    modulus: int = 5


@dataclass
class CycleNavigationConfig(AlphabetTaskConfig):
    """The final position after moves on a cycle.

    Attributes:
        cycle: number of positions on the cycle.
    """

    ALPHABET_KEY: ClassVar[str] = "cycle"
    task: str = "cycle_navigation"
    cycle: int = 5


@dataclass
class MajorityConfig(AlphabetTaskConfig):
    """The most frequent symbol of a sequence; a tie goes to the smallest of the tied symbols.

    Attributes:
        num_symbols: size of the alphabet 0 .. num_symbols - 1.
    """

    ALPHABET_KEY: ClassVar[str] = "num_symbols"
    task: str = "majority"
    num_symbols: int = 5


@dataclass
class MQARConfig(TaskConfig):
    """Multi-query associative recall (Zoology). Lengths are sequence lengths.

    Attributes:
        vocab_size: tokens of the task: keys are ids 1 .. vocab_size/2 - 1, values vocab_size/2 .. vocab_size - 1
            and 0 the filler (the end-of-document token is one more).
        num_kv_pairs: key-value pairs listed at the start (and queried).
        power_a: queries are placed at gaps drawn with weight a · gap^(a - 1): small a favours queries close to
            the pairs (Zoology's 0.01).
    """

    task: str = "mqar"
    min_length: int = 64
    max_length: int = 64
    test_lengths: list[int] = field(default_factory=lambda: [64, 128, 256])
    vocab_size: int = 256
    num_kv_pairs: int = 8
    power_a: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_kv_pairs < 1 or self.num_kv_pairs > self.vocab_size // 2 - 1:
            raise ValueError(f"data.num_kv_pairs must be in [1, vocab_size/2 - 1 = {self.vocab_size // 2 - 1}], "
                             f"got {self.num_kv_pairs}")
        shortest = min(self.min_length, *self.test_lengths)
        if shortest < 4 * self.num_kv_pairs:
            raise ValueError(f"MQAR lengths must be at least 4 x num_kv_pairs = {4 * self.num_kv_pairs} (pairs, then "
                             f"queries with room between them), got {shortest}")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"data.power_a must be in (0, 1], got {self.power_a}")


def _task_tokens(config: TaskConfig) -> list[str]:
    """The task's own tokens, by id (MQAR's ids are Zoology's: 0 the filler, then the keys, then the values)."""
    if config.task == "parity":
        return ["0", "1", "="]
    if config.task == "modular_arithmetic":
        return [str(n) for n in range(config.modulus)] + ["+", "-", "*", "="]
    if config.task == "cycle_navigation":
        return [str(n) for n in range(config.cycle)] + ["L", "S", "R", "="]
    if config.task == "majority":
        return [str(n) for n in range(config.num_symbols)] + ["="]
    half = config.vocab_size // 2
    return ["_"] + [f"k{n}" for n in range(1, half)] + [f"v{n}" for n in range(half, config.vocab_size)]


def vocabulary(config: TaskConfig) -> list[str]:
    """Token strings by id: the task's tokens, then `EOS_TOKEN` (every checkpoint's tokenizer has one; the tasks
    never use it)."""
    return _task_tokens(config) + [EOS_TOKEN]


def _parity(config: ParityConfig, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    bits = rng.integers(0, 2, length)
    inputs = np.append(bits, 2)  # "="
    labels = np.full(length + 1, IGNORE_INDEX)
    labels[-1] = bits.sum() % 2
    return inputs, labels


def _modular_arithmetic(config: ModularArithmeticConfig, rng: np.random.Generator,
                        length: int) -> tuple[np.ndarray, np.ndarray]:
    m = config.modulus
    operands = rng.integers(0, m, length)
    operators = rng.integers(0, 3, length - 1)  # +, -, *
    value = int(operands[0])
    for operator, operand in zip(operators, operands[1:]):
        value = (value + operand, value - operand, value * operand)[operator] % m
    inputs = np.empty(2 * length, dtype=np.int64)
    inputs[0:-1:2] = operands
    inputs[1:-1:2] = m + operators
    inputs[-1] = m + 3  # "="
    labels = np.full(2 * length, IGNORE_INDEX)
    labels[-1] = value
    return inputs, labels


def _cycle_navigation(config: CycleNavigationConfig, rng: np.random.Generator,
                      length: int) -> tuple[np.ndarray, np.ndarray]:
    moves = rng.integers(0, 3, length)  # L, S, R: steps -1, 0, +1
    inputs = np.append(config.cycle + moves, config.cycle + 3)  # then "="
    labels = np.full(length + 1, IGNORE_INDEX)
    labels[-1] = (moves - 1).sum() % config.cycle
    return inputs, labels


def _majority(config: MajorityConfig, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    symbols = rng.integers(0, config.num_symbols, length)
    inputs = np.append(symbols, config.num_symbols)  # then "="
    labels = np.full(length + 1, IGNORE_INDEX)
    labels[-1] = np.bincount(symbols, minlength=config.num_symbols).argmax()  # the first maximum: ties go low
    return inputs, labels


def _mqar(config: MQARConfig, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    pairs, half = config.num_kv_pairs, config.vocab_size // 2
    keys = rng.choice(np.arange(1, half), pairs, replace=False)
    values = rng.integers(half, config.vocab_size, pairs)
    inputs = np.zeros(length, dtype=np.int64)  # 0: the filler
    inputs[0:2 * pairs:2], inputs[1:2 * pairs:2] = keys, values
    # queries sit at every other slot after the pairs (so two never touch), slots near the pairs more likely
    gaps = np.arange(1, (length - 2 * pairs) // 2 + 1)
    weights = config.power_a * gaps ** (config.power_a - 1)
    slots = rng.choice(gaps, pairs, replace=False, p=weights / weights.sum())
    positions = 2 * pairs + 2 * (slots - 1)
    order = rng.permutation(pairs)
    inputs[positions] = keys[order]
    labels = np.full(length, IGNORE_INDEX)
    labels[positions] = values[order]
    return inputs, labels


# name -> (schema, generator (config, rng, length) -> (inputs (L,), labels (L,)))
TASKS: dict[str, tuple[type, Callable]] = {
    "parity": (ParityConfig, _parity),
    "modular_arithmetic": (ModularArithmeticConfig, _modular_arithmetic),
    "cycle_navigation": (CycleNavigationConfig, _cycle_navigation),
    "majority": (MajorityConfig, _majority),
    "mqar": (MQARConfig, _mqar),
}


def task_config(fields: dict) -> TaskConfig:
    """The task schema for a saved config (e.g. the `data` of a run's train_config.yaml)."""
    return TASKS[fields["task"]][0](**fields)


def is_task(data_fields: dict) -> bool:
    """Whether a saved `data` config is a synthetic task's."""
    return data_fields.get("task") in TASKS


def example(config: TaskConfig, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    """One example of `length`: (inputs, labels), int64 arrays of equal length (see the module docstring)."""
    inputs, labels = TASKS[config.task][1](config, rng, length)
    return inputs.astype(np.int64), labels.astype(np.int64)


def held_out(inputs: np.ndarray) -> bool:
    """Whether a sequence belongs to the held-out half (validation and test) rather than to training: a hash of
    its tokens, so a sequence drawn by both a training and a test generator lands on one side only."""
    digest = hashlib.blake2b(inputs.astype(np.int64).tobytes(), digest_size=8).digest()
    return digest[0] < 128


def make_batch(config: TaskConfig, seed: int, split: str, index: int,
               length: int | None = None) -> dict[str, np.ndarray]:
    """Batch `index` of `split`: `batch_size` examples of one length, (B, L) int64 `input_ids` and `labels`.

    Args:
        config: the task.
        seed: the run's seed.
        split: "train" (lengths in [min_length, max_length], training side of the hash), "val" (same lengths,
            held-out side) or "test" (held-out side, at `length`).
        index: the batch's number in its split.
        length: the test length (required for "test", ignored otherwise).

    Raises:
        ValueError: the length has too few distinct sequences on the split's side (e.g. parity of 1 bit).
    """
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    want_held_out = split != "train"
    lengths = [length] if split == "test" else range(config.min_length, config.max_length + 1)
    for _ in range(MAX_TRIES):
        chosen = int(rng.choice(lengths))
        rows = []
        for _ in range(MAX_TRIES * config.batch_size):
            inputs, labels = example(config, rng, chosen)
            if held_out(inputs) == want_held_out:
                rows.append((inputs, labels))
                if len(rows) == config.batch_size:
                    return {"input_ids": np.stack([row[0] for row in rows]),
                            "labels": np.stack([row[1] for row in rows])}
    raise ValueError(f"{config.task}: too few distinct sequences of length {chosen} for the {split} split: use "
                     "longer lengths (data.min_length, data.test_lengths)")
