"""Backbones, their input preprocessing and their block maps.

Reads the `backbone` config group. A backbone maps images (float32 in [0, 1]) to a feature vector;
its *block map* lists its blocks bottom to top, so that `freeze.unfreeze_blocks=K` means "the top K
blocks" on any backbone rather than a raw layer count. keras.applications backbones carry their own
`preprocess_input` (and grayscale-to-RGB) as a first layer, so every dataset feeds them alike.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import keras

from pipeline.catalog import APPLICATIONS, IN_HOUSE_PATTERN, Application
from pipeline.config import BackboneConfig
from pipeline.errors import ConfigError


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


def preprocessing(app: Application, channels: int) -> keras.layers.Layer:
    """[0, 1] images (grey or RGB) -> what the application was trained on (its preprocess_input)."""
    preprocess_input = getattr(keras.applications, app.module).preprocess_input

    def preprocess(x):
        if channels == 1:
            x = keras.ops.repeat(x, 3, axis=-1)  # grayscale -> RGB for ImageNet weights
        return preprocess_input(x * 255.0)

    return keras.layers.Lambda(preprocess, name="preprocess")


def build_application(cfg: BackboneConfig, input_shape: tuple[int, ...]) -> keras.Model:
    """A keras.applications backbone without its top, average-pooled, with `cfg.weights`."""
    app = APPLICATIONS[cfg.name]
    inputs = keras.Input(shape=input_shape, name="image")
    x = preprocessing(app, input_shape[-1])(inputs)
    kwargs = {"alpha": cfg.alpha} if cfg.name == "mobilenet_v2" else {}
    constructor = getattr(keras.applications, app.constructor)
    model = constructor(
        include_top=False, weights=None, input_tensor=x, pooling="avg", name=cfg.name, **kwargs
    )
    if cfg.weights is not None:
        load_application_weights(model, cfg, constructor, kwargs)
    return model


def load_application_weights(model: keras.Model, cfg: BackboneConfig, constructor, kwargs) -> None:
    """ImageNet (downloaded once, then Keras' cache) or a local file; a misfit fails in one line."""
    source = cfg.weights
    try:
        if source == "imagenet":
            # Keras knows the file's name and hash; building once with weights="imagenet" fetches
            # it into ~/.keras/models (or finds it there), and its weights are copied over.
            # Its input size does not matter without the top: silence the "default 224" warning.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*input shape.*will be loaded")
                reference = constructor(include_top=False, weights="imagenet", **kwargs)
            model.set_weights(reference.get_weights())
        else:
            model.load_weights(source)
    except (ValueError, OSError, KeyError) as error:
        raise ConfigError(weights_error(cfg, error)) from None
    except Exception as error:  # a failed download raises URL and HTTP errors of many kinds
        if source != "imagenet":
            raise
        raise ConfigError(
            f"backbone.weights='imagenet' could not be fetched for {cfg.name} "
            f"({type(error).__name__}); offline, pass a local file: backbone.weights=<path>"
        ) from None


def weights_error(cfg: BackboneConfig, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    width = f" alpha={cfg.alpha}" if cfg.name == "mobilenet_v2" else ""
    return f"backbone.weights={cfg.weights!r} does not fit {cfg.name}{width}: {first[:300]}"


BUILDERS: dict[str, Callable[[BackboneConfig, tuple[int, ...]], keras.Model]] = {
    "small_cnn": build_small_cnn,
    "mlp": build_mlp,
    **dict.fromkeys(APPLICATIONS, build_application),
}


def build_backbone(cfg: BackboneConfig, input_shape: tuple[int, ...]) -> keras.Model:
    """A backbone for `input_shape`: random init, or (applications) the weights `cfg` names."""
    if cfg.name not in BUILDERS:
        raise ConfigError(f"backbone.name={cfg.name!r} is not one of {sorted(BUILDERS)}")
    return BUILDERS[cfg.name](cfg, input_shape)


def named_blocks(backbone: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """Block name -> its weighted layers, bottom block first.

    Layers are matched by name (`block_3_expand`, `conv4_block2_1_conv`, ...). A weighted layer
    that no block names (a stem, an unnamed residual convolution) joins the next block up, so that
    unfreezing every block unfreezes the whole backbone.
    """
    app = APPLICATIONS.get(backbone.name)
    pattern = re.compile(app.block_pattern if app else IN_HOUSE_PATTERN)
    blocks: dict[str, list[keras.layers.Layer]] = {}
    pending: list[keras.layers.Layer] = []
    for layer in backbone.layers:
        match = pattern.match(layer.name)
        if match:
            blocks.setdefault(match.group(1), []).extend([*pending, layer])
            pending = []
        elif layer.weights:
            pending.append(layer)
    if pending and blocks:
        blocks[list(blocks)[-1]].extend(pending)
    return blocks


def block_map(backbone: keras.Model) -> list[list[keras.layers.Layer]]:
    """The backbone's layers grouped by block, bottom block first."""
    return list(named_blocks(backbone).values())
