"""MLflow from a second process: the experiment never waits for the store.

Importing MLflow and its SQL store, creating runs, writing metrics and rendering learning curves
cost over a second of CPU: about 10 % of the default experiment. A small model trains on one core
of a two-core machine, so that work runs on the other: a tracking process, started (spawned, not
forked: TensorFlow's threads do not survive a fork) as the experiment begins, imports MLflow while
TensorFlow loads, and serves the `Tracker` interface over a pipe. Calls whose answer the experiment
needs (run ids, pretrained weights, the end of a run) wait for it; the rest are sent and not waited
for, and a failure among them is raised at the next call that waits. The pipe is first in, first
out, so ending a run waits for everything logged to it.

The tracking process ignores Ctrl-C and SIGTERM: the experiment catches them and tells it how each
run ended (KILLED). If the experiment dies (kill -9), the pipe closes and the tracking process
ends its open runs FAILED (tagged `error: orphaned: ...`) before it exits.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager, suppress
from dataclasses import asdict
from functools import cached_property
from multiprocessing.connection import Connection
from pathlib import Path

from pipeline.config import TrackingConfig
from pipeline.errors import ConfigError
from pipeline.store import check_reachable, resolve_uri

log = logging.getLogger(__name__)


class RemoteError(Exception):
    """An error of the tracking process, re-raised in the experiment."""


def wanted(cfg) -> bool:
    """Log from a tracking process: tracking on and asked for; no search (a search logs from
    inside its trials, in this process); and not inside a launcher's worker process (joblib's
    loky workers cannot spawn processes of their own), where the jobs already run in parallel."""
    tracking = cfg.tracking
    return (
        tracking.enabled
        and tracking.separate_process
        and cfg.search.tuner == "none"
        and "KERASTUNER_ORACLE_IP" not in os.environ
        and multiprocessing.parent_process() is None
    )


def spawn_if_wanted(cfg) -> RemoteTracker | None:
    """Start the tracking process now, so that MLflow loads while TensorFlow does."""
    return RemoteTracker(TrackingConfig(**cfg.tracking)) if wanted(cfg) else None


class RemoteTracker:
    """The `Tracker` interface, served by a tracking process."""

    enabled = True

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        arguments = json.dumps({"cfg": asdict(cfg), "owner_pid": os.getpid()})
        command = [
            sys.executable,
            "-m",
            "pipeline.tracking_process",
            str(to_child),
            str(from_child),
        ]
        # A plain subprocess, not multiprocessing: nothing joins it at exit, so its interpreter
        # teardown (about a second, after its last write) never delays the experiment.
        self.process = subprocess.Popen(
            [*command, arguments], pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL
        )
        os.close(to_child)
        os.close(from_child)
        self.outbox = Connection(from_parent, readable=False)
        self.inbox = Connection(to_parent, writable=False)

    def call(self, method: str, *args, wait: bool = True):
        self.outbox.send((method, args, wait))
        if not wait:
            return None
        ok, value = self.inbox.recv()
        if not ok:
            raise value
        return value

    @contextmanager
    def _run(self, method: str, *args, wait_on_exit: bool):
        """Runs begin without waiting, and stage runs end without waiting: a stage boundary costs
        no round trip. (An unreachable server was reported by `prepare` already.)"""
        self.call(method, *args, wait=False)
        try:
            yield None
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt)
            self.call("exit_run", type(error).__name__, str(error), interrupted, wait=True)
            raise
        self.call("exit_run", None, None, False, wait=wait_on_exit)

    def prepare(self) -> None:
        """Open the store now that the config and the data are known to be valid. A server that
        does not answer is reported here, in this process, before any training."""
        check_reachable(resolve_uri(self.cfg.uri))
        self.call("prepare", wait=False)

    def experiment_run(self, name: str, tags: dict[str, str]):
        return self._run("enter_experiment", name, tags, wait_on_exit=True)

    def stage_run(self, stage: str):
        return self._run("enter_stage", stage, wait_on_exit=False)

    def callbacks(self, stage: str) -> list:
        from pipeline.callbacks import MetricsCallback

        return [MetricsCallback(RemoteEpochs(self))]

    def weights_store(self) -> RemoteWeightsStore:
        return RemoteWeightsStore(self)

    def log_config(self, resolved: dict) -> None:
        self.call("log_config", resolved, wait=False)

    def log_params(self, params: dict[str, object]) -> None:
        self.call("log_params", params, wait=False)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.call("log_metrics", metrics, wait=False)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.call("set_tags", tags, wait=False)

    def log_learning_curve(self, history: dict[str, list[float]], stage: str, best_epoch: int):
        self.call("log_learning_curve", history, stage, best_epoch, wait=False)

    def run_ids(self) -> dict[str, str]:
        return self.call("run_ids")

    def ui_command(self) -> str:
        return self.call("ui_command")

    def close(self) -> None:
        """Wait until the tracking process has written everything it was sent."""
        if self.process.poll() is None:
            with suppress(EOFError, OSError):  # the tracking process is gone already
                self.call("close")
        self.outbox.close()
        self.inbox.close()


class RemoteEpochs:
    """Each epoch's metrics, sent to the tracking process, which batches them into MLflow."""

    def __init__(self, tracker: RemoteTracker):
        self.tracker = tracker

    def add(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.call("epoch_end", epoch, metrics, wait=False)

    def flush(self) -> None:
        self.tracker.call("train_end", wait=False)


class RemoteWeightsStore:
    """Pretrained backbones in MLflow, reached through the tracking process."""

    def __init__(self, tracker: RemoteTracker):
        self.tracker = tracker

    def find(self, recipe_hash: str) -> tuple[Path, str] | None:
        found = self.tracker.call("find_weights", recipe_hash)
        return None if found is None else (Path(found[0]), found[1])

    def save(self, recipe: dict, weights_file: Path, metrics: dict[str, float]) -> str:
        return self.tracker.call("save_weights", recipe, str(weights_file), metrics)


class Served:
    """The tracking process's side: an in-process `Tracker` driven call by call."""

    def __init__(self, cfg: dict, owner_pid: int):
        from pipeline import tracking  # MLflow and its SQL store: the slow import, done now

        tracking.OWNER_PID = owner_pid  # runs die with the experiment, not with this process
        self.cfg = TrackingConfig(**cfg)
        self.owner_pid = owner_pid
        self.open_runs: list = []
        self.epochs = None  # the current stage's MetricsBuffer

    @cached_property
    def tracker(self):
        """The store is opened (and created) only once the experiment's config is valid."""
        from pipeline.tracking import Tracker

        return Tracker(self.cfg)

    def prepare(self) -> None:
        _ = self.tracker
        # matplotlib, for the learning curves, loads while the first stage trains
        threading.Thread(target=importlib.import_module, args=("pipeline.plots",)).start()

    def enter_experiment(self, name: str, tags: dict[str, str]) -> None:
        self.enter(self.tracker.experiment_run(name, tags))

    def enter_stage(self, stage: str) -> None:
        self.enter(self.tracker.stage_run(stage))

    def enter(self, run) -> None:
        run.__enter__()
        self.open_runs.append(run)

    def exit_run(self, error_type: str | None, message: str | None, interrupted: bool) -> None:
        """End the innermost run as the experiment's `with` block ended."""
        self.train_end()
        run = self.open_runs.pop()
        if error_type is None:
            run.__exit__(None, None, None)
            return
        error = (
            KeyboardInterrupt(message)
            if interrupted
            else type(error_type, (Exception,), {})(message)
        )
        run.__exit__(type(error), error, None)

    def orphaned(self) -> None:
        """The experiment died (kill -9): its open runs end FAILED, as `mark_orphans` would."""
        from pipeline.tracking import Orphaned, orphan_message

        while self.open_runs:
            error = Orphaned(orphan_message(self.owner_pid))
            self.open_runs.pop().__exit__(Orphaned, error, None)

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.epochs is None:
            self.epochs = self.tracker.metrics_buffer()
        self.epochs.add(epoch, metrics)

    def train_end(self) -> None:
        if self.epochs is not None:
            self.epochs.flush()
            self.epochs = None

    def find_weights(self, recipe_hash: str) -> tuple[str, str] | None:
        found = self.tracker.weights_store().find(recipe_hash)
        return None if found is None else (str(found[0]), found[1])

    def save_weights(self, recipe: dict, weights_file: str, metrics: dict[str, float]) -> str:
        return self.tracker.weights_store().save(recipe, Path(weights_file), metrics)

    def __getattr__(self, method: str):
        return getattr(self.tracker, method)  # log_config, log_params, run_id, ui_command, ...


def portable(error: Exception) -> Exception:
    """An exception that survives pickling; config errors keep their type (one-line report)."""
    if isinstance(error, ConfigError):
        return ConfigError(str(error))
    return RemoteError(f"{type(error).__name__}: {error}")


def serve(inbox: Connection, outbox: Connection, cfg: dict, owner_pid: int) -> None:
    """The tracking process: answer calls until `close` or until the experiment is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the experiment reports interruptions
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    served, failure = None, None
    try:
        served = Served(cfg, owner_pid)
    except Exception as error:  # e.g. an unreachable server: raised at the first call
        failure = portable(error)
    while True:
        try:
            method, args, wait = inbox.recv()
        except (EOFError, OSError):  # the experiment died
            if served is not None:
                served.orphaned()
            return
        if method == "close":
            outbox.send((True, None))  # every write was synchronous: all is in the store
            return
        try:
            if failure is not None:
                raise failure
            value = getattr(served, method)(*args)
        except Exception as error:
            failure = failure or portable(error)
            value = None
        if wait:
            outbox.send((failure is None, value if failure is None else failure))
            failure = None if served is not None else failure


if __name__ == "__main__":  # started by RemoteTracker: <read fd> <write fd> <json arguments>
    logging.basicConfig(level=logging.WARNING)
    arguments = json.loads(sys.argv[3])
    from pipeline import tracking_process  # errors pickled as this module's, not __main__'s

    tracking_process.serve(
        Connection(int(sys.argv[1]), writable=False),
        Connection(int(sys.argv[2]), readable=False),
        arguments["cfg"],
        arguments["owner_pid"],
    )
