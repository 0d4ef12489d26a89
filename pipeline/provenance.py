"""What a run needs to be traced and re-run: git commit, config hash, the command, the sweep."""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import subprocess
from importlib import metadata

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from pipeline import PROJECT_ROOT

# Where results go and whether a sweep skips finished jobs do not change what the results are.
UNTRACKED_KEYS = ("tracking", "sweep")
# Where a run writes, not what it computes: left out of the variant (with the seed).
OUTPUT_KEYS = (("search", "directory"), ("search", "worker_wait_s"))


KEY_PACKAGES = ("tensorflow", "keras", "keras-tuner", "mlflow", "hydra-core", "numpy", "scipy")


def package_versions() -> dict[str, str]:
    """Python's and the key packages' versions, read from their metadata (nothing imported)."""
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """HEAD of the project's checkout, suffixed `-dirty` when it has uncommitted changes."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), *args],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def config_hash(resolved: dict) -> str:
    """A short hash of everything that decides the numbers (the resolved config minus tracking)."""
    meaningful = {k: v for k, v in resolved.items() if k not in UNTRACKED_KEYS}
    return hashlib.sha256(json.dumps(meaningful, sort_keys=True).encode()).hexdigest()[:12]


def variant_hash(resolved: dict) -> str:
    """A short hash of the configuration without its seed and without where it writes: runs of
    one variant over several seeds share it (the samples of a study)."""
    variant = {k: v for k, v in resolved.items() if k not in (*UNTRACKED_KEYS, "seed")}
    for group, key in OUTPUT_KEYS:
        if isinstance(variant.get(group), dict):
            variant[group] = {k: v for k, v in variant[group].items() if k != key}
    return hashlib.sha256(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:12]


CONFIG_GROUPS = frozenset(p.name for p in (PROJECT_ROOT / "conf").iterdir() if p.is_dir())
# Overrides that the name shows otherwise (dataset, backbone, seed) or that change no result.
UNNAMED = ("dataset", "backbone", "seed", "tracking", "sweep", "hydra")


def run_name(dataset: str, backbone: str, seed: int, command: str) -> str:
    """What tells a run apart in the UI's list: `<dataset>-<backbone>-<changes>-seed<N>`.

    The changes are the command's overrides: a config group by its option (`top2`, `smoke`), any
    other key as `key=value`; a preset (`experiment=...`) stands in for dataset and backbone.
    """
    head, changes = [dataset, backbone], []
    for override in shlex.split(command)[3:]:  # after `python -m pipeline`
        key, _, value = override.lstrip("+~").partition("=")
        if key == "experiment":
            head = [value]
        elif key.split(".")[0] not in UNNAMED and not key.startswith("-"):
            changes.append(value if key in CONFIG_GROUPS else f"{key}={value}")
    return "-".join([*head, *changes, f"seed{seed}"])


def hydra_tags() -> dict[str, str]:
    """The command that reproduces this job, its output folder and, in a sweep, the sweep's id."""
    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    tags = {
        "command": shlex.join(["python", "-m", "pipeline", *overrides]),
        "output_dir": str(hydra.runtime.output_dir),
    }
    if hydra.mode == RunMode.MULTIRUN:
        tags["sweep_id"] = str(hydra.sweep.dir)
        tags["sweep_job"] = str(hydra.job.num)
    return tags
