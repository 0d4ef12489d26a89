"""Keras Tuner searches the fine-tuning stage: the tuner (tuner.py), the stage that runs it and
fine-tunes the best trial (stage.py), a trial's Keras callbacks (callbacks.py), distributed roles
(roles.py), and the one place that reaches into keras-tuner's private API (tuner_internals.py).
The only keras_tuner importer in the project; importing this package does not import it (the
modules do, when a search runs).
"""


def __getattr__(name: str):
    """`pipeline.search.CappedHyperbandOracle`, the oracle's `_target_` in configs logged before
    the search became a package (`python -m pipeline.reproduce` re-runs them): loaded on demand."""
    if name == "CappedHyperbandOracle":
        from pipeline.search.tuner import CappedHyperbandOracle

        return CappedHyperbandOracle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
