"""A SQLite store's file: where it is, whether it can be written, whether it is sound, and the
lock that serialises its creation. Pure paths and sqlite3: no MLflow (validation.py checks a
store with these before anything loads)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlparse

from pipeline.errors import ConfigError


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, or None for other stores."""
    if urlparse(uri).scheme != "sqlite":
        return None
    return Path(uri.removeprefix("sqlite:///"))


MIN_FREE_BYTES = 2**20  # a run's writes to a SQLite store take tens of KiB; creating it ~1 MiB


def writable_sqlite(path: Path) -> str | None:
    """Why a SQLite store at `path` could not be written, or None."""
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is read-only"
    if not path.exists() and (
        folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK)
    ):
        return f"{folder} is not a writable folder (the store would be created in it)"
    free = shutil.disk_usage(folder).free if folder is not None else MIN_FREE_BYTES
    if free < MIN_FREE_BYTES:
        return f"no space left on device writing {path} ({free // 1024} KiB free)"
    return None


SQLITE_HEADER = b"SQLite format 3\x00"
LOCK_TIMEOUT_S = 300  # a migration of a large store takes a while; a dead holder frees the lock


def check_sqlite_file(db: Path) -> None:
    """Refuse, in one line saying how to recover, a file that is not SQLite or that someone
    else's interrupted migration left half-done (Alembic's `_alembic_tmp_*` tables)."""
    import sqlite3

    if not db.is_file() or db.stat().st_size == 0:
        return
    invalid = ConfigError(
        f"mlflow.db is not a valid SQLite database: {db}; move it away (or restore a backup), "
        "or point tracking.uri at another store"
    )
    with db.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise invalid
    try:  # a valid header over a truncated or overwritten body
        with closing(sqlite3.connect(db)) as connection:
            query = "SELECT name FROM sqlite_master WHERE type='table'"
            names = connection.execute(query).fetchall()
    except sqlite3.DatabaseError as error:
        raise invalid from error
    leftovers = sorted(n for (n,) in names if n.startswith("_alembic_tmp_"))
    if leftovers:
        raise ConfigError(
            f"the MLflow store {db} was left half-migrated ({', '.join(leftovers)}); recover: "
            f"drop those tables and run `mlflow db upgrade sqlite:///{db}`, or move the file away"
        )


# Tables every MLflow SQLite store has once MLflow has created it (and Alembic's version table).
MLFLOW_TABLES = ("alembic_version", "experiments", "runs")


def check_existing_store(db: Path, key: str = "tracking_uri") -> None:
    """Readers (report, reproduce, replicate) never create or migrate a store: refuse, in one
    line naming `key`, a file that is missing, empty, not SQLite or not an MLflow store, looking
    at it read-only before any MLflow client touches it (which would create its tables)."""
    import sqlite3

    if not db.is_file():
        raise ConfigError(f"{key}: no MLflow store at {db}: run an experiment first")
    invalid = ConfigError(
        f"{key}: {db} is not an MLflow store (no MLflow tables in it); point {key} at one"
    )
    with db.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:  # an empty file too
            raise invalid
    try:  # read-only: nothing is written, not even a journal
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            names = {n for (n,) in connection.execute("SELECT name FROM sqlite_master")}
            version = None
            if "alembic_version" in names:
                version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as error:
        raise invalid from error
    if not set(MLFLOW_TABLES) <= names or not version:
        raise invalid
    leftovers = sorted(n for n in names if n.startswith("_alembic_tmp_"))
    if leftovers:
        raise ConfigError(
            f"{key}: the MLflow store {db} was left half-migrated ({', '.join(leftovers)}); "
            f"recover: drop those tables and run `mlflow db upgrade sqlite:///{db}`"
        )


def check_store_file(db: Path) -> None:
    """Refuse an unusable store file before anything loads (validation.py). Under the creation
    lock: another command's migration in progress is waited for, not taken for a half-done one."""
    if db.is_file():
        with creation_lock(f"sqlite:///{db}"):
            pass  # the lock's holder checks the file


@contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Held while a SQLite store is created or migrated: concurrent first runs (a parallel sweep,
    several commands at once) wait for the first instead of racing it. A lock file beside the
    database; other stores need none (the server serialises)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    lock = FileLock(f"{db}.lock", timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except PermissionError as error:  # a read-only or immutable folder: SQLite cannot write there
        raise ConfigError(
            f"the MLflow store {db} cannot be written ({error.strerror} creating "
            f"{lock.lock_file}); point tracking.uri at a writable one"
        ) from None
    try:
        check_sqlite_file(db)
        yield
    finally:
        lock.release()
