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


def search_objective(trials, objective: str):
    """A search's objective by learning rate (one series per unfreeze depth) and by depth."""
    done = [t for t in trials if t.score is not None]
    figure, (by_rate, by_depth) = plt.subplots(1, 2, figsize=(9, 3.5))
    for depth in sorted({t.values["unfreeze_blocks"] for t in done}):
        group = [t for t in done if t.values["unfreeze_blocks"] == depth]
        rates = [t.values["learning_rate"] for t in group]
        by_rate.scatter(rates, [t.score for t in group], label=f"unfreeze_blocks={depth}")
    by_rate.set_xscale("log")
    by_rate.set_xlabel("learning_rate")
    by_rate.set_ylabel(objective)
    if done:
        by_rate.legend(fontsize="small")
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
