"""`python -m pipeline [overrides]`: one experiment, or a sweep with `-m`."""

import sys

import hydra
from omegaconf import DictConfig

from pipeline.config import register_configs
from pipeline.guard import run_guarded
from pipeline.preflight import exit_if_invalid
from pipeline.tracking_process import spawn_if_wanted

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    tracker = spawn_if_wanted(cfg)  # MLflow loads in its own process while TensorFlow loads here
    from pipeline.experiment import run_experiment  # TensorFlow loads only after composition

    return run_guarded(lambda: run_experiment(cfg, tracker))


if __name__ == "__main__":
    exit_if_invalid(sys.argv[1:])  # a config mistake is one line, before anything starts
    main()
