"""The target task of the `dataset` config group, and an in-house backbone's source task."""

from __future__ import annotations

import logging

import numpy as np

from pipeline.config import DatasetConfig, SourceTaskConfig
from pipeline.data import folder, tfds_source
from pipeline.data.embedded import load_embedded
from pipeline.data.labels import label_mapping, relabel
from pipeline.data.splits import Split, TaskData, carve, low_data, split_task
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


def read_tfds(cfg: DatasetConfig) -> tuple[Arrays, list[str], list[str]]:
    """{split: arrays} for the split specs given (train, and val/test unless null)."""
    key = "dataset.tfds_name"
    builder = tfds_source.tfds_builder(cfg.tfds_name, cfg.data_dir, cfg.download, key)
    specs = {"train": cfg.splits.train, "val": cfg.splits.val, "test": cfg.splits.test}
    arrays = {
        split: tfds_source.read_split(builder, spec, cfg.image_size, cfg.channels)
        for split, spec in specs.items()
        if spec is not None
    }
    return arrays, tfds_source.class_names(builder), []


def read_arrays(cfg: DatasetConfig) -> tuple[Arrays, list[str], list[str]]:
    """{split: (images, labels)}, class names and skipped files, from the configured source."""
    if cfg.source == "tfds":
        return read_tfds(cfg)
    if cfg.source == "folder":
        return folder.read_folder(cfg.path, cfg.image_size, cfg.channels, cfg.corrupt_images)
    raise ConfigError(f"dataset.source={cfg.source!r}; allowed: embedded, tfds, folder")


def complete_splits(splits: dict[str, Split], cfg: DatasetConfig) -> dict[str, Split]:
    """Carve out what is missing: validation from train, then test from validation."""
    if "val" not in splits:
        splits["train"], splits["val"] = carve(splits["train"], cfg.val_fraction, cfg.split_seed)
    if "test" not in splits:
        splits["val"], splits["test"] = carve(splits["val"], cfg.test_fraction, cfg.split_seed)
    return splits


def load_external(cfg: DatasetConfig, seed: int) -> TaskData:
    """A TFDS dataset or an image folder, with its label task and low-data regime applied."""
    arrays, names, skipped = read_arrays(cfg)
    mapping, new_names = label_mapping(names, cfg.classes, cfg.groups)
    splits = {name: Split(*relabel(x, y, mapping)) for name, (x, y) in arrays.items()}
    splits = complete_splits(splits, cfg)
    return TaskData(
        name=cfg.name,
        train=low_data(splits["train"], cfg.train_per_class, seed),
        val=splits["val"],
        test=splits["test"],
        num_classes=len(new_names),
        class_names=tuple(new_names),
        skipped_files=tuple(skipped),
    )


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Float images in [0, 1] resized (bilinear) to `size` squared."""
    import tensorflow as tf

    return np.clip(tf.image.resize(images, (size, size)).numpy(), 0.0, 1.0)


def load_embedded_task(cfg: DatasetConfig, seed: int) -> TaskData:
    images, labels = load_embedded(cfg.loader)
    if images.shape[1] != cfg.image_size:  # e.g. 28 -> 32, the smallest ImageNet backbone input
        images = resize(images, cfg.image_size)
    names = [str(i) for i in range(int(labels.max()) + 1)]
    mapping, new_names = label_mapping(names, cfg.classes, cfg.groups)
    images, labels = relabel(images, labels, mapping)
    task = split_task(images, labels, cfg, seed)
    return TaskData(task.name, task.train, task.val, task.test, len(new_names), tuple(new_names))


def load_task(cfg: DatasetConfig, seed: int) -> TaskData:
    """The target task named by the `dataset` config group."""
    external = cfg.source != "embedded"
    task = load_external(cfg, seed) if external else load_embedded_task(cfg, seed)
    log.info("dataset %s: %s examples, %d classes", cfg.name, task.sizes(), task.num_classes)
    return task


def source_arrays(cfg: SourceTaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a source task: an embedded dataset or a TFDS split."""
    if cfg.dataset != "tfds":
        return load_embedded(cfg.dataset)
    key = "backbone.source.tfds_name"
    builder = tfds_source.tfds_builder(cfg.tfds_name, cfg.data_dir, False, key)
    shape = builder.info.features[tfds_source.supervised_keys(builder)[0]].shape
    return tfds_source.read_split(builder, cfg.split, shape[0], shape[-1])


def conform_images(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Source images at the target's (H, W, C): resized, greyscale repeated or RGB averaged."""
    import tensorflow as tf

    if images.shape[1:3] != tuple(shape[:2]):
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        images = tf.image.resize(images.astype("float32") / scale, shape[:2]).numpy()
        images = np.clip(images, 0.0, 1.0).astype("float32")
    if images.shape[-1] != shape[-1]:
        channels = shape[-1]
        images = np.repeat(images, 3, -1) if channels == 3 else images.mean(-1, keepdims=True)
        images = images.astype(np.uint8) if images.dtype != np.float32 else images
    return images


def load_source_task(
    cfg: SourceTaskConfig, seed: int, shape: tuple[int, ...] | None = None
) -> TaskData:
    """The source task an in-house backbone is pretrained on (train and validation only).

    With `shape`, its images are conformed to the target task's, so that one backbone fits both.
    """
    images, labels = source_arrays(cfg)
    if shape is not None:
        images = conform_images(images, shape)
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
        name=cfg.dataset if cfg.dataset != "tfds" else cfg.tfds_name,
        train=Split(images[train_idx], labels[train_idx]),
        val=Split(images[val_idx], labels[val_idx]),
        test=empty,
        num_classes=int(labels.max()) + 1,
    )
