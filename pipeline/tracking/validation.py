"""The `tracking` config's values, checked before anything trains (the store itself is opened once
the data has loaded). Pure paths and text: no MLflow."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from pipeline.config import MIN_ORPHAN_AFTER_S, Config
from pipeline.errors import require
from pipeline.tracking.sqlite_file import check_store_file, writable_sqlite

# Stores MLflow's client logs to; "" is a plain path (MLflow's file store).
TRACKING_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql")
MAX_HTTP_RETRIES = 10  # MLflow refuses more (_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT)


def check_tracking(cfg: Config) -> None:
    """The store's scheme, the experiment's name and a local store's write access, checked before
    anything trains (the store itself is opened once the data has loaded)."""
    tracking = cfg.tracking
    if not tracking.enabled:
        return
    for key in ("experiment_name", "backbone_experiment"):
        name = getattr(tracking, key)
        require(bool(name and name.strip()), f"tracking.{key}={name!r} is empty; allowed: a name")
    require(
        0 <= tracking.http_retries <= MAX_HTTP_RETRIES,
        f"tracking.http_retries={tracking.http_retries} is out of range; allowed: 0 to "
        f"{MAX_HTTP_RETRIES} (MLflow's limit)",
    )
    require(
        tracking.http_timeout_s >= 1,
        f"tracking.http_timeout_s={tracking.http_timeout_s} is out of range; allowed: >= 1",
    )
    require(
        tracking.orphan_after_s >= MIN_ORPHAN_AFTER_S,
        f"tracking.orphan_after_s={tracking.orphan_after_s} is out of range; allowed: >= "
        f"{MIN_ORPHAN_AFTER_S:.0f} (a live process tags its heartbeat once a minute)",
    )
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    scheme = urlparse(uri).scheme.split("+")[0]  # postgresql+psycopg2 is postgresql
    require(
        scheme in TRACKING_SCHEMES,
        f"tracking.uri scheme {scheme!r} is not supported (use sqlite:///..., http(s)://..., "
        "or a path)",
    )
    if scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        problem = writable_sqlite(db)
        require(problem is None, f"tracking.uri: the SQLite store cannot be written: {problem}")
        check_store_file(db)
