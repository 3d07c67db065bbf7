"""The evaluation figure: perplexity against context length and loss by position, one line per checkpoint.

Written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend is chosen first)

from xlstm_lm.evaluation.perplexity import ContextResult  # noqa: E402


def plot_results(results: Sequence[tuple[str, Sequence[ContextResult]]], path: str | Path) -> Path:
    """Draw perplexity vs context length (left) and, at each checkpoint's longest scored context, loss vs
    position in the window (right); skipped contexts are left out.

    Args:
        results: (label, results) of each checkpoint.
        path: the PNG to write.

    Returns:
        The path written.
    """
    figure, (by_context, by_position) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, rows in results:
        scored = [row for row in rows if row.skipped is None]
        if not scored:
            continue
        line, = by_context.plot([row.context_length for row in scored], [row.perplexity for row in scored],
                                marker="o", label=label)
        longest = max(scored, key=lambda row: row.context_length)
        buckets = longest.loss_by_position
        by_position.plot([bucket.first for bucket in buckets], [bucket.loss for bucket in buckets], marker=".",
                         color=line.get_color(), label=f"{label} (context {longest.context_length})")
    by_context.set(xscale="log", xlabel="context length (tokens)", ylabel="perplexity",
                   title="Perplexity vs context length")
    by_position.set(xscale="log", xlabel="position in the window (bucket start, tokens)",
                    ylabel="mean loss (nats)", title="Loss by position")
    return save_figure(figure, path)


def save_figure(figure: plt.Figure, path: str | Path) -> Path:
    """Grid and legend (where lines are labelled) on every axes, then write the PNG and free the figure."""
    for axes in figure.axes:
        axes.grid(True, which="both", alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
