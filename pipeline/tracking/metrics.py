"""Per-epoch metrics: a Keras callback hands each epoch to a buffer that writes in batches.

Epochs of a small model take milliseconds while a store write takes several: the metrics are
queued in one asynchronous MLflow batch at most every `flush_s` seconds and when training ends,
so the UI stays near-live and training never waits for the store. Training code never imports
mlflow: it gets these callbacks from the tracker.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:
    from pipeline.tracking.writer import Writer


class MetricsBuffer:
    """Every epoch's metrics (step = epoch, counted from 1) for one run, never per batch."""

    def __init__(self, writer: Writer, run_id: str, flush_s: float, prefix: str = ""):
        self.writer, self.run_id = writer, run_id
        self.flush_s, self.prefix = flush_s, prefix
        self.rows: list[tuple[str, float, int, int]] = []
        self.last_flush = time.monotonic()

    def add(self, epoch: int, metrics: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        for name, value in metrics.items():
            self.rows.append((f"{self.prefix}{name}", float(value), now_ms, epoch))
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.metrics(self.run_id, self.rows)
            self.rows = []
        self.last_flush = time.monotonic()


class MetricsCallback(keras.callbacks.Callback):
    """Every epoch's metrics to a buffer, flushed when training ends. Epochs are counted from 1,
    as the terminal's `epoch 3/100` and the `best_epoch` metric count them (Keras counts from 0).
    """

    def __init__(self, buffer: MetricsBuffer):
        super().__init__()
        self.buffer = buffer

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.buffer.add(epoch + 1, {name: float(value) for name, value in (logs or {}).items()})

    def on_train_end(self, logs: dict | None = None) -> None:
        self.buffer.flush()
