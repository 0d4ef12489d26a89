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


# What a launcher's or sweeper's value means beyond its type (the plugins' dataclasses check
# types at composition): (config node, key, allowed, check). Each failed at the first job with a
# traceback and a FAILED sweep run: joblib's `n_jobs == 0 in Parallel has no meaning`, submitit's
# UncompletedJobError, Optuna's `No trials are completed yet`.
VALUE_RULES = (
    ("launcher", "n_jobs", "an integer other than 0 (-1: one per CPU)", lambda v: v != 0),
    ("launcher", "timeout_min", "minutes > 0", lambda v: v > 0),
    ("sweeper", "n_trials", "an integer >= 1", lambda v: v >= 1),
    ("sweeper", "n_jobs", "an integer >= 1", lambda v: v >= 1),
)


def check_launcher_values(hydra) -> None:
    """The composed `hydra` config's launcher and sweeper values, before the sweep starts."""
    for node, key, allowed, fits in VALUE_RULES:
        section = hydra.get(node)
        if section is None or key not in section or section[key] is None:
            continue
        value = section[key]
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue  # a type mistake fails composition first
        target = str(section.get("_target_", ""))
        if node == "sweeper" and "optuna" not in target.lower():
            continue  # the basic sweeper's n_jobs-like keys mean something else
        require(fits(value), f"hydra.{node}.{key}={value} is out of range; allowed: {allowed}")
