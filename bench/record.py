"""A bench's result as JSON in bench/results/: its figures with the machine, CPU count, date,
repeats and package versions, so that docs/benchmarks.md (python bench/publish.py) is made from
data, never typed by hand."""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("tensorflow", "keras", "keras-tuner", "mlflow", "hydra-core", "numpy", "scipy")


def machine() -> str:
    """The CPU's model name where Linux says it, else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_result(name: str, figures: dict, repeats: int, **settings: object) -> Path:
    """bench/results/<name>.json with `figures` and how they were measured; its path."""
    result = {
        "bench": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        "settings": settings,
        "versions": versions(),
        "figures": figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written: {path}")
    return path
