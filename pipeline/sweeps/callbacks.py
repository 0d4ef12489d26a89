"""Hydra callbacks, registered under `hydra.callbacks` in conf/config.yaml (what a sweep's jobs
need to know about their sweep is in job.py).

Hydra instantiates callbacks for every run, single runs included: MLflow is imported only when a
sweep starts with tracking on, so that `tracking=off` runs never load it.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import shlex
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.config import TrackingConfig
from pipeline.sweeps import stop as sweep_stop
from pipeline.sweeps.job import SWEEP_RUN_FILE, store_label

log = logging.getLogger(__name__)


class PrepareStoreBeforeSweep(Callback):
    """A fresh SQLite store is created once before a parallel sweep starts.

    Several processes creating the store's tables at once race and corrupt it.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        tracking = config.tracking
        if not tracking.enabled:
            return
        from pipeline.tracking.store import prepare_store, resolve_uri

        uri = resolve_uri(tracking.uri)
        prepare_store(uri, [tracking.experiment_name, tracking.backbone_experiment])
        log.info("MLflow store ready at %s", uri)


class RedactHydraOutput(Callback):
    """Passwords in URIs (tracking.uri=http://user:password@host) masked in the files Hydra keeps
    beside each job (.hydra/config.yaml, hydra.yaml, overrides.yaml) and a sweep's multirun.yaml.

    Hydra writes them just before a job starts; they are rewritten here, at the job's start.
    """

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        from pipeline.tracking.secrets import redact_text  # pure text: imports no MLflow

        hydra = config.hydra
        folders = [Path(hydra.runtime.output_dir) / str(hydra.output_subdir or "")]
        if hydra.mode is not None and str(hydra.mode).endswith("MULTIRUN"):
            folders.append(Path(hydra.sweep.dir))
        for folder in folders:
            for path in folder.glob("*.yaml"):
                text = path.read_text()
                masked = redact_text(text)
                if masked != text:
                    path.write_text(masked)


def override_params(overrides: list[str]) -> dict[str, str]:
    """`key=value` overrides as params: the key (without + ++ ~) and the value as written."""
    params = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        params[re.sub(r"[^\w./ -]", "_", key)] = value
    return params


def sweep_name(task: list[str]) -> str:
    """`sweep seed=0,1,2 freeze=top1,top2`: what the sweep varies."""
    parsed = OverridesParser.create().parse_overrides(task)
    swept = [override.input_line for override in parsed if override.is_sweep_override()]
    return " ".join(["sweep", *swept])[:200]


class SweepRun(Callback):
    """One `sweep` run in MLflow per multirun, made before its jobs; each job's experiment run
    nests under it (found through SWEEP_RUN_FILE); after the jobs it ends FINISHED with the count
    of jobs finished, failed and skipped and the best job. A sweep stopped before its end (Ctrl-C
    in a job, a launcher's error) ends its run KILLED or FAILED as the process exits.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.tracking: TrackingConfig | None = None
        self.heartbeat = None  # the sweep run's (tracking/heartbeat.py), while the jobs run

    def __getstate__(self) -> dict:
        """Launchers pickle the callbacks with their jobs (submitit, joblib, Ray): the heartbeat
        is a thread of this process, and stays in it."""
        return {**self.__dict__, "heartbeat": None}

    def stop_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        marker = sweep_dir / SWEEP_RUN_FILE
        marker.unlink(missing_ok=True)  # a sweep run of an earlier sweep in the same folder
        if not config.tracking.enabled:
            return
        from pipeline.tracking.sweeps import start_sweep_run, sweep_heartbeat

        self.tracking = OmegaConf.to_object(config.tracking)
        overrides = OmegaConf.to_container(config.hydra.overrides, resolve=False)  # as typed
        task = overrides["task"]
        launch = [o for o in overrides["hydra"] if not o.startswith("hydra.mode=")]
        tags = {
            "sweep_id": str(config.hydra.sweep.dir),  # as its jobs are tagged
            "sweep_dir": str(sweep_dir.resolve()),
            "command": shlex.join(["python", "-m", "pipeline", "-m", *task, *launch]),
        }
        if config.sweep.get("replicates"):  # made by `python -m pipeline.replicate`
            tags["replicates"] = str(config.sweep.replicates)
        params = override_params([*task, *launch])
        self.run_id = start_sweep_run(self.tracking, sweep_name(task), tags, params)
        self.heartbeat = sweep_heartbeat(self.tracking, self.run_id)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"run_id": self.run_id, "store": store_label(self.tracking)}))
        atexit.register(self.end_early)
        sweep_stop.at_stop.append(self.end_early)  # SIGTERM to a joblib sweep ends by os._exit
        log.info("sweep run %s: the jobs' runs nest under it in MLflow", self.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        from pipeline.tracking.sweeps import finish_sweep_run

        atexit.unregister(self.end_early)
        sweep_stop.at_stop.remove(self.end_early)
        self.stop_heartbeat()
        outcome = finish_sweep_run(self.tracking, self.run_id)
        best = ""
        if outcome.best is not None:
            run, objective = outcome.best.parent.run_id, outcome.best.objective
            best = f"; best: job {outcome.best_job} (run {run}, objective {objective:.4f})"
        log.info(
            "sweep run %s: %d finished, %d failed, %d skipped%s",
            self.run_id,
            outcome.finished,
            outcome.failed,
            outcome.skipped,
            best,
        )
        self.run_id = None

    def end_early(self) -> None:
        """At exit, when the sweep stopped before on_multirun_end: its run never stays RUNNING."""
        from pipeline.tracking.sweeps import finish_sweep_run

        self.stop_heartbeat()
        try:
            finish_sweep_run(self.tracking, self.run_id, early=True)
        except Exception as error:  # the process is ending: say so, do not raise
            log.error("could not end sweep run %s: %s", self.run_id, error)
