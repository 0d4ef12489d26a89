"""Tracking: the only package that imports mlflow.

`open_tracker(cfg)` gives a `Tracker` (protocol.py): MLflow (mlflow_tracker.py) or nothing
(null.py, `tracking=off`, which loads neither MLflow nor Keras Tuner). Inside: the run tree and
orphans (runs.py), writes (writer.py), per-epoch metrics (metrics.py), search and trial runs
(trials.py), pretrained weights (weights.py), the store (store.py), secrets (secrets.py) and the
read side (query.py) that the report, reproduce and resume use.
"""

from __future__ import annotations

from pipeline.config import TrackingConfig
from pipeline.tracking.protocol import Tracker


def open_tracker(cfg: TrackingConfig) -> Tracker:
    """The tracker the config asks for, to be used in a `with` block. MLflow is imported only
    here, and only when tracking is on."""
    if not cfg.enabled:
        from pipeline.tracking.null import NullTracker

        return NullTracker(cfg)
    from pipeline.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(cfg)


def check_server(cfg: TrackingConfig) -> None:
    """A tracking server that does not answer is one line now, before the data loads (a TFDS
    download can take minutes); MLflow itself is not imported."""
    if cfg.enabled:
        from pipeline.tracking.store import check_server_answers, resolve_uri

        check_server_answers(resolve_uri(cfg.uri))


__all__ = ["Tracker", "check_server", "open_tracker"]
