"""The `Tracker` Protocol on an MLflow store, in the experiment's own process.

Every write is one of MLflow's asynchronous batches (pipeline/tracking/writer.py) except
artifacts; a run waits for its pending writes before it ends, so a write that failed fails its
own run. The client is given the store's URI: nothing relies on `mlflow.set_tracking_uri` or on
MLflow's active-run stack, the tracker keeps its own stack of open runs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline.config import SearchConfig, TrackingConfig
from pipeline.errors import SearchError, StoreUnwritable, TrackingUnreachable
from pipeline.interrupts import received_interrupts
from pipeline.tracking.heartbeat import Heartbeat
from pipeline.tracking.params import flatten
from pipeline.tracking.query import ExperimentRun, RunRecord, StoreReader
from pipeline.tracking.runs import create_run, end_run, error_tag, mark_orphans
from pipeline.tracking.secrets import redact_text, redact_tree
from pipeline.tracking.sqlite_file import sqlite_path, writable_sqlite
from pipeline.tracking.store import (
    bounded_http,
    prepare_store,
    quiet_http_logs,
    resolve_uri,
    server_down,
    shut_down_async_logging,
    stop_retrying,
    storage_problem,
)
from pipeline.tracking.sweeps import SKIPPED_JOB
from pipeline.tracking.trial_records import SearchOutcome
from pipeline.tracking.weights import MlflowWeightsStore
from pipeline.tracking.writer import Writer

if TYPE_CHECKING:
    from pipeline.tracking.trials import TrialRuns

log = logging.getLogger(__name__)

# One name in every stage run, so that MLflow's compare view shows the stages' curves side by side.
LEARNING_CURVE = "learning_curve.png"


class MlflowTracker:
    """The run tree of one invocation in an MLflow store."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.uri = resolve_uri(cfg.uri)
        self.client: MlflowClient | None = None
        self.stack: list[str] = []  # open runs, innermost last
        self.ids: dict[str, str] = {}
        self.lost = False  # the store stopped taking writes: no more requests to it

    def __enter__(self) -> MlflowTracker:
        """Open (and if needed create) the store; end the runs of dead processes FAILED."""
        self.settings = ExitStack()
        self.settings.enter_context(bounded_http(self.cfg.http_retries, self.cfg.http_timeout_s))
        self.settings.enter_context(quiet_http_logs())
        try:
            self.open_store()
        except BaseException:
            self.settings.close()
            raise
        return self

    def open_store(self) -> None:
        names = [self.cfg.experiment_name, self.cfg.backbone_experiment]
        self.client = prepare_store(self.uri, names)
        self.writer = Writer(self.client, synchronous=not self.cfg.async_logging)
        experiment = self.client.get_experiment_by_name(self.cfg.experiment_name)
        self.experiment_id = experiment.experiment_id
        self.reader = StoreReader(self.client, [self.experiment_id])
        backbones = self.client.get_experiment_by_name(self.cfg.backbone_experiment)
        # a process killed while pretraining leaves a RUNNING run in the backbones' experiment too
        ids = list(dict.fromkeys([self.experiment_id, backbones.experiment_id]))
        mark_orphans(self.client, StoreReader(self.client, ids), self.cfg.orphan_after_s)

    def __exit__(self, *exc_info) -> None:
        """Everything queued is written and MLflow's logging threads are stopped."""
        try:
            if self.client is not None:
                shut_down_async_logging(self.client)
        finally:
            self.settings.close()

    # the run tree
    @contextmanager
    def open_run(self, run_id: str, key: str | None) -> Iterator[str]:
        """Run `run_id` as the innermost run until the block ends, then end it truthfully."""
        self.stack.append(run_id)
        if key is not None:
            self.ids[key] = run_id
        try:
            yield run_id
        except BaseException as error:
            self.stack.pop()
            self.end_after(run_id, error)
            raise
        self.stack.pop()
        try:
            failed_write = end_run(self.writer, run_id, None)
        except Exception as ending:
            self.raise_if_lost(ending)
            raise
        if failed_write is not None:
            self.raise_if_lost(failed_write)
            raise failed_write

    def end_after(self, run_id: str, error: BaseException) -> None:
        """End a run that `error` cut short; a store that stopped taking writes is the news then."""
        if self.lost:
            return  # the innermost run found it out and raised TrackingLost already
        try:
            end_run(self.writer, run_id, error)
        except Exception as ending:
            self.raise_if_lost(error, ending)
            log.error("could not end run %s: %s", run_id, error_tag(ending))
        else:  # the store took the run's end, so a server answers; a disk may be full all the same
            self.raise_if_unwritable(error)

    def raise_if_lost(self, *errors: BaseException) -> None:
        """Stop the command when the store can no longer be written: a full disk or read-only
        SQLite file (named), or a server that stopped answering. Other errors fail one run."""
        self.raise_if_unwritable(*errors)
        if server_down(self.uri):
            self.lost = True
            stop_retrying()  # what is still queued is tried once, when the tracker closes
            cause = errors[0]
            if received_interrupts and not isinstance(cause, KeyboardInterrupt):
                # Ctrl-C/SIGTERM came first, raised inside C code as another error: exit 130
                cause = KeyboardInterrupt(received_interrupts[-1])
            raise TrackingUnreachable(redact_text(self.uri), cause) from errors[0]

    def raise_if_unwritable(self, *errors: BaseException) -> None:
        """Stop the command when an error says space or write access ran out and the store's
        own file system confirms it; a full disk elsewhere (a search folder) fails one run."""
        db = sqlite_path(self.uri)
        if db is None or writable_sqlite(db) is None:
            return
        for error in errors:
            problem = storage_problem(error, db)
            if problem is not None:
                self.lost = True
                interrupt = received_interrupts[-1] if received_interrupts else None
                raise StoreUnwritable(problem, interrupt) from error

    def new_run(self, name: str, tags: dict[str, str], parent_id: str | None) -> str:
        try:
            return create_run(self.client, self.experiment_id, name, tags, parent_id)
        except Exception as error:
            self.raise_if_lost(error)
            raise

    @contextmanager
    def experiment_run(
        self, name: str, tags: dict[str, str], sweep_run_id: str | None = None
    ) -> Iterator[str]:
        """The invocation's parent run, with a heartbeat while it is open (this process's runs
        on other hosts' orphan sweeps: heartbeat.py)."""
        safe = {key: str(value) for key, value in redact_tree(tags).items()}
        run_id = self.new_run(name, safe, sweep_run_id)
        with self.open_run(run_id, "parent") as opened, Heartbeat(self.client, run_id):
            yield opened

    def stage_run(self, stage: str):
        run_id = self.new_run(stage, {"stage": stage}, self.current())
        return self.open_run(run_id, stage)

    def search_run(self, config_hash: str, previous: RunRecord | None):
        if previous is None:
            tags = {"stage": "search", "config_hash": config_hash, "search_state": "running"}
            run_id = self.new_run("search", tags, self.current())
        else:
            run_id = previous.run_id
            from pipeline.tracking.trials import close_stale_trials, reopen  # Keras: see callbacks

            reopen(self.client, self.writer, previous, self.current())
            close_stale_trials(self.writer, self.reader, run_id)
        return self.open_run(run_id, "search")

    def trial_observer(self, search_run_id: str, cfg: SearchConfig) -> TrialRuns:
        from pipeline.tracking.trials import TrialRuns  # Keras: see callbacks

        return TrialRuns(self.writer, self.experiment_id, search_run_id, cfg)

    def current(self) -> str:
        if not self.stack:
            raise RuntimeError("no open run: log inside experiment_run, stage_run or search_run")
        return self.stack[-1]

    # what goes into the innermost open run
    def callbacks(self, stage: str) -> list:
        # Keras only once there is training to log: a sweep job that is skipped (sweeps/resume.py)
        # opens a tracker before TensorFlow is imported, and must not import it unfiltered.
        from pipeline.tracking.metrics import MetricsBuffer, MetricsCallback

        buffer = MetricsBuffer(self.writer, self.current(), self.cfg.metrics_flush_s)
        return [MetricsCallback(buffer)]

    def log_config(self, resolved: dict) -> None:
        safe = redact_tree(resolved)
        self.writer.params(self.current(), flatten(safe))
        self.writer.text(self.current(), OmegaConf.to_yaml(OmegaConf.create(safe)), "config.yaml")

    def log_params(self, params: dict[str, object]) -> None:
        self.writer.params(self.current(), params)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.writer.final_metrics(self.current(), metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.writer.tags(self.current(), tags)

    def log_artifact(self, path: Path) -> None:
        self.writer.artifact(self.current(), path)

    def log_learning_curve(self, history: dict[str, list[float]], stage: str, best_epoch: int):
        from pipeline.plots import close, learning_curve  # matplotlib only when it is logged

        figure = learning_curve(history, stage, best_epoch)
        try:
            self.writer.figure(self.current(), figure, LEARNING_CURVE)
        finally:
            close(figure)

    def log_search_outcome(self, outcome: SearchOutcome, objective: str) -> None:
        from pipeline.tracking.trials import log_search_summary  # Keras: see callbacks

        log_search_summary(self.writer, self.current(), outcome, objective)

    # reading back
    def weights_store(self) -> MlflowWeightsStore:
        backbones = self.client.get_experiment_by_name(self.cfg.backbone_experiment)
        return MlflowWeightsStore(self.client, backbones.experiment_id)

    def resumable_search(self, config_hash: str) -> RunRecord | None:
        return self.reader.resumable_search(config_hash, lambda d: bool(d) and Path(d).is_dir())

    def chief_search(self, config_hash: str, address: str, wait_s: float) -> RunRecord:
        found = self.reader.wait_for(lambda: self.reader.chief_search(config_hash, address), wait_s)
        if found is None:
            raise SearchError(
                f"no chief search run for oracle {address} after {wait_s:.0f}s "
                "(search.worker_wait_s): start the chief (KERASTUNER_TUNER_ID=chief) with the "
                "same overrides and tracking.uri"
            )
        return found

    def fetch_artifact(self, run_id: str, path: str, destination: Path) -> Path:
        """Downloaded beside `destination`, then renamed into it: distributed workers sharing a
        search directory fetch the same file, and one must never read another's half copy."""
        destination.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetching-", dir=destination) as staging:
            fetched = Path(self.client.download_artifacts(run_id, path, staging))
            target = destination / fetched.relative_to(staging)
            os.replace(fetched, target)
        return target

    # sweeps
    def finished_experiment_run(self, config_hash: str) -> ExperimentRun | None:
        return self.reader.finished_experiment_run(config_hash)

    def record_skipped_job(self, sweep_run_id: str, job: str, run_id: str) -> None:
        # written at once: MLflow's asynchronous queue would cost its ~1 s stop to a skipped job
        Writer(self.client, synchronous=True).tags(sweep_run_id, {f"{SKIPPED_JOB}{job}": run_id})

    # the summary
    def run_ids(self) -> dict[str, str]:
        return dict(self.ids)

    def ui_command(self) -> str:
        """How to see the runs: the UI command for a SQLite store, and the runs table's URL."""
        runs = f"#/experiments/{self.experiment_id}/runs"
        if urlparse(self.uri).scheme == "sqlite":
            command = f"mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000"
            return f"{command}, then open http://127.0.0.1:5000/{runs}"
        return f"open {redact_text(self.uri).rstrip('/')}/{runs} in a browser"
