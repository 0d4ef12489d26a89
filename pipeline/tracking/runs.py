"""The run tree in MLflow: creating runs with explicit tags, ending them truthfully, orphans.

Runs end FINISHED, FAILED (with an `error` tag) or KILLED (Ctrl-C, SIGTERM), never RUNNING. A
run's process is tagged (`host`, `pid`), so that a later invocation can tell a run whose process
died (kill -9, power loss) from a live one and end it FAILED: the orphan sweep. A process on
another host cannot be asked: its runs end FAILED once its heartbeat (heartbeat.py) is older than
`tracking.orphan_after_s`.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
from datetime import datetime, timezone

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.interrupts import interrupt_received
from pipeline.tracking.heartbeat import last_heartbeat
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


def owner_of(run: RunRecord) -> tuple[str | None, str | None]:
    return run.tags.get("host"), run.tags.get("pid")


def silent_processes(runs: list[RunRecord], orphan_after_s: float) -> dict[tuple, int]:
    """Processes on other hosts whose newest heartbeat (on any of their runs) is older than
    `orphan_after_s`: (host, pid) -> that heartbeat. A process that never beat is left alone."""
    newest: dict[tuple, int] = {}
    for run in runs:
        beat = last_heartbeat(run.tags)
        if run.tags.get("host") != socket.gethostname() and beat is not None:
            owner = owner_of(run)
            newest[owner] = max(beat, newest.get(owner, 0))
    now = time.time()
    return {owner: beat for owner, beat in newest.items() if now - beat > orphan_after_s}


def orphan_reason(run: RunRecord, silent: dict[tuple, int]) -> str:
    beat = silent.get(owner_of(run))
    if beat is None:
        return orphan_message(run.tags["pid"])
    since = datetime.fromtimestamp(beat, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"orphaned: process {run.tags['pid']} on {run.tags['host']} silent since {since}"


def end_orphan(client: MlflowClient, run_id: str, reason: str) -> bool:
    """End an orphan FAILED with its reason; False when another process ends it at this moment
    (the jobs of a rerun sweep start together and find the same orphans: the second insert of
    the `error` tag fails on PostgreSQL with a unique-key violation, and the first ends the run)."""
    try:
        client.set_tag(run_id, "error", reason)
    except MlflowException:
        if "error" in client.get_run(run_id).data.tags:
            return False
        raise
    terminate_run(client, run_id, "FAILED")
    return True


def mark_orphans(client: MlflowClient, reader: StoreReader, orphan_after_s: float) -> list[str]:
    """End FAILED the RUNNING runs whose process is dead: on this host, no such pid (kill -9,
    power loss); on another host, no heartbeat for `orphan_after_s` (a node or job killed)."""
    running = reader.running_runs()
    silent = silent_processes(running, orphan_after_s)
    found = [r for r in running if process_dead(r.tags) or owner_of(r) in silent]
    orphans = [r for r in found if end_orphan(client, r.run_id, orphan_reason(r, silent))]
    if orphans:
        log.warning(
            "marked %d orphaned RUNNING run(s) FAILED: %s",
            len(orphans),
            [r.run_id for r in orphans],
        )
    return [r.run_id for r in orphans]
