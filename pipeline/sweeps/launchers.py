"""A sweep's launcher checked against where its jobs log, before the sweep starts."""

from __future__ import annotations

from urllib.parse import urlparse

from pipeline.config import Config
from pipeline.errors import require
from pipeline.tracking.store import resolve_uri  # pure paths: no MLflow

# Launchers whose jobs may run on other hosts: they cannot share one SQLite file (README, "Scaling
# out"). basic, joblib and submitit_local keep every job on this host.
MULTI_HOST_LAUNCHERS = ("submitit_slurm", "ray", "ray_aws")


def check_launcher(launcher: str, cfg: Config) -> None:
    """A sweep whose jobs run on other hosts logs to a tracking server, not a SQLite file."""
    if launcher not in MULTI_HOST_LAUNCHERS or not cfg.tracking.enabled:
        return
    uri = resolve_uri(cfg.tracking.uri)
    require(
        urlparse(uri).scheme != "sqlite",
        f"hydra/launcher={launcher} runs jobs on other hosts, which cannot share the SQLite store "
        f"{uri}; use a tracking server: tracking.uri=http://HOST:5000 "
        "(docs/sweeps.md: Scaling out)",
    )
