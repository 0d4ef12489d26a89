"""Tracking off: the tracker interface with nothing behind it, and no MLflow import.

`tracking=off` is also the baseline that the tracking overhead is measured against, so it must not
pay for loading MLflow.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import keras

from pipeline import PROJECT_ROOT
from pipeline.config import TrackingConfig
from pipeline.pretrain import LocalWeightsStore


class NullTracker:
    """Tracking off: same interface, nothing logged; pretrained weights kept in a local folder."""

    enabled = False

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg

    def weights_store(self) -> LocalWeightsStore:
        folder = self.cfg.untracked_cache or PROJECT_ROOT / "mlruns" / "untracked-backbones"
        return LocalWeightsStore(Path(folder))

    @contextmanager
    def experiment_run(self, name: str, tags: dict[str, str]):
        yield None

    @contextmanager
    def stage_run(self, stage: str):
        yield None

    def callbacks(self, stage: str) -> list[keras.callbacks.Callback]:
        return []

    def log_config(self, resolved: dict) -> None: ...

    def log_params(self, params: dict[str, object]) -> None: ...

    def log_metrics(self, metrics: dict[str, float]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_learning_curve(self, history, stage: str, best_epoch: int) -> None: ...

    def close(self) -> None: ...

    def run_ids(self) -> dict[str, str]:
        return {}

    def ui_command(self) -> str:
        return "tracking was off (tracking=off): nothing was logged"
