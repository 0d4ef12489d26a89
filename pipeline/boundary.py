"""Training above the freeze boundary on activations computed once (`train.cache_boundary`).

Below a classifier's lowest trainable layer everything is frozen and runs in inference mode (the
backbone is called with `training=False`), and without augmentation its input is the same every
epoch: so is its output. Feature extraction (boundary: the whole backbone), every search trial
(boundary: its depth) and the final fine-tune (boundary: below the first unfrozen block) train
only the part above the boundary, on those activations. They are computed once per (data split,
boundary), batch by batch into one preallocated array, and kept for the next stage or trial that
cuts at the same place, within `train.cache_max_gb` (least recently used boundaries go first).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from pipeline.data import Split, eval_batches
from pipeline.model import backbone_of
from pipeline.runtime import raise_if_interrupted

log = logging.getLogger(__name__)

DTYPE = np.dtype("float32")


@dataclass(frozen=True)
class Boundary:
    """A classifier cut at its freeze boundary: both parts share the classifier's layers."""

    bottom: keras.Model  # image -> activations at the boundary, every weight frozen
    top: keras.Model  # activations -> class probabilities: what training moves
    position: int  # index in the backbone's layers of the first layer above the cut ("end": -1)

    def nbytes(self, examples: int) -> int:
        return examples * math.prod(self.top.input_shape[1:]) * DTYPE.itemsize


def lowest_trainable(backbone: keras.Model) -> int | None:
    """Index of the backbone's lowest layer with trainable weights; None when all are frozen."""
    for index, layer in enumerate(backbone.layers):
        if layer.trainable_weights:
            return index
    return None


def cut(model: keras.Model) -> Boundary | None:
    """The classifier (backbone + head, as `stack` builds it) cut below its lowest trainable
    layer; None when there is nothing frozen worth computing once, or the cut is not one tensor
    (a residual connection jumping over it)."""
    backbone, head = backbone_of(model), model.get_layer("head")
    position = lowest_trainable(backbone)
    if position is None:
        bottom = keras.Model(backbone.input, backbone.output, name="frozen_bottom")
        return Boundary(bottom, head, -1)
    frozen = backbone.layers[:position]
    if not any(layer.weights for layer in frozen):
        return None  # only input and preprocessing layers below: nothing to save
    tensor = backbone.layers[position].input
    if isinstance(tensor, list | tuple):
        return None
    try:
        upper = keras.Model(tensor, backbone.output)
    except ValueError:
        name = backbone.layers[position].name
        log.info("%s: no single tensor below it, the full model runs", name)
        return None
    inputs = keras.Input(shape=tensor.shape[1:], name="boundary_activations")
    top = keras.Model(inputs, head(upper(inputs, training=False)), name="above_boundary")
    return Boundary(keras.Model(backbone.input, tensor, name="frozen_bottom"), top, position)


def activations(bottom: keras.Model, split: Split) -> Split:
    """The bottom's output for every example, in batches written into one preallocated array."""
    out = np.empty((len(split), *bottom.output_shape[1:]), dtype=DTYPE)
    start = 0
    for images, _ in eval_batches(split):
        values = bottom.predict_on_batch(images)
        out[start : start + len(values)] = values
        start += len(values)
        raise_if_interrupted()
    return Split(out, split.y)


class FrozenFeatures:
    """The boundary cache: activations per (split, boundary), kept within a memory cap.

    One per pretrained backbone: the activations are valid while the weights below the boundary
    are the backbone's, which feature extraction, the search and fine-tuning never change.
    """

    def __init__(self, enabled: bool, max_gb: float):
        self.enabled = enabled
        self.max_gb = max_gb
        self.max_bytes = int(max_gb * 2**30)
        self.cache: OrderedDict[tuple[int, int], tuple[np.ndarray, Split]] = OrderedDict()

    def above(self, model: keras.Model, splits: Sequence[Split]) -> tuple[keras.Model, list[Split]]:
        """(model to train, the splits it takes): the part above the freeze boundary and the
        activations there, or the model itself and the splits as given."""
        boundary = cut(model) if self.enabled else None
        if boundary is None:
            return model, list(splits)
        needed = sum(boundary.nbytes(len(s)) for s in splits)
        if needed > self.max_bytes:
            log.warning(
                "train.cache_boundary: activations below %s would take %.3g GB, over "
                "train.cache_max_gb=%g: the full model runs every step",
                self.layer_name(model, boundary),
                needed / 2**30,
                self.max_gb,
            )
            return model, list(splits)
        return boundary.top, [self.lookup(boundary, split) for split in splits]

    @staticmethod
    def layer_name(model: keras.Model, boundary: Boundary) -> str:
        layers = backbone_of(model).layers
        return "the head" if boundary.position < 0 else layers[boundary.position].name

    def lookup(self, boundary: Boundary, split: Split) -> Split:
        key = (boundary.position, id(split.x))
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key][1]
        computed = activations(boundary.bottom, split)
        self.cache[key] = (split.x, computed)  # holding split.x keeps its id from being reused
        while self.held_bytes() > self.max_bytes and len(self.cache) > 1:
            self.cache.popitem(last=False)
        return computed

    def held_bytes(self) -> int:
        return sum(features.x.nbytes for _, features in self.cache.values())
