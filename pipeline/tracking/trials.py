"""What a search logs: the search run, one run per trial under it, and the search's summary.

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

from mlflow.tracking import MlflowClient

from pipeline.config import SearchConfig
from pipeline.tracking.metrics import MetricsBuffer, MetricsCallback
from pipeline.tracking.owner import process_tags
from pipeline.tracking.query import RunRecord, StoreReader
from pipeline.tracking.runs import RunFailed, create_run, end_run, end_status, error_tag
from pipeline.tracking.store import terminate_run
from pipeline.tracking.trial_records import HYPERPARAMETERS, SearchOutcome, TrialRecord
from pipeline.tracking.writer import Writer

log = logging.getLogger(__name__)


def tuner_id() -> str:
    return os.environ.get("KERASTUNER_TUNER_ID", "tuner0")


class TrialRuns:
    """A TrialObserver that gives each trial its own MLflow run under the search run."""

    def __init__(self, writer: Writer, experiment_id: str, search_run_id: str, cfg: SearchConfig):
        self.writer, self.experiment_id = writer, experiment_id
        self.search_run_id, self.objective = search_run_id, str(cfg.objective)
        self.executions = cfg.executions_per_trial
        self.open: dict[str, str] = {}  # trial id -> run id

    def trial_started(self, trial_id: str, values: dict[str, object]) -> None:
        tags = {"stage": "trial", "trial_id": trial_id, "status": "RUNNING", "tuner_id": tuner_id()}
        client = self.writer.client
        run_id = create_run(
            client, self.experiment_id, f"trial-{trial_id}", tags, self.search_run_id
        )
        self.open[trial_id] = run_id
        self.writer.params(run_id, values)

    def callbacks(self, trial_id: str, execution: int) -> list:
        """Every epoch's metrics into the trial's run (several executions: `execution_<k>.`)."""
        prefix = f"execution_{execution}." if execution or self.executions > 1 else ""
        buffer = MetricsBuffer(self.writer, self.open[trial_id], flush_s=0.0, prefix=prefix)
        return [MetricsCallback(buffer)]

    def trial_ended(self, record: TrialRecord) -> None:
        run_id = self.open.pop(record.trial_id, None)
        if run_id is None:
            return
        finals = {}
        if record.score is not None:
            finals[f"best_{self.objective}"] = record.score
        if record.best_step is not None:
            finals["best_epoch"] = float(record.best_step + 1)  # Keras Tuner's step is 0-based
        self.writer.final_metrics(run_id, finals)
        self.writer.tags(run_id, {"status": record.status})
        if record.error:
            self.writer.text(run_id, record.message or "", "traceback.txt")
        error = TrialFailed(record.error) if record.error or record.status != "COMPLETED" else None
        end_run(self.writer, run_id, error)

    def interrupted(self, error: BaseException) -> None:
        """Close the runs of trials cut short: KILLED on Ctrl-C/SIGTERM, else FAILED.

        Also the ones the interrupt caught between the store and `open`: created, but not yet
        kept there, or taken out of it to be ended and not ended yet. The store knows them as
        this process's RUNNING trial runs (other workers' trials of a distributed search are
        left alone)."""
        for run_id in self.open.values():
            self.end_cut_short(run_id, error)
        self.open.clear()
        reader = StoreReader(self.writer.client, [self.experiment_id])
        try:
            running = reader.children(self.search_run_id, status="RUNNING")
        except Exception as failed:  # the store is failing: the command's own error says so
            log.warning("trial runs left RUNNING were not looked for: %s", error_tag(failed))
            return  # the next command on the store closes them (close_stale_trials)
        mine = process_tags()
        for run in running:
            if all(run.tags.get(key) == value for key, value in mine.items()):
                self.end_cut_short(run.run_id, error)

    def end_cut_short(self, run_id: str, error: BaseException) -> None:
        self.writer.tags(run_id, {"status": end_status(error)})
        end_run(self.writer, run_id, error)


class TrialFailed(RunFailed):
    """A trial that raised or diverged: its run ends FAILED with the trial's own error line."""

    def __str__(self) -> str:
        return self.args[0] or "the trial did not complete"


def close_stale_trials(writer: Writer, reader: StoreReader, search_run_id: str) -> None:
    """Trial runs a killed process left RUNNING end KILLED: their trials will run again."""
    stale = reader.children(search_run_id, status="RUNNING")
    for run in stale:
        writer.client.set_tag(run.run_id, "error", "interrupted: its process ended")
        writer.client.set_tag(run.run_id, "status", "KILLED")
        terminate_run(writer.client, run.run_id, "KILLED")
    if stale:
        log.info("closed %d interrupted trial run(s) as KILLED", len(stale))


def resume_tags(previous: RunRecord, parent_run_id: str) -> dict[str, str]:
    """The resumed search run moves under this invocation's parent, remembering the first one."""
    tags = previous.tags
    return {
        "mlflow.parentRunId": parent_run_id,
        "resumed_from_parent": tags.get("resumed_from_parent", tags.get("mlflow.parentRunId", "")),
        "resumes": str(int(tags.get("resumes", "0")) + 1),
        "search_state": "done" if tags.get("search_state") == "done" else "running",
    }


def reopen(client: MlflowClient, writer: Writer, previous: RunRecord, parent_id: str) -> None:
    """An unfinished search run RUNNING again, under this invocation's parent."""
    client.update_run(previous.run_id, status="RUNNING")
    if "error" in previous.tags:
        client.delete_tag(previous.run_id, "error")
    writer.tags(previous.run_id, resume_tags(previous, parent_id))


def trials_csv(trials: list[TrialRecord], objective: str) -> str:
    names = {name for t in trials for name in t.values}
    names = sorted(names, key=lambda name: (name not in HYPERPARAMETERS, name))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial_id", "status", *names, objective, "best_epoch", "error"])
    for t in trials:
        values = [t.values.get(name, "") for name in names]
        score = "" if t.score is None else t.score
        best_epoch = "" if t.best_step is None else t.best_step + 1
        writer.writerow([t.trial_id, t.status, *values, score, best_epoch, t.error or ""])
    return out.getvalue()


def log_search_summary(writer: Writer, run_id: str, outcome: SearchOutcome, objective: str):
    """Into the search run: the trials table, the plot and, when any, the best trial."""
    from pipeline.plots import close, search_objective  # matplotlib only when it is logged

    trials = outcome.trials
    writer.text(run_id, trials_csv(trials, objective), "trials.csv")
    figure = search_objective(trials, objective)
    writer.figure(run_id, figure, "search_objective.png")
    close(figure)
    ended = {
        "trials": len(trials),
        "trials_completed": sum(t.status == "COMPLETED" for t in trials),
        "trials_failed": sum(t.status in ("FAILED", "INVALID") for t in trials),
    }
    if outcome.best is not None:
        ended[f"best_{objective}"] = outcome.best.score
        tags = {"best_trial_id": outcome.best.trial_id}
        tags.update({f"best_{name}": str(outcome.best.values[name]) for name in HYPERPARAMETERS})
        writer.tags(run_id, tags)
    writer.final_metrics(run_id, ended)
