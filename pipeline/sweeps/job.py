"""What a sweep's job needs to know about its sweep: whether it runs in one, and the sweep's MLflow
run it nests under (written by the `SweepRun` callback, callbacks.py)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from pipeline.config import TrackingConfig

# In the sweep's folder: which MLflow run is the sweep's, read by its jobs (whatever process or
# host runs them: launchers share the sweep folder with their jobs).
SWEEP_RUN_FILE = "sweep_run.json"


def in_sweep() -> bool:
    """Whether this job is one of a multirun (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def store_label(tracking: TrackingConfig) -> str:
    """The store and experiment a run lives in (passwords masked): a job nests under its sweep's
    run only when both are the same."""
    from pipeline.tracking.secrets import redact_text  # pure text: imports no MLflow
    from pipeline.tracking.store import resolve_uri

    return f"{redact_text(resolve_uri(tracking.uri))} {tracking.experiment_name}"


def sweep_run_id(tracking: TrackingConfig) -> str | None:
    """In a sweep job: the run of its sweep in the job's own store, if the sweep made one."""
    if not (tracking.enabled and in_sweep()):
        return None
    return sweep_run_in(Path(HydraConfig.get().sweep.dir), tracking)


def sweep_run_in(sweep_dir: Path, tracking: TrackingConfig) -> str | None:
    """The run the SweepRun callback made for the sweep in `sweep_dir`, if it is in this store."""
    try:
        found = json.loads((sweep_dir / SWEEP_RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found.get("run_id") if found.get("store") == store_label(tracking) else None
