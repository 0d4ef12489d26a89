"""The Hydra application behind `python -m pipeline`: compose, check, run one experiment a job."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipeline import PROJECT_ROOT
from pipeline.cli.guard import run_guarded
from pipeline.cli.process import (
    configured,
    import_tensorflow_quietly,
    quiet_tensorflow_startup,
)
from pipeline.config import register_configs
from pipeline.interrupts import interrupts_unwind
from pipeline.sweeps.resume import finished_objective

register_configs()


def configured_experiment(cfg: DictConfig) -> float:
    skipped = finished_objective(cfg)  # a sweep job whose configuration already finished
    if skipped is not None:
        return skipped
    import_tensorflow_quietly()  # TensorFlow loads only after composition
    from pipeline.experiment import run_experiment

    with interrupts_unwind(), configured(cfg):  # from here on, Ctrl-C closes the runs
        return run_experiment(cfg)


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    quiet_tensorflow_startup()
    return run_guarded(lambda: configured_experiment(cfg))
