"""The one place that reaches into TensorFlow's and Keras' private API (TensorFlow 2.21, Keras 3).

Each function says which public API is missing. tests/test_internals.py checks every one on real
objects, so that an upgrade that changes one fails there, naming this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras


def op_determinism_enabled() -> bool:
    """Whether TensorFlow's op determinism is on. Missing publicly: TensorFlow offers
    `tf.config.experimental.enable_op_determinism()` only, with no query."""
    from tensorflow.python.framework import config as tf_config

    return tf_config.is_op_determinism_enabled()


def disable_op_determinism() -> None:
    """Turn op determinism off again, so that a command run in-process gives the process back as
    it was. Missing publicly: no `disable_op_determinism` in `tf.config`."""
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()


def build_training_variables(model: keras.Model, element_spec) -> None:
    """Create a compiled model's optimizer, loss and metric variables from the dataset's spec,
    before `fit` traces a step (model.build_for_training says why). Missing publicly: Keras
    builds them in `fit` itself (`Trainer._symbolic_build`), with no call to do it first.
    Without the method (a Keras release that drops it), `fit` builds them, only slower."""
    symbolic_build = getattr(model, "_symbolic_build", None)
    if symbolic_build is not None:
        symbolic_build(data_batch=element_spec)
