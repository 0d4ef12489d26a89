"""Hydra callbacks, registered under `hydra.callbacks` in conf/config.yaml.

Hydra instantiates callbacks for every run, single runs included: MLflow is imported only when a
sweep starts, so that `tracking=off` runs never load it.
"""

from __future__ import annotations

import logging
from pathlib import Path

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


class RedactHydraOutput(Callback):
    """Passwords in URIs (tracking.uri=http://user:password@host) masked in the files Hydra keeps
    beside each job (.hydra/config.yaml, hydra.yaml, overrides.yaml) and a sweep's multirun.yaml.

    Hydra writes them just before a job starts; they are rewritten here, at the job's start.
    """

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        from pipeline.tracking.secrets import redact_text  # pure text: imports no MLflow

        hydra = config.hydra
        folders = [Path(hydra.runtime.output_dir) / str(hydra.output_subdir or "")]
        if hydra.mode is not None and str(hydra.mode).endswith("MULTIRUN"):
            folders.append(Path(hydra.sweep.dir))
        for folder in folders:
            for path in folder.glob("*.yaml"):
                text = path.read_text()
                masked = redact_text(text)
                if masked != text:
                    path.write_text(masked)
