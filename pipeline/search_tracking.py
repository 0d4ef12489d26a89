"""The MLflow side of a search: the search run, a run per trial under it, and the summary.

Run tree: parent -> `search` run (params: tuner, space, budget; metric best_<objective>; tags: best
trial and its hyperparameters; artifacts: trials.csv, the objective plot and the feature-extraction
checkpoint the trials start from) -> one `trial` run per trial (params: its hyperparameters; tags:
trial_id, status, tuner_id; per-epoch metrics; best_<objective>).

The search run carries `search_dir` (the tuner's state) and `search_state` (running | done |
failed): re-running the same command finds an unfinished search by `config_hash` and continues it
in the same run. Distributed workers find the chief's search run by `oracle_address`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import time
from dataclasses import asdict

import keras
import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.config import SearchConfig
from pipeline.errors import SearchError
from pipeline.plots import close, search_objective
from pipeline.search import HYPERPARAMETERS, SearchOutcome, TrialRecord, tuner_id
from pipeline.tracking import flatten, process_tags

log = logging.getLogger(__name__)

ERROR_TAG_LIMIT = 5000
UNSET_PARAMS = ("directory", "worker_wait_s")  # where, not what: not part of the search's identity


def search_params(cfg: SearchConfig, block_count: int) -> dict[str, object]:
    """Tuner, space and budget as flat params (`unfreeze_blocks.max` resolved to a number)."""
    plain = {k: v for k, v in asdict(cfg).items() if k not in UNSET_PARAMS}
    if plain["unfreeze_blocks"]["max"] is None:
        plain["unfreeze_blocks"]["max"] = block_count
    return flatten(plain)


class TrialMetrics(keras.callbacks.Callback):
    """Every epoch's metrics into one trial's run (several executions: `execution_<k>.` names)."""

    def __init__(self, client: MlflowClient, run_id: str, prefix: str, synchronous: bool):
        super().__init__()
        self.client, self.run_id = client, run_id
        self.prefix, self.synchronous = prefix, synchronous

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{self.prefix}{name}", float(value), now, epoch)
            for name, value in (logs or {}).items()
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=self.synchronous)


class TrialRuns:
    """A TrialObserver that gives each trial its own MLflow run under the search run."""

    def __init__(self, client, experiment_id: str, search_run_id: str, objective: str, sync: bool):
        self.client, self.experiment_id = client, experiment_id
        self.search_run_id, self.objective, self.synchronous = search_run_id, objective, sync
        self.executions = 1
        self.open: dict[str, str] = {}  # trial id -> run id

    def trial_started(self, trial_id: str, values: dict[str, object]) -> None:
        tags = {
            "mlflow.parentRunId": self.search_run_id,
            "stage": "trial",
            "trial_id": trial_id,
            "status": "RUNNING",
            "tuner_id": tuner_id(),
            **process_tags(),
        }
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_id}", tags=tags)
        self.open[trial_id] = run.info.run_id
        params = [Param(name, str(value)) for name, value in values.items()]
        self.client.log_batch(run.info.run_id, params=params)

    def callbacks(self, trial_id: str, execution: int) -> list[keras.callbacks.Callback]:
        prefix = f"execution_{execution}." if execution or self.executions > 1 else ""
        return [TrialMetrics(self.client, self.open[trial_id], prefix, self.synchronous)]

    def trial_ended(self, record: TrialRecord) -> None:
        run_id = self.open.pop(record.trial_id, None)
        if run_id is None:
            return
        tags = [RunTag("status", record.status)]
        metrics = []
        if record.score is not None:
            metrics.append(Metric(f"best_{self.objective}", record.score, now_ms(), 0))
        if record.best_step is not None:
            metrics.append(Metric("best_epoch", float(record.best_step), now_ms(), 0))
        if record.error:
            tags.append(RunTag("error", record.error[:ERROR_TAG_LIMIT]))
            self.client.log_text(run_id, record.message or "", "traceback.txt")
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        status = "FINISHED" if record.status == "COMPLETED" else "FAILED"
        self.client.set_terminated(run_id, status)

    def interrupted(self, error: BaseException) -> None:
        """Close the runs of trials cut short: KILLED on Ctrl-C/SIGTERM, else FAILED."""
        killed = isinstance(error, KeyboardInterrupt | SystemExit)
        for run_id in self.open.values():
            message = "interrupted" if killed else f"{type(error).__name__}: {error}"
            self.client.set_tag(run_id, "error", message[:ERROR_TAG_LIMIT])
            self.client.set_tag(run_id, "status", "KILLED" if killed else "FAILED")
            self.client.set_terminated(run_id, "KILLED" if killed else "FAILED")
        self.open.clear()


def now_ms() -> int:
    return int(time.time() * 1000)


def process_dead(tags: dict[str, str]) -> bool:
    """Whether the process that ran a run is known to be gone (same host, no such pid)."""
    if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(tags["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def resumable_search(client: MlflowClient, experiment_id: str, config_hash: str):
    """The latest unfinished search of this exact config whose tuner state is still on disk.

    Unfinished: interrupted (Ctrl-C, kill -9), or done but its invocation never finished (the final
    fine-tune was cut short). A search that failed (no trial succeeded) starts afresh.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.stage = 'search' and tags.config_hash = '{config_hash}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in runs:
        tags, status = run.data.tags, run.info.status
        if tags.get("search_state") == "failed" or not os.path.isdir(tags.get("search_dir", "")):
            continue
        if status == "RUNNING" and not process_dead(tags):
            continue  # live (another process, or another host we cannot check)
        if tags.get("search_state") == "done" and parent_finished(client, tags):
            continue
        return run
    return None


def parent_finished(client: MlflowClient, tags: dict[str, str]) -> bool:
    parent = tags.get("mlflow.parentRunId")
    return parent is not None and client.get_run(parent).info.status == "FINISHED"


def close_stale_trials(client: MlflowClient, experiment_id: str, search_run_id: str) -> None:
    """Trial runs a killed process left RUNNING end KILLED: their trials will run again."""
    stale = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{search_run_id}' and "
        "attributes.status = 'RUNNING'",
    )
    for run in stale:
        client.set_tag(run.info.run_id, "error", "interrupted: its process ended")
        client.set_tag(run.info.run_id, "status", "KILLED")
        client.set_terminated(run.info.run_id, "KILLED")
    if stale:
        log.info("closed %d interrupted trial run(s) as KILLED", len(stale))


def resume_tags(previous, parent_run_id: str) -> dict[str, str]:
    """The resumed search run moves under this invocation's parent, remembering the first one."""
    tags = previous.data.tags
    return {
        "mlflow.parentRunId": parent_run_id,
        "resumed_from_parent": tags.get("resumed_from_parent", tags.get("mlflow.parentRunId", "")),
        "resumes": str(int(tags.get("resumes", "0")) + 1),
        "search_state": "done" if tags.get("search_state") == "done" else "running",
    }


def wait_for_chief(client, experiment_id: str, config_hash: str, address: str, wait_s: float):
    """A distributed worker's search run: the chief's, once its checkpoint is uploaded."""
    query = (
        f"tags.stage = 'search' and tags.config_hash = '{config_hash}' and "
        f"tags.oracle_address = '{address}' and attributes.status = 'RUNNING'"
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"])
        if runs:
            return runs[0]
        time.sleep(1.0)
    raise SearchError(
        f"no chief search run for oracle {address} after {wait_s:.0f}s "
        "(search.worker_wait_s): start the chief (KERASTUNER_TUNER_ID=chief) with the same "
        "overrides and tracking.uri"
    )


def trials_csv(trials: list[TrialRecord], objective: str) -> str:
    names = {name for t in trials for name in t.values}
    names = sorted(names, key=lambda name: (name not in HYPERPARAMETERS, name))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial_id", "status", *names, objective, "best_epoch", "error"])
    for t in trials:
        values = [t.values.get(name, "") for name in names]
        score = "" if t.score is None else t.score
        writer.writerow([t.trial_id, t.status, *values, score, t.best_step, t.error or ""])
    return out.getvalue()


def log_search_summary(outcome: SearchOutcome, objective: str) -> None:
    """Into the active search run: the trials table, the plot and, when any, the best trial."""
    trials = outcome.trials
    mlflow.log_text(trials_csv(trials, objective), "trials.csv")
    figure = search_objective(trials, objective)
    mlflow.log_figure(figure, "search_objective.png")
    close(figure)
    ended = {"trials": len(trials), "trials_completed": 0, "trials_failed": 0}
    for t in trials:
        if t.status == "COMPLETED":
            ended["trials_completed"] += 1
        elif t.status in ("FAILED", "INVALID"):
            ended["trials_failed"] += 1
    mlflow.log_metrics({k: float(v) for k, v in ended.items()})
    if outcome.best is not None:
        best = outcome.best
        mlflow.log_metric(f"best_{objective}", best.score)
        tags = {"best_trial_id": best.trial_id}
        tags.update({f"best_{name}": str(best.values[name]) for name in HYPERPARAMETERS})
        mlflow.set_tags(tags)
