"""Keras callbacks that hand each epoch's metrics to tracking (training never imports mlflow)."""

from __future__ import annotations

from typing import Protocol

import keras


class EpochSink(Protocol):
    """Where per-epoch metrics go: an MLflow batch buffer, or the pipe to the tracking process."""

    def add(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def flush(self) -> None: ...


class MetricsCallback(keras.callbacks.Callback):
    """Every epoch's metrics (step = epoch) to a sink, flushed when training ends."""

    def __init__(self, sink: EpochSink):
        super().__init__()
        self.sink = sink

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.sink.add(epoch, {name: float(value) for name, value in (logs or {}).items()})

    def on_train_end(self, logs: dict | None = None) -> None:
        self.sink.flush()
