"""The evaluation figure: small differences look small, and tick labels never collide."""

import itertools
import math

import matplotlib.pyplot as plt

from xlstm_lm.evaluation.perplexity import ContextResult, PositionBucket
from xlstm_lm.evaluation.plot import results_figure

CONTEXTS = (250, 256, 260, 1024, 4096, 16384)  # the first three are too close for three labels


def rows(perplexities: list[float], loss: float) -> list[ContextResult]:
    buckets = [PositionBucket(2**k, 2 ** (k + 1) - 1, loss + 0.001 * k, 8) for k in range(14)]
    return [ContextResult(length, loss=math.log(ppl), perplexity=ppl, loss_by_position=buckets)
            for length, ppl in zip(CONTEXTS, perplexities)]


def drawn(axis) -> list:
    """The tick labels matplotlib draws on an axis: shown, not empty, at a tick inside the view."""
    low, high = sorted(axis.get_view_interval())
    return [tick.label1 for tick in axis.get_major_ticks() + axis.get_minor_ticks()
            if low <= tick.get_loc() <= high and tick.label1.get_visible() and tick.label1.get_text()]


def test_a_quarter_percent_looks_small_and_no_tick_labels_overlap():
    figure = results_figure([("a", rows([3094, 3095, 3096, 3098, 3100, 3101], 8.04)),
                             ("b", rows([3096, 3097, 3098, 3099, 3101, 3102], 8.042))])
    try:
        by_context, by_position = figure.axes
        low, high = by_context.get_ylim()
        assert by_context.get_yscale() == "log" and high / low >= 2
        assert math.log(3102 / 3094) / math.log(high / low) < 0.005  # 0.26% of perplexity: under 0.5% of the height
        low, high = by_position.get_ylim()
        assert high - low >= math.log(2) and (8.042 + 0.013 - 8.04) / (high - low) < 0.025
        renderer = figure.canvas.get_renderer()
        labels = [label for axes in figure.axes for axis in (axes.xaxis, axes.yaxis) for label in drawn(axis)]
        boxes = [label.get_window_extent(renderer) for label in labels]
        assert not [(a.get_text(), b.get_text()) for (a, box_a), (b, box_b)
                    in itertools.combinations(zip(labels, boxes), 2) if box_a.overlaps(box_b)]
        assert [label.get_text() for label in drawn(by_context.xaxis)] == ["250", "1024", "4096", "16384"]
        assert [label.get_text() for label in drawn(by_context.yaxis)] == ["2500", "3000", "3500", "4000", "4500"]
    finally:
        plt.close(figure)
