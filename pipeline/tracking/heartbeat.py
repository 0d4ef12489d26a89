"""A live process's runs say so: a `heartbeat` tag (Unix seconds) refreshed on its top run.

The orphan sweep can ask the operating system whether a run's process is alive only on the host
that ran it. A job on another host (a SLURM node whose job the scheduler killed, a Ray worker
that died) leaves its runs RUNNING with nobody there to ask; instead its heartbeat stops, and a
later command on any host ends the runs of a process whose heartbeat is older than
`tracking.orphan_after_s` (runs.py, `mark_orphans`).
"""

from __future__ import annotations

import logging
import threading
import time

from mlflow.tracking import MlflowClient

from pipeline.config import HEARTBEAT_S

log = logging.getLogger(__name__)

HEARTBEAT_TAG = "heartbeat"


class Heartbeat:
    """Tags `run_id` with the time now, then every `interval_s` until the block ends.

    A beat that fails (the server is down for a while) is skipped: the next one may get through,
    and the run's own writes report a dead server.
    """

    def __init__(self, client: MlflowClient, run_id: str, interval_s: float = HEARTBEAT_S):
        self.client, self.run_id, self.interval_s = client, run_id, interval_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat_until_stopped, daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()  # not joined: a beat stuck on a dead server must not hold the exit

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def beat(self) -> None:
        try:
            self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
        except Exception as error:
            log.debug("heartbeat of run %s skipped: %s", self.run_id, error)

    def beat_until_stopped(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.beat()


def last_heartbeat(tags: dict[str, str]) -> int | None:
    value = tags.get(HEARTBEAT_TAG, "")
    return int(value) if value.isdigit() else None
