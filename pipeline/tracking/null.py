"""Tracking off: the `Tracker` Protocol with nothing behind it, and no MLflow import.

`tracking=off` is also the baseline that the tracking overhead is measured against, so it must not
pay for loading MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import PROJECT_ROOT
from pipeline.config import SearchConfig, TrackingConfig
from pipeline.errors import ConfigError
from pipeline.tracking.trial_records import NullObserver

if TYPE_CHECKING:
    from pipeline.pretrain import LocalWeightsStore

UNTRACKED = "-"  # the run id shown where nothing was logged


class NullTracker:
    """Tracking off: same interface, nothing logged; pretrained weights kept in a local folder."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc_info) -> None: ...

    @contextmanager
    def experiment_run(
        self, name: str, tags: dict[str, str], sweep_run_id: str | None = None
    ) -> Iterator[str]:
        yield UNTRACKED

    @contextmanager
    def stage_run(self, stage: str) -> Iterator[str]:
        yield UNTRACKED

    @contextmanager
    def search_run(self, config_hash: str, previous) -> Iterator[str]:
        yield UNTRACKED

    def trial_observer(self, search_run_id: str, cfg: SearchConfig) -> NullObserver:
        return NullObserver()

    def callbacks(self, stage: str) -> list:
        return []

    def log_config(self, resolved: dict) -> None: ...

    def log_params(self, params: dict[str, object]) -> None: ...

    def log_metrics(self, metrics: dict[str, float]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def log_learning_curve(self, history, stage: str, best_epoch: int) -> None: ...

    def log_search_outcome(self, outcome, objective: str) -> None: ...

    def weights_store(self) -> LocalWeightsStore:
        from pipeline.pretrain import LocalWeightsStore  # Keras: only once there is training

        folder = self.cfg.untracked_cache or PROJECT_ROOT / "mlruns" / "untracked-backbones"
        return LocalWeightsStore(Path(folder))

    def resumable_search(self, config_hash: str) -> None:
        return None  # without a store, a search resumes from the same search.directory

    def chief_search(self, config_hash: str, address: str, wait_s: float):
        raise ConfigError(
            "tracking.enabled=false with KERASTUNER_ORACLE_IP set: distributed workers find the "
            "chief's search run and checkpoint in MLflow; enable tracking (a shared store)"
        )

    def fetch_artifact(self, run_id: str, path: str, destination: Path) -> Path:
        raise ConfigError(f"tracking is off: no run {run_id} to fetch {path} from")

    def finished_experiment_run(self, config_hash: str) -> None:
        return None  # nothing was logged: a sweep without tracking runs every job

    def record_skipped_job(self, sweep_run_id: str, job: str, run_id: str) -> None: ...

    def run_ids(self) -> dict[str, str]:
        return {}

    def ui_command(self) -> str:
        return "tracking was off (tracking=off): nothing was logged"
