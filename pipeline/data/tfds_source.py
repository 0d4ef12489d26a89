"""Any TensorFlow Datasets dataset by name, read into uint8 arrays.

`data_dir` null means TFDS's own default (`TFDS_DATA_DIR`, else ~/tensorflow_datasets). A dataset
that is not prepared there is downloaded and prepared only when `download` is true: offline, a
missing dataset fails before any training with the place it was looked for.
"""

from __future__ import annotations

import difflib
import logging

import numpy as np

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

READ_BATCH = 1024


def close_matches(name: str) -> list[str]:
    """Registered TFDS dataset names that look like `name` (a typo's likely intent)."""
    import tensorflow_datasets as tfds

    return difflib.get_close_matches(name, tfds.list_builders(), n=5, cutoff=0.6)


def tfds_builder(name: str, data_dir: str | None, download: bool, key: str):
    """The prepared builder of `name`; downloads and prepares it only when allowed."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.registered import DatasetNotFoundError

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except DatasetNotFoundError:
        matches = close_matches(name.split(":")[0].split("/")[0])
        hint = f"close matches: {matches}" if matches else "see tfds.list_builders()"
        raise ConfigError(f"{key}={name!r} is not a TFDS dataset; {hint}") from None
    if not builder.is_prepared():
        if not download:
            raise ConfigError(
                f"{key}={name!r} is not prepared under {builder.data_dir}; set "
                "dataset.data_dir (or TFDS_DATA_DIR) to where it is, or dataset.download=true"
            )
        log.info("downloading and preparing %s into %s", name, builder.data_dir)
        builder.download_and_prepare()
    return builder


def class_names(builder) -> list[str]:
    """The names of the supervised label's classes (indices as text when unnamed)."""
    _, label_key = supervised_keys(builder)
    feature = builder.info.features[label_key]
    names = getattr(feature, "names", None)
    return list(names) if names else [str(i) for i in range(feature.num_classes)]


def supervised_keys(builder) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise ConfigError(
            f"dataset.tfds_name={builder.info.name!r} has no (image, label) supervised keys"
        )
    return keys


def read_split(builder, split: str, image_size: int, channels: int) -> tuple[np.ndarray, ...]:
    """(images uint8 (N, S, S, C), labels int32) of one split spec, resized on the way."""
    import tensorflow as tf

    try:
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    except (ValueError, KeyError) as error:
        raise ConfigError(
            f"dataset.splits={split!r} is not a split of {builder.info.name}: "
            f"{str(error).splitlines()[0]}; splits: {list(builder.info.splits)}"
        ) from None

    def fit_image(image, label):
        image = conform(image, image_size, channels)
        return image, tf.cast(label, tf.int32)

    ds = ds.map(fit_image, num_parallel_calls=tf.data.AUTOTUNE).batch(READ_BATCH)
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ConfigError(f"dataset.splits={split!r} of {builder.info.name} is empty")
    return np.concatenate(xs), np.concatenate(ys)


def conform(image, image_size: int, channels: int):
    """An image tensor at `image_size` squared with `channels` channels, uint8."""
    import tensorflow as tf

    if image.shape[-1] != channels:
        image = (
            tf.image.grayscale_to_rgb(image) if channels == 3 else tf.image.rgb_to_grayscale(image)
        )
    if image.shape[0] != image_size or image.shape[1] != image_size:
        resized = tf.image.resize(image, (image_size, image_size), method="bilinear")
        image = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.cast(image, tf.uint8)
