"""`python -m pipeline [overrides]`: one experiment, or a sweep with `-m`."""

import sys

import hydra
from omegaconf import DictConfig

from pipeline.config import register_configs
from pipeline.guard import EXIT_INTERRUPTED, run_guarded
from pipeline.preflight import exit_if_invalid
from pipeline.runtime import (
    configured,
    import_tensorflow_quietly,
    interrupts_unwind,
    quiet_tensorflow_startup,
)

register_configs()


def configured_experiment(cfg: DictConfig) -> float:
    import_tensorflow_quietly()  # TensorFlow loads only after composition
    from pipeline.experiment import run_experiment

    with configured(cfg):
        return run_experiment(cfg)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    quiet_tensorflow_startup()
    with interrupts_unwind():
        return run_guarded(lambda: configured_experiment(cfg))


if __name__ == "__main__":
    try:
        exit_if_invalid(sys.argv[1:])  # a config mistake is one line, before anything starts
        main()
    except KeyboardInterrupt:  # before a job started: nothing was logged
        print("error: interrupted during start-up; nothing ran", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
