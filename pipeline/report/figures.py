"""The report's plots, as PNG bytes: readable in grey (markers and line styles, not only colour),
no network, and byte-identical for the same numbers (no timestamp in the PNG metadata)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.config import STAGES

STYLES = {"scratch": ("o", "-"), "feature_extraction": ("s", "--"), "fine_tune": ("^", ":")}
GREYS = ("0.0", "0.35", "0.6")


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def paired_lines(variant: dict) -> bytes:
    """Test accuracy of every seed across the stages it ran, one line a seed."""
    stages = [s for s in STAGES if s in variant["stages"]]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for index, run in enumerate(variant["runs"]):
        values = [run["test_accuracy"].get(stage, float("nan")) for stage in stages]
        marker = "osv^D<>"[index % 7]
        axis.plot(
            stages, values, marker=marker, color="0.3", alpha=0.8, label=f"seed {run['seed']}"
        )
    means = [variant["stages"][s]["test_accuracy"]["mean"] for s in stages]
    axis.plot(stages, means, color="black", linewidth=3, label="mean")
    axis.set_ylabel("test accuracy")
    axis.set_title(variant["label"], fontsize="small")
    axis.legend(fontsize="x-small", ncols=2)
    figure.tight_layout()
    return png(figure)


def forest(variants: list[dict]) -> bytes:
    """Every paired gain with its t and BCa intervals; zero marked."""
    rows = [(f"variant {i}", g) for i, v in enumerate(variants, start=1) for g in v["gains"]]
    figure, axis = plt.subplots(figsize=(7, 0.45 * max(len(rows), 1) + 1.2))
    for y, (_, gain) in enumerate(reversed(rows)):
        if gain["t_low"] is not None:
            axis.plot([gain["t_low"], gain["t_high"]], [y, y], color="black", linewidth=2)
        if gain["bca_low"] is not None:
            axis.plot([gain["bca_low"], gain["bca_high"]], [y - 0.15] * 2, color="0.5", ls="--")
        axis.plot([gain["mean"]], [y], marker="D", color="black")
    labels = [f"{name}: {g['first']} - {g['second']}" for name, g in reversed(rows)]
    axis.set_yticks(range(len(rows)), labels, fontsize="x-small")
    axis.axvline(0, color="0.5", linewidth=1)
    axis.set_xlabel("gain in test accuracy (mean; solid: t 95 % CI, dashed: BCa 95 % CI)")
    figure.tight_layout()
    return png(figure)


def learning_curves(variant: dict) -> bytes:
    """Mean validation accuracy per epoch and stage, with a band of +-1 std across seeds."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for index, (stage, curve) in enumerate(sorted(variant["curves"].items(), key=stage_order)):
        epochs = [point["epoch"] + 1 for point in curve]
        mean = [point["mean"] for point in curve]
        low = [point["mean"] - point["std"] for point in curve]
        high = [point["mean"] + point["std"] for point in curve]
        marker, line = STYLES.get(stage, ("x", "-"))
        colour = GREYS[index % len(GREYS)]
        axis.plot(
            epochs, mean, linestyle=line, marker=marker, markevery=5, color=colour, label=stage
        )
        axis.fill_between(epochs, low, high, color=colour, alpha=0.2)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    axis.set_title(variant["label"], fontsize="small")
    axis.legend(fontsize="x-small")
    figure.tight_layout()
    return png(figure)


def stage_order(item) -> int:
    return STAGES.index(item[0]) if item[0] in STAGES else len(STAGES)


def search_plot(search: dict) -> bytes:
    """The objective by learning rate and depth; the expected best by number of trials."""
    figure, (by_rate, expected) = plt.subplots(1, 2, figsize=(9, 3.5))
    depths = sorted({t["unfreeze_blocks"] for t in search["trials"]})
    for index, depth in enumerate(depths):
        group = [t for t in search["trials"] if t["unfreeze_blocks"] == depth]
        by_rate.scatter(
            [t["learning_rate"] for t in group],
            [t["score"] for t in group],
            marker="osv^D<>"[index % 7],
            color=GREYS[index % len(GREYS)],
            label=f"unfreeze_blocks={depth}",
        )
    by_rate.set_xscale("log")
    by_rate.set_xlabel("learning_rate")
    by_rate.set_ylabel(search["objective"])
    if depths:
        by_rate.legend(fontsize="x-small")
    curve = search["expected_best"]
    n = [p["trials"] for p in curve]
    mean = [p["expected_best"] for p in curve]
    sd = [p["variance"] ** 0.5 for p in curve]
    expected.plot(n, mean, marker="o", color="black")
    expected.fill_between(
        n,
        [m - s for m, s in zip(mean, sd, strict=True)],
        [m + s for m, s in zip(mean, sd, strict=True)],
        color="0.7",
        alpha=0.5,
    )
    expected.set_xlabel("number of trials")
    expected.set_ylabel(f"expected {search['objective']}")
    figure.suptitle(f"search of seed {search['seed']} ({search['tuner']})", fontsize="small")
    figure.tight_layout()
    return png(figure)
