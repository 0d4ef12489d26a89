"""Hydra callbacks for sweeps (multirun), registered under `hydra.callbacks` in conf/config.yaml.

Hydra instantiates callbacks for every run, single runs included: MLflow is imported only when a
sweep starts, so that `tracking=off` runs never load it.
"""

from __future__ import annotations

import logging

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class PrepareStoreBeforeSweep(Callback):
    """A fresh SQLite store is created once before a parallel sweep starts.

    Several processes creating the store's tables at once race and corrupt it.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        tracking = config.tracking
        if not tracking.enabled:
            return
        from pipeline.tracking.store import prepare_store, resolve_uri

        uri = resolve_uri(tracking.uri)
        prepare_store(uri, [tracking.experiment_name, tracking.backbone_experiment])
        log.info("MLflow store ready at %s", uri)
