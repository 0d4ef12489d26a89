"""The tracking side of reports and reproduction: opening a store to read, logging a report run.

Reading never creates anything: a store or experiment that does not exist is an error that says
so, in one line.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError
from pipeline.tracking.query import RunRecord, StoreReader, experiment_id, record_of
from pipeline.tracking.runs import create_run, end_run
from pipeline.tracking.secrets import redact_text
from pipeline.tracking.store import check_readable_store
from pipeline.tracking.writer import Writer


def open_reader(uri: str, experiment_name: str) -> StoreReader:
    """A reader of one experiment of an existing store."""
    check_readable_store(uri)  # before MlflowClient, which would create the tables
    client = MlflowClient(uri)
    found = experiment_id(client, experiment_name)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(
            f"experiment_name={experiment_name!r} is not in {redact_text(uri)}; allowed: {names}"
        )
    return StoreReader(client, [found])


def log_report_run(reader: StoreReader, files: list[Path], tags: dict[str, str]) -> str:
    """A `report` run in the study's experiment with the report's files as artifacts."""
    client = reader.client
    run_id = create_run(client, reader.experiment_ids[0], "report", {"stage": "report", **tags})
    writer = Writer(client, synchronous=True)
    try:
        for path in files:
            writer.artifact(run_id, path, "report")
    except BaseException as error:
        end_run(writer, run_id, error)
        raise
    end_run(writer, run_id, None)
    return run_id


def tag_run(reader: StoreReader, run_id: str, tags: dict[str, str]) -> None:
    Writer(reader.client, synchronous=True).tags(run_id, tags)


def download(reader: StoreReader, run_id: str, path: str, destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    return Path(reader.client.download_artifacts(run_id, path, str(destination)))


def open_run(uri: str, run_id: str) -> tuple[StoreReader, RunRecord]:
    """A reader of the experiment that holds `run_id`, and that run's parent (the invocation)."""
    from mlflow.exceptions import MlflowException

    check_readable_store(uri)  # before MlflowClient, which would create the tables
    client = MlflowClient(uri)
    try:
        run = record_of(client.get_run(run_id))
    except MlflowException:
        raise ConfigError(f"run_id={run_id!r} is not a run of {redact_text(uri)}") from None
    reader = StoreReader(client, [run.experiment_id])
    if run.parent_id is not None and run.stage is not None:
        run = reader.run(run.parent_id)
        if run.stage == "search":  # a trial's parent is the search: go one more level up
            run = reader.run(run.parent_id)
    if not run.tags.get("config_hash"):
        raise ConfigError(f"run_id={run_id!r} is not an experiment run (no config_hash tag)")
    if run.status != "FINISHED":  # its logged values are partial: nothing to compare with
        raise ConfigError(
            f"run_id={run_id!r}: experiment run {run.run_id} ended {run.status}; allowed: a "
            "FINISHED run (re-run its command instead)"
        )
    return reader, run
