"""Figures logged with the runs: learning curves, a search's objective by hyperparameter."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


def learning_curve(history: dict[str, list[float]], title: str, best_epoch: int):
    """Loss and accuracy per epoch, training and validation, the restored epoch marked."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(f"{prefix}{metric}")
            if values:
                axis.plot(range(1, len(values) + 1), values, marker=".", label=label)
        restored = "restored epoch" if best_epoch >= 0 else "kept its starting weights (0)"
        axis.axvline(best_epoch + 1, color="grey", linestyle=":", label=restored)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def close(figure) -> None:
    plt.close(figure)


MARKERS = "osv^D<>"
GREYS = ("0.0", "0.35", "0.6")


def objective_by_rate(axis, points: list[tuple[float, int, float]], objective: str) -> None:
    """A search's objective by learning rate, one series (marker, grey) per unfreeze depth: the
    one drawing of this idea, in the search run's figure and in the report's.
    `points`: (learning_rate, unfreeze_blocks, score) of each completed trial."""
    depths = sorted({depth for _, depth, _ in points})
    for index, depth in enumerate(depths):
        group = [(rate, score) for rate, d, score in points if d == depth]
        axis.scatter(
            [rate for rate, _ in group],
            [score for _, score in group],
            marker=MARKERS[index % len(MARKERS)],
            color=GREYS[index % len(GREYS)],
            label=f"unfreeze_blocks={depth}",
        )
    axis.set_xscale("log")
    axis.set_xlabel("learning_rate")
    axis.set_ylabel(objective)
    if depths:
        axis.legend(fontsize="x-small")


def search_objective(trials, objective: str):
    """A search's objective by learning rate (one series per unfreeze depth) and by depth."""
    done = [t for t in trials if t.score is not None]
    figure, (by_rate, by_depth) = plt.subplots(1, 2, figsize=(9, 3.5))
    points = [(t.values["learning_rate"], t.values["unfreeze_blocks"], t.score) for t in done]
    objective_by_rate(by_rate, points, objective)
    depths = [t.values["unfreeze_blocks"] for t in done]
    by_depth.scatter(
        depths,
        [t.score for t in done],
        c=[t.values["learning_rate"] for t in done],
        norm=matplotlib.colors.LogNorm() if done else None,
        cmap="viridis",
    )
    by_depth.set_xlabel("unfreeze_blocks")
    by_depth.set_ylabel(objective)
    figure.suptitle(f"{objective} of {len(done)} completed trial(s) of {len(trials)}")
    figure.tight_layout()
    return figure
