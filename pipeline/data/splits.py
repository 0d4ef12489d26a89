"""Splits held in memory, how they are drawn, and how they are batched for Keras.

Images stay in memory as uint8 (0-255, real datasets: a quarter of float32's footprint) or float32
in [0, 1] (the embedded digits); `batches` hands both to Keras as float32 in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import AugmentConfig, DatasetConfig
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """One split: images (N, H, W, C), uint8 or float32 in [0, 1], and labels (N,) int32."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class TaskData:
    """The three splits of a classification task; every stage of an experiment shares them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...] = ()
    skipped_files: tuple[str, ...] = field(default=())  # unreadable images left out

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def per_class_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `per_class` examples of every class, drawn without replacement, sorted."""
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ConfigError(
                f"dataset.train_per_class={per_class} but class {label} has only "
                f"{len(members)} training examples"
            )
        picked.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def low_data(train: Split, per_class: int | None, seed: int) -> Split:
    """The seed-drawn low-data training set (`dataset.train_per_class`), or all of `train`."""
    if per_class is None:
        return train
    return train.take(per_class_sample(train.y, per_class, np.random.default_rng(seed)))


def carve(split: Split, fraction: float, split_seed: int) -> tuple[Split, Split]:
    """(rest, carved): `fraction` of a split drawn out at random with the fixed split seed."""
    order = np.random.default_rng(split_seed).permutation(len(split))
    n_carved = max(1, round(len(split) * fraction))
    return split.take(np.sort(order[n_carved:])), split.take(np.sort(order[:n_carved]))


def split_task(images: np.ndarray, labels: np.ndarray, cfg: DatasetConfig, seed: int) -> TaskData:
    """Fixed validation and test splits (split_seed), then a seed-drawn low-data training set."""
    if cfg.val_size + cfg.test_size >= len(labels):
        raise ConfigError(
            f"dataset.val_size + dataset.test_size = {cfg.val_size + cfg.test_size} leaves no "
            f"training data: {cfg.name} has {len(labels)} examples"
        )
    order = np.random.default_rng(cfg.split_seed).permutation(len(labels))
    test_idx = order[: cfg.test_size]
    val_idx = order[cfg.test_size : cfg.test_size + cfg.val_size]
    pool_idx = order[cfg.test_size + cfg.val_size :]
    if cfg.train_per_class is not None:
        chosen = per_class_sample(
            labels[pool_idx], cfg.train_per_class, np.random.default_rng(seed)
        )
        pool_idx = pool_idx[chosen]
    return TaskData(
        name=cfg.name,
        train=Split(images[pool_idx], labels[pool_idx]),
        val=Split(images[val_idx], labels[val_idx]),
        test=Split(images[test_idx], labels[test_idx]),
        num_classes=int(labels.max()) + 1,
    )


def augmenting(cfg: AugmentConfig | None) -> bool:
    """Whether any random transform is configured."""
    return cfg is not None and bool(cfg.flip or cfg.rotation or cfg.zoom)


def augmenter(cfg: AugmentConfig, seed: int):
    """Keras preprocessing layers for the configured transforms, applied to a batch of images."""
    import keras

    layers = []
    if cfg.flip:
        layers.append(keras.layers.RandomFlip(cfg.flip, seed=seed))
    if cfg.rotation:
        layers.append(keras.layers.RandomRotation(cfg.rotation, seed=seed + 1))
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, seed=seed + 2))
    return keras.Sequential(layers, name="augment")


INFERENCE_BATCH_BYTES = 8 * 2**20  # one inference batch's input as float32
COPY_LIMIT_BYTES = 64 * 2**20  # a split's images up to this size may be copied into TensorFlow


def inference_batch_size(split: Split, most: int = 256) -> int:
    """Examples per evaluation (or activation) batch: `most` small ones, fewer large images.

    A network's activations grow with its input: MobileNetV2 holds ~600 MB in one layer for 256
    images of 160x160, so images that size go 27 at a time.
    """
    per_example = math.prod(split.x.shape[1:]) * 4
    return max(16, min(most, INFERENCE_BATCH_BYTES // max(per_example, 1)))


def eval_batches(split: Split):
    """Unshuffled batches for evaluation and prediction, sized by `inference_batch_size`."""
    return batches(split, inference_batch_size(split))


def examples_of(split: Split):
    """A tf.data map function: a batch of indices -> (images, labels) read from the split."""
    import tensorflow as tf

    def take(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return split.x[indices], split.y[indices]

    types = (tf.as_dtype(split.x.dtype), tf.as_dtype(split.y.dtype))

    def read(indices):
        x, y = tf.numpy_function(take, [indices], types, stateful=False)
        x.set_shape((None, *split.x.shape[1:]))
        y.set_shape((None, *split.y.shape[1:]))
        return x, y

    return read


def batches(
    split: Split,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment: AugmentConfig | None = None,
):
    """A batched, prefetched `tf.data.Dataset` of a split, images as float32 in [0, 1].

    Reshuffled every epoch when seeded; augmented (training data only) when `augment` says so.
    A big split (over COPY_LIMIT_BYTES) is read by batches of indices from its arrays, so that its
    images are never held twice (`from_tensor_slices` copies them into a TensorFlow constant per
    dataset); a small one is sliced from that copy, which is faster per batch. Same batches.
    """
    import tensorflow as tf

    big = split.x.nbytes > COPY_LIMIT_BYTES
    ds = (
        tf.data.Dataset.range(len(split))
        if big
        else tf.data.Dataset.from_tensor_slices((split.x, split.y))
    )
    if shuffle_seed is not None:
        ds = ds.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if big:
        ds = ds.map(examples_of(split))
    if split.x.dtype == np.uint8:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))
    if augmenting(augment):
        layers = augmenter(augment, 0 if shuffle_seed is None else shuffle_seed)
        ds = ds.map(lambda x, y: (layers(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)
