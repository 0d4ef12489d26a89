"""Every write to MLflow goes through here: MLflow's own asynchronous batches, waited for per run.

`log_batch(..., synchronous=False)` queues the write and returns at once; MLflow's queue writes it
on its own thread. Before a run ends its pending writes are waited for, so that a failed write
fails the run that it belonged to (never a later one) and nothing is lost. Artifacts have no
asynchronous API in MLflow and are written at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.tracking.secrets import redact_value

TAG_LIMIT = 5000  # MLflow's longest tag value is 8000 characters; errors are cut well before


class Writer:
    """Writes to one store; asynchronous unless `synchronous`, pending writes kept per run."""

    def __init__(self, client: MlflowClient, synchronous: bool = False):
        self.client = client
        self.synchronous = synchronous
        self.pending: dict[str, list] = {}

    def batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        operation = self.client.log_batch(
            run_id,
            metrics=list(metrics),
            params=list(params),
            tags=list(tags),
            synchronous=self.synchronous,
        )
        if operation is not None:
            self.pending.setdefault(run_id, []).append(operation)

    def metrics(self, run_id: str, rows) -> None:
        """`rows`: (name, value, timestamp ms, step) tuples."""
        self.batch(run_id, metrics=[Metric(*row) for row in rows])

    def final_metrics(self, run_id: str, values: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        self.metrics(run_id, [(name, float(v), now_ms, 0) for name, v in values.items()])

    def params(self, run_id: str, values: dict[str, object]) -> None:
        params = [Param(k, str(redact_value(k, v))) for k, v in values.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.batch(run_id, params=params[start : start + 100])

    def tags(self, run_id: str, values: dict[str, str]) -> None:
        tags = [RunTag(k, str(redact_value(k, v))[:TAG_LIMIT]) for k, v in values.items()]
        self.batch(run_id, tags=tags)

    def wait(self, run_id: str) -> None:
        """Block until the run's queued writes are in the store; raise the first that failed."""
        for operation in self.pending.pop(run_id, []):
            operation.wait()

    def artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def figure(self, run_id: str, figure, name: str) -> None:
        self.client.log_figure(run_id, figure, name)
