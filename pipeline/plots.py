"""Figures logged with the runs: learning curves."""

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
        axis.axvline(best_epoch + 1, color="grey", linestyle=":", label="restored epoch")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def close(figure) -> None:
    plt.close(figure)
