"""The report's plots, as PNG bytes: readable in grey (markers and line styles, not only colour),
no network, and byte-identical for the same numbers (no timestamp in the PNG metadata).

Drawing is most of a report's time (about 0.25 s a figure with `tight_layout`), so figures have
fixed margins, the forest plot draws its rows as one collection each, and per-variant figures are
drawn only for the variants render.py asks for.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.config import STAGES
from pipeline.plots import GREYS, MARKERS, objective_by_rate
from pipeline.report.records import SearchRecord, VariantRecord

STYLES = {"scratch": ("o", "-"), "feature_extraction": ("s", "--"), "fine_tune": ("^", ":")}
ROWS_PER_PAGE = 100  # forest rows a PNG: ~19 inches at 100, still one scroll of a screen or two
ROW_INCHES = 0.18


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def paired_lines(variant: VariantRecord) -> bytes:
    """Test accuracy of every seed across the stages it ran, one line a seed."""
    stages = [s for s in STAGES if s in variant.stages]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.9)
    for index, run in enumerate(variant.runs):
        values = [run.test_accuracy.get(stage, float("nan")) for stage in stages]
        marker = MARKERS[index % len(MARKERS)]
        axis.plot(stages, values, marker=marker, color="0.3", alpha=0.8, label=f"seed {run.seed}")
    means = [variant.stages[s]["test_accuracy"].mean for s in stages]
    axis.plot(stages, means, color="black", linewidth=3, label="mean")
    axis.set_ylabel("test accuracy")
    axis.set_title(variant.label, fontsize="small")
    axis.legend(fontsize="x-small", ncols=2)
    return png(figure)


def forest_order(variants: list[VariantRecord], comparison: tuple[str, str]) -> list[int]:
    """Indexes of the variants by their gain in `comparison`, largest first (absent last)."""

    def key(index: int) -> tuple[bool, float]:
        gain = variants[index].gain(*comparison)
        return (gain is None, -(gain.mean if gain is not None else 0.0))

    return sorted(range(len(variants)), key=key)


def forest(
    variants: list[VariantRecord], rows: list[int], comparisons: list[tuple[str, str]]
) -> bytes:
    """One row per variant (`rows`: their indexes, top first), a panel per comparison: the mean
    gain, its t 95 % interval (solid) and BCa 95 % interval (dashed, below); zero marked."""
    height = ROW_INCHES * len(rows) + 1.3
    # not sharey: shared axes each build a tick per row, which is most of the drawing time
    figure, axes = plt.subplots(1, len(comparisons), figsize=(10, height), squeeze=False)
    bottom, top = 0.75 / height, 1 - 0.45 / height
    figure.subplots_adjust(left=0.3, right=0.98, bottom=bottom, top=top, wspace=0.08)
    ys = list(range(len(rows) - 1, -1, -1))
    for axis, comparison in zip(axes[0], comparisons, strict=True):
        gains = [variants[i].gain(*comparison) for i in rows]
        drawn = [(y, g) for y, g in zip(ys, gains, strict=True) if g is not None]
        t_rows = [(y, g) for y, g in drawn if g.t_low is not None]
        bca_rows = [(y, g) for y, g in drawn if g.bca_low is not None]
        axis.hlines([y for y, _ in t_rows], [g.t_low for _, g in t_rows],
                    [g.t_high for _, g in t_rows], color="black", linewidth=2)  # fmt: skip
        axis.hlines([y - 0.25 for y, _ in bca_rows], [g.bca_low for _, g in bca_rows],
                    [g.bca_high for _, g in bca_rows], color="0.5", linestyles="--")  # fmt: skip
        axis.plot([g.mean for _, g in drawn], [y for y, _ in drawn], "D", color="black", ms=4)
        axis.axvline(0, color="0.5", linewidth=1)
        axis.set_title(f"{comparison[0]} - {comparison[1]}", fontsize="small")
        axis.tick_params(labelsize="x-small")
        axis.set_ylim(-0.8, len(rows) - 0.4)
        axis.set_yticks([])
        axis.grid(axis="x", color="0.9", linewidth=0.8)
    labels = [f"{i + 1}. {shorten(row_label(variants[i]))}" for i in rows]
    axes[0][0].set_yticks(ys, labels, fontsize="x-small")
    figure.supxlabel(
        "gain in test accuracy (mean; solid: t 95 % CI, dashed: BCa 95 % CI)", fontsize="small"
    )
    return png(figure)


def row_label(variant: VariantRecord) -> str:
    """What tells a variant apart (its differing settings), else its label: short labels keep
    the forest readable and cheap (drawing the text is most of its time)."""
    settings = ", ".join(f"{key}={value}" for key, value in variant.settings.items())
    return settings or variant.label


def shorten(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def learning_curves(variant: VariantRecord) -> bytes:
    """Mean validation accuracy per epoch and stage, with a band of +-1 std across seeds."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.9)
    ordered = sorted(variant.curves.items(), key=stage_order)
    for index, (stage, curve) in enumerate(ordered):
        epochs = [point.epoch + 1 for point in curve]
        mean = [point.mean for point in curve]
        low = [point.mean - point.std for point in curve]
        high = [point.mean + point.std for point in curve]
        marker, line = STYLES.get(stage, ("x", "-"))
        colour = GREYS[index % len(GREYS)]
        every = max(1, len(epochs) // 10)
        axis.plot(
            epochs, mean, linestyle=line, marker=marker, markevery=every, color=colour, label=stage
        )
        axis.fill_between(epochs, low, high, color=colour, alpha=0.2)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    axis.set_title(variant.label, fontsize="small")
    axis.legend(fontsize="x-small")
    return png(figure)


def stage_order(item) -> int:
    return STAGES.index(item[0]) if item[0] in STAGES else len(STAGES)


def search_plot(search: SearchRecord) -> bytes:
    """The objective by learning rate and depth; the expected best by number of trials."""
    figure, (by_rate, expected) = plt.subplots(1, 2, figsize=(9, 3.5))
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.88, wspace=0.28)
    points = [(t.learning_rate, t.unfreeze_blocks, t.score) for t in search.trials]
    objective_by_rate(by_rate, points, search.objective)
    n = [p.trials for p in search.expected_best]
    mean = [p.expected_best for p in search.expected_best]
    sd = [p.variance**0.5 for p in search.expected_best]
    expected.plot(n, mean, marker="o", color="black")
    expected.fill_between(
        n,
        [m - s for m, s in zip(mean, sd, strict=True)],
        [m + s for m, s in zip(mean, sd, strict=True)],
        color="0.7",
        alpha=0.5,
    )
    expected.set_xlabel("number of trials")
    expected.set_ylabel(f"expected {search.objective}")
    figure.suptitle(f"search of seed {search.seed} ({search.tuner})", fontsize="small")
    return png(figure)
