"""Classifier heads, freezing by blocks, compiling and fitting.

The transfer recipe follows the Keras transfer-learning guide: the backbone is called with
`training=False` so BatchNormalization keeps its moving statistics (inference mode) even when its
blocks are unfrozen, and the model is recompiled after every change of `trainable`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline.backbones import named_blocks
from pipeline.interrupts import raise_if_interrupted
from pipeline.tensorflow_internals import build_training_variables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    """What one `fit` produced, in plain Python values."""

    history: dict[str, list[float]]
    best_epoch: int  # 0-based epoch whose weights were restored; -1: the weights it started from
    epochs: int  # epochs actually run
    start: dict[str, float] | None = None  # validation metrics of the weights it started from

    @property
    def best_val_accuracy(self) -> float:
        return self.best("val_accuracy")

    def best(self, name: str) -> float:
        """`name` (a validation metric) at the restored weights."""
        if self.best_epoch < 0:
            return float(self.start[name])
        return float(self.history[name][self.best_epoch])


def build_head(feature_dim: int, num_classes: int, dropout: float) -> keras.Model:
    """A new classifier on top of a backbone's feature vector."""
    features = keras.Input(shape=(feature_dim,), name="features")
    x = keras.layers.Dropout(dropout, name="head_dropout")(features) if dropout else features
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head_classifier")(x)
    return keras.Model(features, outputs, name="head")


def stack(backbone: keras.Model, head: keras.Model, *, inference_backbone: bool) -> keras.Model:
    """Backbone then head; `inference_backbone` pins BatchNorm to its moving statistics."""
    inputs = keras.Input(shape=backbone.input_shape[1:], name="image")
    features = backbone(inputs, training=False) if inference_backbone else backbone(inputs)
    return keras.Model(inputs, head(features), name=f"{backbone.name}_classifier")


def save_weights_atomically(model: keras.Model, path: str | os.PathLike) -> None:
    """Write `<name>.weights.h5` under a temporary name, then rename: an interrupted write never
    leaves a file that a resume would load."""
    target = Path(path)
    partial = target.with_name(f".partial-{os.getpid()}-{target.name}")
    model.save_weights(partial)
    os.replace(partial, target)


def backbone_of(classifier: keras.Model) -> keras.Model:
    """The backbone inside a classifier that `stack` built: its nested model other than the head."""
    return next(
        layer
        for layer in classifier.layers
        if isinstance(layer, keras.Model) and layer.name != "head"
    )


def unfreeze_top(
    backbone: keras.Model, unfreeze_blocks: int | None, unfreeze_layers: int | None = None
) -> list[str]:
    """Make the top blocks (or raw layers) trainable, all else frozen; BatchNorm stays frozen.

    Returns the names of the unfrozen blocks (or layers, when counting raw layers).
    """
    backbone.trainable = True
    blocks = named_blocks(backbone)
    if unfreeze_layers is not None:
        chosen = [layer for layer in backbone.layers if layer.weights][-unfreeze_layers:]
        names = [layer.name for layer in chosen]
    else:
        names = (
            list(blocks)
            if unfreeze_blocks is None
            else list(blocks)[len(blocks) - unfreeze_blocks :]
        )
        chosen = [layer for name in names for layer in blocks[name]]
    chosen_ids = {id(layer) for layer in chosen}
    for layer in backbone.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) in chosen_ids and not is_bn
    return names


def freeze(backbone: keras.Model) -> None:
    """Freeze every weight of the backbone."""
    backbone.trainable = False


def compile_classifier(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def trainable_param_count(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


class EarlyStoppingFromStart(keras.callbacks.EarlyStopping):
    """Early stopping that counts the weights training starts from as a candidate, scored
    `start_value` on the monitored metric: if no epoch beats it, they are restored (best_epoch
    -1). Fine-tuning then never ends worse on validation than the model it continued."""

    def __init__(self, start_value: float, **kwargs):
        super().__init__(restore_best_weights=True, **kwargs)
        self.start_value = start_value

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        self.best = self.start_value
        self.best_weights = self.model.get_weights()
        self.best_epoch = -1


class EpochLine(keras.callbacks.Callback):
    """One log line an epoch: the progress display where output is not a terminal."""

    def __init__(self, label: str, epochs: int):
        super().__init__()
        self.label = label
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
        log.info("%s epoch %d/%d %s", self.label, epoch + 1, self.epochs, values)


class StopWhenInterrupted(keras.callbacks.Callback):
    """Ctrl-C or SIGTERM stops training at the next batch even when Python swallowed the
    KeyboardInterrupt (raised inside a weak-reference callback, it is lost)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        raise_if_interrupted()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        raise_if_interrupted()

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        raise_if_interrupted()


def build_for_training(model: keras.Model, train) -> None:
    """Create the optimizer's, the loss's and the metrics' variables before `fit` traces a step.

    Without a distribution strategy Keras creates them inside the first trace of the train step,
    and TensorFlow then traces it a second time to lift them out; under a strategy Keras builds
    them first, as here (same variables, same values). The shapes come from the dataset's spec,
    so no batch is drawn and no shuffle order moves. The method is Keras' own, and private
    (tensorflow_internals.py).
    """
    build_training_variables(model, train.element_spec)


def fit(
    model: keras.Model,
    train,
    val,
    *,
    epochs: int,
    patience: int,
    monitor: str,
    callbacks: list[keras.callbacks.Callback],
    progress_bar: bool,
    label: str,
    start: dict[str, float] | None = None,
) -> FitResult:
    """Fit with early stopping on the validation split; the best epoch's weights are restored.

    `start`: the validation metrics of the weights the model starts from, which then stay unless
    an epoch beats them on `monitor`. Progress: Keras' bar on a terminal, else one log line an
    epoch.
    """
    if start is None:
        stopper = keras.callbacks.EarlyStopping(
            monitor=monitor, patience=patience, restore_best_weights=True
        )
    else:
        stopper = EarlyStoppingFromStart(start[monitor], monitor=monitor, patience=patience)
    progress = [] if progress_bar else [EpochLine(label, epochs)]
    # A NaN/Inf loss must fail the stage, not end it quietly as if it had converged.
    nan_guard = keras.callbacks.TerminateOnNaN(raise_error=True)
    build_for_training(model, train)
    history = model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        callbacks=[StopWhenInterrupted(), nan_guard, stopper, *progress, *callbacks],
        verbose=1 if progress_bar else 0,
    )
    values = {name: [float(v) for v in series] for name, series in history.history.items()}
    if stopper.best_epoch < 0:
        log.info(
            "%s: no epoch beat the starting weights' %s %.4f; they are kept",
            label,
            monitor,
            start[monitor],
        )
    return FitResult(values, stopper.best_epoch, len(history.epoch), start)
