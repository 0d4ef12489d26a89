"""`python -m pipeline [overrides]`: one experiment, or a sweep with `-m`."""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from pipeline.config import register_configs
from pipeline.errors import ConfigError

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from pipeline.experiment import run_experiment  # TensorFlow loads only after composition

    try:
        return run_experiment(cfg)
    except ConfigError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        logging.getLogger("pipeline").debug("config error", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
