"""Backbones and their block maps.

Reads the `backbone` config group. A backbone maps images to a feature vector; its *block map*
lists its blocks bottom to top, so that `freeze.unfreeze_blocks=K` means "the top K blocks" on any
backbone rather than a raw layer count.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from pipeline.config import BackboneConfig

IN_HOUSE = ("small_cnn", "mlp")


def build_small_cnn(cfg: BackboneConfig, input_shape: tuple[int, ...]) -> keras.Model:
    """Blocks of conv -> BatchNorm -> ReLU -> max-pool; the last block pools globally."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, filters in enumerate(cfg.widths, start=1):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"block{index}_conv"
        )(x)
        # momentum 0.9 (not 0.99): low-data tasks take few steps, and the moving statistics must
        # converge within them or inference-mode accuracy collapses.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{index}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{index}_relu")(x)
        if index < len(cfg.widths):
            x = keras.layers.MaxPooling2D(name=f"block{index}_pool")(x)
        else:
            x = keras.layers.GlobalAveragePooling2D(name=f"block{index}_gap")(x)
    return keras.Model(inputs, x, name=cfg.name)


def build_mlp(cfg: BackboneConfig, input_shape: tuple[int, ...]) -> keras.Model:
    """Flatten, then one Dense+ReLU layer a block."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for index, units in enumerate(cfg.widths, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"block{index}_dense")(x)
    return keras.Model(inputs, x, name=cfg.name)


BUILDERS: dict[str, Callable[[BackboneConfig, tuple[int, ...]], keras.Model]] = {
    "small_cnn": build_small_cnn,
    "mlp": build_mlp,
}


def build_backbone(cfg: BackboneConfig, input_shape: tuple[int, ...]) -> keras.Model:
    """A freshly initialised backbone (random weights) for `input_shape`."""
    if cfg.name not in BUILDERS:
        raise ValueError(f"backbone.name={cfg.name!r} is not one of {sorted(BUILDERS)}")
    return BUILDERS[cfg.name](cfg, input_shape)


def block_count(cfg: BackboneConfig) -> int:
    """How many blocks the backbone's block map has, known from its config alone."""
    return len(cfg.widths)


def block_map(backbone: keras.Model) -> list[list[keras.layers.Layer]]:
    """The backbone's weighted layers grouped by block, bottom block first.

    In-house backbones name their layers `block<i>_<part>`; layers outside any block (input,
    flatten) carry no weights and belong to none.
    """
    blocks: dict[str, list[keras.layers.Layer]] = {}
    for layer in backbone.layers:
        prefix = layer.name.split("_", 1)[0]
        if prefix.startswith("block"):
            blocks.setdefault(prefix, []).append(layer)
    return list(blocks.values())
