"""A study as its sweep run sees it (read side for `python -m pipeline.replicate`), and the
replication's verdicts logged on the replication's sweep run.

A study's experiment runs are its sweep run's nested experiment runs plus the FINISHED runs it
skipped (`skipped_job.<n>` tags, sweeps.py): a resumed study counts both.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError
from pipeline.tracking.query import ExperimentRun, RunRecord, StoreReader, record_of
from pipeline.tracking.secrets import redact_text
from pipeline.tracking.sqlite_file import check_sqlite_file, sqlite_path
from pipeline.tracking.store import check_reachable
from pipeline.tracking.sweeps import SKIPPED_JOB, SWEEP_STAGE
from pipeline.tracking.writer import Writer

REPLICATES = "replicates"


def open_run_record(uri: str, run_id: str) -> tuple[StoreReader, RunRecord]:
    """A reader of the experiment that holds `run_id`, and that run, as it is."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"no MLflow store at {db}: pass tracking_uri= or set MLFLOW_TRACKING_URI")
    if db is not None:
        check_sqlite_file(db)
    check_reachable(uri)
    client = MlflowClient(uri)
    try:
        run = record_of(client.get_run(run_id))
    except MlflowException:
        raise ConfigError(f"run_id={run_id!r} is not a run of {redact_text(uri)}") from None
    return StoreReader(client, [run.experiment_id]), run


def open_sweep_run(uri: str, run_id: str) -> tuple[StoreReader, RunRecord]:
    """A reader of the experiment that holds the sweep run `run_id`, and that run; ConfigError
    in one line when it is not there or not a sweep run."""
    reader, run = open_run_record(uri, run_id)
    if run.stage != SWEEP_STAGE:
        kind = f"a {run.stage} run" if run.stage else "an experiment run (one job)"
        if not run.stage and not run.tags.get("config_hash"):
            kind = "not a run of the pipeline"
        raise ConfigError(
            f"run_id={run_id!r} is {kind}, not a study's sweep run (tag stage=sweep): pass the "
            "sweep run's id, or the report's filters (sweep_id=..., tags.<name>=...)"
        )
    return reader, run


def sweep_study(reader: StoreReader, sweep: RunRecord) -> list[ExperimentRun]:
    """The FINISHED experiment runs of a sweep: nested under it, or skipped by it as done."""
    skipped = {v for k, v in sweep.tags.items() if k.startswith(SKIPPED_JOB)}
    runs = reader.experiment_runs()
    return [
        run
        for run in runs
        if run.parent.status == "FINISHED"
        and (run.parent.parent_id == sweep.run_id or run.parent.run_id in skipped)
    ]


def replication_sweep(reader: StoreReader, replicates: str, since_ms: int) -> RunRecord | None:
    """The newest sweep run tagged `replicates=<replicates>` started at or after `since_ms`."""
    value = replicates.replace("'", "_")
    query = f"tags.stage = '{SWEEP_STAGE}' and tags.{REPLICATES} = '{value}'"
    found = [r for r in reader.runs(query) if (r.start_time or 0) >= since_ms]
    return found[0] if found else None


def log_replication(
    reader: StoreReader, run_id: str, tags: dict[str, str], metrics: dict, files: list[Path]
) -> None:
    """The replication's verdicts on its sweep run: tags, metrics, files under `replication/`."""
    writer = Writer(reader.client, synchronous=True)
    writer.tags(run_id, tags)
    writer.final_metrics(run_id, metrics)
    for path in files:
        writer.artifact(run_id, path, "replication")
