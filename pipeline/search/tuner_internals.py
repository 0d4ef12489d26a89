"""The one place that reaches into Keras Tuner's private API (keras-tuner 1.4).

tests/test_internals.py checks both on a real tuner, so that a Keras Tuner upgrade that changes
them fails there, naming this module.
"""

from __future__ import annotations

import keras_tuner


class DeclaredSpaceTuner(keras_tuner.Tuner):
    """A Tuner whose hypermodel declares the whole space (`declare_hyperparameters`; it has no
    conditional hyperparameters), so that a search starts without building models to discover it:
    each build loads the backbone. Missing publicly: Keras Tuner populates the space in
    `BaseTuner._populate_initial_space`, which builds the hypermodel after declaring, with no
    option to skip the builds."""

    def _populate_initial_space(self) -> None:
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)


def checkpoint_path(tuner: keras_tuner.Tuner, trial_id: str) -> str:
    """Where a trial's best weights go, inside its trial folder: Hyperband continues a trial from
    its parent's. Missing publicly: `Tuner._get_checkpoint_fname`, the path Keras Tuner itself
    saves and loads a trial's weights at."""
    return tuner._get_checkpoint_fname(trial_id)
