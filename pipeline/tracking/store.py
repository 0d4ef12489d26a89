"""Where the MLflow store is, and getting it ready before anything is logged.

Default: SQLite at <project root>/mlruns/mlflow.db, artifacts under <project root>/mlruns/artifacts,
whatever directory Hydra runs a job in (MLflow >= 3.7 would otherwise use the current directory).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError
from pipeline.tracking import mlflow_internals
from pipeline.tracking.environment import check_mlflow_environment
from pipeline.tracking.mlflow_internals import ASYNC_QUEUE_LOGGER, STORE_ERROR_LOGGER
from pipeline.tracking.secrets import redact_text
from pipeline.tracking.sqlite_file import check_existing_store, creation_lock, sqlite_path

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

SERVER_TIMEOUT_S = 5


def default_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    """tracking.uri, else MLFLOW_TRACKING_URI, else the project's SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def artifact_root_for(uri: str) -> str | None:
    """Artifacts beside a SQLite database (<db folder>/artifacts); a server decides for itself."""
    db = sqlite_path(uri)
    return (db.resolve().parent / "artifacts").as_uri() if db is not None else None


def health_failure(uri: str, timeout_s: float) -> Exception | None:
    """Why a tracking server (http/https) fails its health check now; None when it answers (or
    the store is not a server)."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as error:
        return error
    return None


def server_down(uri: str) -> bool:
    """Whether a tracking server fails to answer its health check now (mid-run: a short wait)."""
    return health_failure(uri, timeout_s=2) is not None


def check_reachable(uri: str) -> None:
    """A SQLite store's folder made; a tracking server that does not answer is one line."""
    if urlparse(uri).scheme == "sqlite":
        sqlite_path(uri).parent.mkdir(parents=True, exist_ok=True)
    check_server_answers(uri)


def check_server_answers(uri: str, key: str = "tracking.uri") -> None:
    """Fail fast, in one line, when a tracking server does not answer (instead of long retries).
    `key`: the option that named the store (`tracking_uri` for the report and reproduce)."""
    error = health_failure(uri, SERVER_TIMEOUT_S)
    if error is not None:
        other = "use tracking=sqlite" if key == "tracking.uri" else f"pass {key}=sqlite:///..."
        raise ConfigError(
            f"{key}={redact_text(uri)} is unreachable ({type(error).__name__}); "
            f"start the server (mlflow server --host 127.0.0.1 --port 5000) or {other}"
        )


def check_readable_store(uri: str, key: str = "tracking_uri") -> None:
    """What a reader (report, reproduce, replicate) checks before it opens a store: a SQLite store
    exists and is MLflow's (never created or migrated by reading); a server answers."""
    db = sqlite_path(uri)
    if db is not None:
        check_existing_store(db, key)
    check_server_answers(uri, key)


# MLflow 3's UI opens an experiment on what its kind says: runs for model development, traces
# (an empty GenAI overview here) otherwise.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created (artifacts pinned beside the store) if missing, and
    marked a model-development experiment so that the UI opens on its runs."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_root_for(uri), tags=EXPERIMENT_KIND
            )
        except MlflowException:  # created meanwhile by a parallel job
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"tracking.experiment_name={name!r} is a deleted MLflow experiment; restore it "
            "(mlflow experiments restore) or choose another name"
        )
    for key, value in EXPERIMENT_KIND.items():
        if key not in experiment.tags:  # made before this tag was set; a user's choice is kept
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# MLflow reads these at every HTTP request (declared in mlflow.environment_variables).
HTTP_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_BACKOFF = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
TIMEOUT_AFTER_INTERRUPT_S = 3


@contextmanager
def bounded_http(retries: int, timeout_s: int) -> Iterator[None]:
    """A tracking server's requests retried `retries` times (waits of 0, 2, 4 ... s), each at
    most `timeout_s` long, for the block; the environment as it was after.

    MLflow's defaults (7 retries with doubling waits, 120 s a request) froze a job for minutes
    when its server died, and every write of the clean-up after Ctrl-C waited as long again.
    """
    values = {HTTP_RETRIES: str(retries), HTTP_BACKOFF: "1", HTTP_TIMEOUT: str(timeout_s)}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def quiet_http_logs() -> Iterator[None]:
    """urllib3's `Retrying` warnings, MLflow's queue's `Failed to log run data` errors and its
    SQL store's tracebacks kept out of the terminal for the block: a failed write fails its run,
    and a store that stopped taking writes ends the command with one line naming it."""
    names = ("urllib3.connectionpool", ASYNC_QUEUE_LOGGER, STORE_ERROR_LOGGER)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def stop_retrying() -> None:
    """After Ctrl-C or SIGTERM: each request tried once, briefly, so that the runs end KILLED at
    once, or (the server gone) the command ends within seconds anyway. `bounded_http` restores."""
    os.environ[HTTP_RETRIES] = "0"
    os.environ[HTTP_TIMEOUT] = str(TIMEOUT_AFTER_INTERRUPT_S)


def shut_down_async_logging(client: MlflowClient) -> None:
    """Write what MLflow's asynchronous queue still holds and stop its threads.

    MlflowClient has no public call for this; its store does (the one `log_batch(...,
    synchronous=False)` queued to). Without it the queue's threads outlive the command.
    """
    mlflow_internals.shut_down_async_logging(client)


def terminate_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End a run with `status` without stopping MLflow's asynchronous queue.

    `MlflowClient.set_terminated` first shuts the whole queue down, and the queue's thread only
    notices within a second (it waits in `queue.get(timeout=1)`): ~0.8 s a run. The Writer has
    already waited for this run's own queued writes, so the run's end goes to the store directly;
    other runs' writes keep flowing, and the queue is stopped once, when the tracker closes.
    """
    mlflow_internals.end_run_at_once(client, run_id, status)


def prepare_store(uri: str, experiment_names: list[str]) -> MlflowClient:
    """Create the store's tables and experiments once, so parallel jobs do not race on them.

    A SQLite store that cannot be written (a full disk, a read-only file or file system) is one
    line naming the cause and the file, before anything trains."""
    from mlflow.tracking import MlflowClient

    check_mlflow_environment()
    check_reachable(uri)
    try:
        with creation_lock(uri):
            client = MlflowClient(uri)  # its first request creates the store's tables
            for name in experiment_names:
                ensure_experiment(client, name, uri)
    except ConfigError:
        raise
    except Exception as error:
        problem = storage_problem(error, sqlite_path(uri))
        if problem is None:
            raise
        raise ConfigError(problem) from None
    return client


# What SQLite (or the file system) says when a store cannot be written, and what it means.
STORAGE_ERRORS = (
    (("database or disk is full", "no space left"), "no space left on device writing {db}"),
    (
        ("readonly database", "read-only file system"),
        "the MLflow store {db} cannot be written (read-only); point tracking.uri at a writable one",
    ),
)


def storage_problem(error: BaseException, db: Path | None) -> str | None:
    """The one-line cause of a store write that failed for want of space or write access."""
    if db is None:
        return None
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen).lower()
        for needles, message in STORAGE_ERRORS:
            if any(needle in text for needle in needles):
                # an artifact (or any file) that could not be written names itself
                written = getattr(seen, "filename", None) or db
                return message.format(db=written)
        seen = seen.__cause__ or seen.__context__
    return None
