"""The run tree in MLflow: creating runs with explicit tags, ending them truthfully, orphans.

Runs end FINISHED, FAILED (with an `error` tag) or KILLED (Ctrl-C, SIGTERM), never RUNNING. A
run's process is tagged (`host`, `pid`), so that a later invocation can tell a run whose process
died (kill -9, power loss) from a live one and end it FAILED: the orphan sweep.
"""

from __future__ import annotations

import getpass
import logging

from mlflow.tracking import MlflowClient

from pipeline.runtime import interrupt_received
from pipeline.tracking.owner import process_dead, process_tags
from pipeline.tracking.query import RunRecord, StoreReader
from pipeline.tracking.store import stop_retrying, terminate_run
from pipeline.tracking.writer import TAG_LIMIT, Writer

log = logging.getLogger(__name__)


def source_tags() -> dict[str, str]:
    """The tags MLflow's run-context providers would add. Resolving them costs ~0.1 s a run
    (a git repository lookup), and the commit is tagged by the pipeline already."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.name": "pipeline", "mlflow.source.type": "LOCAL"}


def orphan_message(pid: int | str) -> str:
    return f"orphaned: process {pid} died"


class RunFailed(Exception):
    """An error whose message is already what the run's `error` tag should say."""


def error_tag(error: BaseException) -> str:
    """One line: `Type: message` (the first line of a multi-line message)."""
    text = str(error) if isinstance(error, RunFailed) else f"{type(error).__name__}: {error}"
    return (text.splitlines() or [text])[0][:TAG_LIMIT]


def end_status(error: BaseException | None) -> str:
    if error is None:
        return "FINISHED"
    interrupted = isinstance(error, KeyboardInterrupt | SystemExit) or interrupt_received()
    return "KILLED" if interrupted else "FAILED"


def create_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    tags: dict[str, str],
    parent_id: str | None = None,
) -> str:
    """A new RUNNING run with explicit tags (no git lookup per run), nested under `parent_id`."""
    tags = {**source_tags(), **tags, **process_tags()}
    if parent_id is not None:
        tags["mlflow.parentRunId"] = parent_id
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def end_run(writer: Writer, run_id: str, error: BaseException | None) -> Exception | None:
    """Wait for the run's writes, then end it: FINISHED, or FAILED/KILLED with an `error` tag.

    Returns the error of a queued write that failed (it fails the run, which then must not be
    reported as a success). Ending is attempted even when tagging fails, so that a broken store
    leaves no run RUNNING that it can still close.
    """
    failed_write = None
    if error is None:
        try:
            writer.wait(run_id)
        except Exception as failed:
            error = failed_write = failed
    else:
        writer.pending.pop(run_id, None)
    status = end_status(error)
    if status == "KILLED":
        stop_retrying()  # the user wants the command to end: no write waits on a dead server
    try:
        if error is not None:
            message = "interrupted" if status == "KILLED" else error_tag(error)
            writer.client.set_tag(run_id, "error", message)
    finally:
        terminate_run(writer.client, run_id, status)
    return failed_write


def mark_orphans(client: MlflowClient, reader: StoreReader) -> list[str]:
    """End FAILED the RUNNING runs whose process, on this host, is dead (kill -9, power loss)."""
    orphans: list[RunRecord] = [r for r in reader.running_runs() if process_dead(r.tags)]
    for run in orphans:
        client.set_tag(run.run_id, "error", orphan_message(run.tags["pid"]))
        terminate_run(client, run.run_id, "FAILED")
    if orphans:
        log.warning(
            "marked %d orphaned RUNNING run(s) FAILED: %s",
            len(orphans),
            [r.run_id for r in orphans],
        )
    return [r.run_id for r in orphans]
