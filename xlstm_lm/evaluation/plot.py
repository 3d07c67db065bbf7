"""The evaluation figure: perplexity against context length and loss by position, one line per checkpoint.

Written with matplotlib's Agg backend (no display needed). Small differences look small: the perplexity axis
(logarithmic) spans at least a factor of MIN_PERPLEXITY_RATIO and the loss axis at least ln of it in nats, so
perplexities of 3094 and 3102 lie a fraction of a percent of the height apart, not across the whole panel.
Tick labels never collide: a label that would overlap one already drawn on its axis is left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend is chosen first)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter,  # noqa: E402
                               ScalarFormatter)

from xlstm_lm.evaluation.perplexity import ContextResult  # noqa: E402

MIN_PERPLEXITY_RATIO = 2.0  # the perplexity axis spans at least this factor; the loss axis ln(2) nats
LABEL_GAP_PX = 2.0  # tick labels closer than this count as colliding


def plot_results(results: Sequence[tuple[str, Sequence[ContextResult]]], path: str | Path) -> Path:
    """Draw `results_figure` into a PNG.

    Args:
        results: (label, results) of each checkpoint.
        path: the PNG to write.

    Returns:
        The path written.
    """
    return save_figure(results_figure(results), path)


def results_figure(results: Sequence[tuple[str, Sequence[ContextResult]]]) -> Figure:
    """Perplexity vs context length (left) and, at each checkpoint's longest scored context, loss vs position in
    the window (right); skipped contexts are left out. The caller closes the figure.
    """
    figure, (by_context, by_position) = plt.subplots(1, 2, figsize=(12, 4.5))
    contexts, perplexities, losses = set(), [], []
    for label, rows in results:
        scored = [row for row in rows if row.skipped is None]
        if not scored:
            continue
        line, = by_context.plot([row.context_length for row in scored], [row.perplexity for row in scored],
                                marker="o", label=label)
        contexts.update(row.context_length for row in scored)
        perplexities += [row.perplexity for row in scored if math.isfinite(row.perplexity)]  # a NaN is not drawn
        longest = max(scored, key=lambda row: row.context_length)
        buckets = longest.loss_by_position
        by_position.plot([bucket.first for bucket in buckets], [bucket.loss for bucket in buckets], marker=".",
                         color=line.get_color(), label=f"{label} (context {longest.context_length})")
        losses += [bucket.loss for bucket in buckets if math.isfinite(bucket.loss)]
    by_context.set(xscale="log", xlabel="context length (tokens)", ylabel="perplexity",
                   title="Perplexity vs context length")
    by_position.set(xscale="log", xlabel="position in the window (bucket start, tokens)",
                    ylabel="mean loss (nats)", title="Loss by position")
    if perplexities:
        perplexity_axis(by_context, min(perplexities), max(perplexities))
        by_context.xaxis.set_major_locator(FixedLocator(sorted(contexts)))
        by_context.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        by_context.xaxis.set_minor_formatter(NullFormatter())
    if losses:
        low, high = _at_least(min(losses), max(losses), math.log(MIN_PERPLEXITY_RATIO))
        by_position.set_ylim(low, high)
        by_position.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    return finish_figure(figure)


def finish_figure(figure: Figure) -> Figure:
    """Grid and legend (where lines are labelled) on every axes, the layout, and no colliding tick labels."""
    for axes in figure.axes:
        axes.grid(True, which="both", alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.tight_layout()
    _drop_colliding_labels(figure)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a finished figure as a PNG and free it."""
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _at_least(low: float, high: float, span: float) -> tuple[float, float]:
    """Limits around [low, high] that are at least `span` apart (widened evenly), with a 5% margin."""
    margin = max(span - (high - low), 0.0) / 2 + 0.05 * max(high - low, span)
    return low - margin, high + margin


def perplexity_axis(axes: Axes, low: float, high: float) -> None:
    """Log limits spanning at least MIN_PERPLEXITY_RATIO; round-number ticks labelled in plain digits."""
    log_low, log_high = _at_least(math.log(low), math.log(high), math.log(MIN_PERPLEXITY_RATIO))
    axes.set(yscale="log", ylabel="perplexity (log scale)")
    axes.set_ylim(math.exp(log_low), math.exp(log_high))
    if log_high - log_low > math.log(10):
        axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:  # under a decade: round values, as a linear axis would pick them
        ticks = MaxNLocator(nbins=6).tick_values(math.exp(log_low), math.exp(log_high))
        axes.yaxis.set_major_locator(FixedLocator([tick for tick in ticks if tick > 0]))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(NullFormatter())


def _drop_colliding_labels(figure: Figure) -> None:
    """Hide every tick label that overlaps a label kept before it on the same axis (in tick order)."""
    renderer = figure.canvas.get_renderer()
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            low, high = sorted(axis.get_view_interval())
            kept = []
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                label = tick.label1
                if not low <= tick.get_loc() <= high or not label.get_visible() or not label.get_text():
                    continue  # not drawn
                box = label.get_window_extent(renderer).padded(LABEL_GAP_PX / 2)
                if any(box.overlaps(other) for other in kept):
                    label.set_visible(False)
                else:
                    kept.append(box)
