"""The sequential sweeper's options (conf/hydra/sweeper/sequential.yaml) and their checks, and
where Hydra finds the sweeper's class; the sweeper itself is pipeline/sweeps/sequential/.

Checked before anything runs (pipeline/cli/preflight.py) and again by the sweeper, so that a bad
value is one line and exit 2 before any job and before the sweep's MLflow run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import STAGES
from pipeline.errors import ConfigError, require

NAME = "sequential"  # hydra/sweeper=sequential
# The statistics' own defaults (pipeline/report/sequential.py: MIN_SEEDS, DEFAULT_COMPARISONS);
# tests/test_sequential_sweep.py checks that they agree.
MIN_SEEDS = 5
DEFAULT_COMPARISONS = [
    "feature_extraction-scratch",
    "fine_tune-scratch",
    "fine_tune-feature_extraction",
]
# What an experiment run carries per stage as `<stage>_<metric>` (pipeline/experiment.py), read
# from the parent runs in one query per variant.
METRICS = ("test_accuracy",)
# The Hydra plugin shim: Hydra 1.3 instantiates plugins only from the `hydra_plugins` namespace
# package, which this folder joins once it is on sys.path (expose_plugin).
PLUGIN_DIR = Path(__file__).parent / "sequential" / "plugin"


@dataclass
class SequentialOptions:
    """The keys of `hydra.sweeper` for hydra/sweeper=sequential (the yaml says what each does)."""

    _target_: str = "hydra_plugins.transfer_lab_sweeper.sequential_sweeper.SequentialSweeper"
    max_seeds: int = 30
    batch_size: int = 5
    min_seeds: int = MIN_SEEDS
    alpha: float = 0.05
    margin: float = 0.01
    comparisons: list[str] = field(default_factory=lambda: list(DEFAULT_COMPARISONS))
    metric: str = "test_accuracy"
    first_seed: int = 0

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [parse_comparison(name) for name in self.comparisons]


def parse_comparison(name: str) -> tuple[str, str]:
    """ "fine_tune-scratch" -> ("fine_tune", "scratch"); ConfigError naming it otherwise."""
    first, _, second = str(name).partition("-")
    require(
        first in STAGES and second in STAGES and first != second,
        f"hydra.sweeper.comparisons: {name!r} is not a pair of two stages 'first-second'; "
        f"stages: {', '.join(STAGES)}",
    )
    return first, second


def options_of(node: DictConfig | dict) -> SequentialOptions:
    """The `hydra.sweeper` node as typed options; a wrong type or unknown key is one line."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SequentialOptions), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or ""
        raise ConfigError(f"hydra.sweeper.{key}: {str(error).splitlines()[0]}") from error


def check_options(options: SequentialOptions, overrides: list[str]) -> None:
    """The options make sense together and the command line (`overrides`, its task overrides)
    leaves the seeds to the sweeper: ConfigError naming the value and what is allowed."""
    o = options
    require(o.min_seeds >= 2, f"hydra.sweeper.min_seeds={o.min_seeds} but it must be >= 2")
    require(
        o.max_seeds >= o.min_seeds,
        f"hydra.sweeper.max_seeds={o.max_seeds} but it must be >= min_seeds={o.min_seeds}",
    )
    require(o.batch_size >= 1, f"hydra.sweeper.batch_size={o.batch_size} but it must be >= 1")
    require(0 < o.alpha < 0.5, f"hydra.sweeper.alpha={o.alpha} but it must lie in (0, 0.5)")
    require(
        0 <= o.margin < 1, f"hydra.sweeper.margin={o.margin} but it must lie in [0, 1) (accuracy)"
    )
    require(o.first_seed >= 0, f"hydra.sweeper.first_seed={o.first_seed} but it must be >= 0")
    require(
        o.metric in METRICS,
        f"hydra.sweeper.metric={o.metric} is not one the sweeper reads; "
        f"allowed: {', '.join(METRICS)}",
    )
    require(bool(o.comparisons), "hydra.sweeper.comparisons is empty; give at least one pair")
    for name in o.comparisons:
        parse_comparison(name)
    seeds = [x for x in overrides if x.lstrip("+~").split("=", 1)[0] == "seed"]
    require(
        not seeds,
        f"{seeds[0] if seeds else ''}: hydra/sweeper={NAME} chooses the seeds itself "
        "(hydra.sweeper.first_seed, max_seeds); drop seed= from the command line",
    )


def check_variant(options: SequentialOptions, stages: list[str], tracking: bool) -> None:
    """One composition of the sweep runs the compared stages and logs to a store to read."""
    for first, second in options.pairs:
        missing = [stage for stage in (first, second) if stage not in stages]
        require(
            not missing,
            f"hydra.sweeper.comparisons: {first}-{second} needs stage {', '.join(missing)}, "
            f"which this composition does not run (stages={list(stages)})",
        )
    require(
        tracking,
        f"hydra/sweeper={NAME} decides from the runs in the MLflow store; tracking=off has none "
        "(use tracking=sqlite or tracking=server)",
    )


def chosen_options(hydra_cfg: DictConfig, overrides: list[str]) -> SequentialOptions | None:
    """The checked options when the composition's sweeper is this one, else None."""
    if hydra_cfg.runtime.choices.get("hydra/sweeper") != NAME:
        return None
    options = options_of(hydra_cfg.sweeper)
    check_options(options, overrides)
    return options


def expose_plugin() -> None:
    """Put the sweeper's shim in Hydra's `hydra_plugins` namespace for this process and the
    processes it starts (joblib, submitit and Ray workers unpickle Hydra's plugin registry, which
    names the shim's class). An editable install cannot do it: Hydra lists plugins with pkgutil,
    which does not see setuptools' editable namespace mappings."""
    folder = str(PLUGIN_DIR)
    if folder not in sys.path:
        sys.path.append(folder)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, folder])
