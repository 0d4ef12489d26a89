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
from dataclasses import dataclass, replace

import keras
import numpy as np

from pipeline.config import Config
from pipeline.data import Split, augmenting, eval_batches
from pipeline.interrupts import raise_if_interrupted
from pipeline.model import backbone_of

log = logging.getLogger(__name__)

DTYPE = np.dtype("float32")


@dataclass(frozen=True)
class Boundary:
    """A classifier cut at its freeze boundary: both parts share the classifier's layers."""

    backbone: keras.Model
    position: int  # index in the backbone's layers of the first layer above it (all frozen: count)
    tensor: object  # the backbone's symbolic tensor at the cut
    top: keras.Model | None  # activations -> class probabilities: what training moves
    upper: keras.Model | None = None  # activations -> the backbone's output (None at its top)

    @property
    def bottom(self) -> keras.Model:
        """Image -> activations at the boundary, every weight frozen."""
        return keras.Model(self.backbone.input, self.tensor, name="frozen_bottom")

    @property
    def name(self) -> str:
        layers = self.backbone.layers
        return layers[self.position].name if self.position < len(layers) else "the head"

    def nbytes(self, examples: int) -> int:
        return examples * math.prod(self.tensor.shape[1:]) * DTYPE.itemsize

    def from_lower(self, position: int) -> keras.Model | None:
        """Activations at a lower boundary -> activations here; None when not one tensor."""
        try:
            return keras.Model(self.backbone.layers[position].input, self.tensor)
        except (ValueError, AttributeError):
            return None


def lowest_trainable(backbone: keras.Model) -> int:
    """Index of the backbone's lowest layer with trainable weights (their count: all frozen)."""
    for index, layer in enumerate(backbone.layers):
        if layer.trainable_weights:
            return index
    return len(backbone.layers)


def boundary_at(backbone: keras.Model, position: int) -> Boundary | None:
    """The backbone's activations below `position`, when caching them saves work: some frozen
    weights below, and one tensor at the cut (no residual connection jumping over it)."""
    if not any(layer.weights for layer in backbone.layers[:position]):
        return None  # only input and preprocessing layers below: nothing to save
    if position == len(backbone.layers):
        return Boundary(backbone, position, backbone.output, None)
    tensor = backbone.layers[position].input
    if isinstance(tensor, list | tuple):
        return None
    try:
        upper = keras.Model(tensor, backbone.output)
    except ValueError:
        name = backbone.layers[position].name
        log.info("%s: no single tensor below it, the full model runs", name)
        return None
    return Boundary(backbone, position, tensor, None, upper)


def cut(model: keras.Model) -> Boundary | None:
    """The classifier (backbone + head, as `stack` builds it) cut below its lowest trainable
    layer, with the part above it to train; None when there is nothing worth computing once."""
    backbone, head = backbone_of(model), model.get_layer("head")
    boundary = boundary_at(backbone, lowest_trainable(backbone))
    if boundary is None:
        return None
    if boundary.upper is None:
        return replace(boundary, top=head)
    inputs = keras.Input(shape=boundary.tensor.shape[1:], name="boundary_activations")
    features = boundary.upper(inputs, training=False)
    top = keras.Model(inputs, head(features), name="above_boundary")
    return replace(boundary, top=top)


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

    @classmethod
    def configured(cls, cfg: Config) -> FrozenFeatures:
        """The cache an experiment's config asks for: off with augmentation (the input changes
        every epoch) or `train.cache_boundary=false`."""
        caching = cfg.train.cache_boundary and not augmenting(cfg.dataset.augment)
        return cls(caching, cfg.train.cache_max_gb)

    def __init__(self, enabled: bool, max_gb: float):
        self.enabled = enabled
        self.max_gb = max_gb
        self.max_bytes = int(max_gb * 2**30)
        self.cache: OrderedDict[tuple[int, int], tuple[np.ndarray, Split]] = OrderedDict()

    def above(self, model: keras.Model, splits: Sequence[Split]) -> tuple[keras.Model, list[Split]]:
        """(model to train, the splits it takes): the part above the freeze boundary and the
        activations there, or the model itself and the splits as given."""
        boundary = cut(model) if self.enabled else None
        if boundary is None or not self.fits(boundary, splits, warn=True):
            return model, list(splits)
        return boundary.top, [self.lookup(boundary, split) for split in splits]

    def prefetch(self, backbone: keras.Model, position: int, splits: Sequence[Split]) -> None:
        """Compute (and keep) the activations below `position` now: a later stage will cut there,
        and the activations above it come cheaper from them (see `lookup`)."""
        boundary = boundary_at(backbone, position) if self.enabled else None
        if boundary is not None and self.fits(boundary, splits, warn=False):
            for split in splits:
                self.lookup(boundary, split)

    def fits(self, boundary: Boundary, splits: Sequence[Split], warn: bool) -> bool:
        needed = sum(boundary.nbytes(len(s)) for s in splits)
        if needed <= self.max_bytes:
            return True
        if warn:
            log.warning(
                "train.cache_boundary: activations below %s would take %.3g GB, over "
                "train.cache_max_gb=%g: the full model runs every step",
                boundary.name,
                needed / 2**30,
                self.max_gb,
            )
        return False

    def lookup(self, boundary: Boundary, split: Split) -> Split:
        """The split's activations at the boundary: kept, computed from those kept at the nearest
        lower boundary, or computed from the images."""
        key = (boundary.position, id(split.x))
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key][1]
        computed = None
        for position in sorted(self.lower_positions(boundary, split), reverse=True):
            partial = boundary.from_lower(position)
            if partial is not None:
                computed = activations(partial, self.cache[(position, id(split.x))][1])
                break
        if computed is None:
            computed = activations(boundary.bottom, split)
        self.cache[key] = (split.x, computed)  # holding split.x keeps its id from being reused
        while self.held_bytes() > self.max_bytes and len(self.cache) > 1:
            self.cache.popitem(last=False)
        return computed

    def lower_positions(self, boundary: Boundary, split: Split) -> list[int]:
        return [
            position
            for position, x_id in self.cache
            if x_id == id(split.x) and position < boundary.position
        ]

    def held_bytes(self) -> int:
        return sum(features.x.nbytes for _, features in self.cache.values())
