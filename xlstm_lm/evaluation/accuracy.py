"""Answer accuracy of a model trained on a synthetic task, against the test length (`xlstm-eval` on such a run).

At each length, `batches` test batches (held-out sequences, `xlstm_lm.data.synthetic.make_batch`) are scored
from a fresh state with greedy answers:

    token_accuracy     correct answer tokens / answer tokens
    sequence_accuracy  sequences whose answers are all correct / sequences

Written as a table and a figure (accuracy against test length, one line per checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend is chosen first)
import torch  # noqa: E402

from xlstm_lm.data.synthetic import TaskConfig, make_batch  # noqa: E402
from xlstm_lm.models import LanguageModel  # noqa: E402
from xlstm_lm.evaluation.plot import finish_figure, save_figure  # noqa: E402
from xlstm_lm.models.head_loss import answer_hits  # noqa: E402


@dataclass
class TaskEvalConfig:
    """How a synthetic-task checkpoint is scored.

    Attributes:
        lengths: test lengths; None means the task's own `test_lengths` from training.
        batches: test batches per length (of the task's batch_size sequences).
    """

    lengths: Optional[list[int]] = None
    batches: int = 4

    def __post_init__(self) -> None:
        if self.lengths is not None and (not self.lengths or min(self.lengths) < 1):
            raise ValueError(f"task.lengths must be positive lengths or null, got {self.lengths}")
        if self.batches < 1:
            raise ValueError(f"task.batches must be positive, got {self.batches}")


@dataclass
class AccuracyRow:
    """One test length's result."""

    length: int
    token_accuracy: float
    sequence_accuracy: float
    answers: int
    sequences: int
    tokens_per_second: float


@torch.no_grad()
def score_task(model: LanguageModel, task: TaskConfig, seed: int, lengths: Sequence[int], batches: int,
               device: torch.device | str = "cpu") -> list[AccuracyRow]:
    """Answer accuracy of `model` on `batches` test batches of `task` at each length (seeded by `seed`)."""
    rows = []
    for length in lengths:
        counts = torch.zeros(3, dtype=torch.int64)  # correct tokens, answer tokens, correct sequences
        tokens, start = 0, time.perf_counter()
        for index in range(batches):
            batch = make_batch(task, seed, "test", index, length)
            input_ids = torch.from_numpy(batch["input_ids"]).to(device)
            logits = model(input_ids)
            counts += torch.stack(answer_hits(logits, torch.from_numpy(batch["labels"]).to(device))).cpu()
            tokens += input_ids.numel()
        sequences = batches * task.batch_size
        rows.append(AccuracyRow(length, counts[0].item() / counts[1].item(), counts[2].item() / sequences,
                                counts[1].item(), sequences, tokens / (time.perf_counter() - start)))
    return rows


def format_accuracy_table(results: Sequence[tuple[str, Sequence[AccuracyRow]]]) -> str:
    """One line per (checkpoint, test length)."""
    lines = [("checkpoint", "length", "token acc", "seq acc", "answers", "sequences", "tok/s")]
    for label, rows in results:
        lines += [(label, str(row.length), f"{row.token_accuracy:.4f}", f"{row.sequence_accuracy:.4f}",
                   str(row.answers), str(row.sequences), f"{row.tokens_per_second:.0f}") for row in rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def plot_accuracy(results: Sequence[tuple[str, Sequence[AccuracyRow]]], path: str | Path,
                  training_lengths: Optional[tuple[int, int]] = None) -> Path:
    """Sequence accuracy against test length, one line per checkpoint, the training lengths shaded."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, rows in results:
        axes.plot([row.length for row in rows], [row.sequence_accuracy for row in rows], marker="o", label=label)
    if training_lengths is not None:
        axes.axvspan(*training_lengths, color="grey", alpha=0.15, label="training lengths")
    axes.set(xscale="log", ylim=(-0.02, 1.02), xlabel="test length", ylabel="sequence accuracy",
             title="Accuracy vs test length")
    return save_figure(finish_figure(figure), path)
