"""The Keras callbacks of a trial: a diverged trial fails, the best epoch's weights are kept."""

from __future__ import annotations

import math

import keras
import keras_tuner

from pipeline.model import save_weights_atomically


class FailOnNaN(keras.callbacks.Callback):
    """A diverged trial fails (keras-tuner would score it NaN and retry it as INVALID)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name in ("loss", "val_loss"):
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(float(value)):
                raise keras_tuner.errors.FailedTrialError(
                    f"{name} is {float(value)} at epoch {epoch + 1}: the trial diverged"
                )


class BestWeights(keras.callbacks.Callback):
    """The whole model's weights at the objective's best epoch, across executions, saved once."""

    def __init__(self, objective: keras_tuner.Objective):
        super().__init__()
        self.objective = objective
        self.best: float | None = None
        self.weights: list | None = None
        self.whole: keras.Model | None = None  # the trial's full model (shares the fitted layers)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.objective.name)
        if value is None:
            return
        if self.best is None or self.objective.better_than(value, self.best):
            self.best, self.weights = float(value), self.whole.get_weights()

    def save(self, path: str) -> None:
        if self.weights is not None:
            self.whole.set_weights(self.weights)
            save_weights_atomically(self.whole, path)


def best_of(history: keras.callbacks.History, objective: keras_tuner.Objective) -> float:
    values = history.history[objective.name]
    return float(max(values) if objective.direction == "max" else min(values))
