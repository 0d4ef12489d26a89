"""An image folder with one subfolder per class, optionally inside train/validation/test folders.

Images are decoded once (Pillow, in threads), resized and kept as uint8. Unreadable or corrupt files
are found in the same pass: `dataset.corrupt_images=skip` leaves them out, logs them and counts
them (the experiment records the count in MLflow); `error` refuses the dataset, naming them.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("validation", "val"), "test": ("test",)}
NAMED_IN_ERRORS = 5


def split_folders(path: str) -> dict[str, Path]:
    """The split subfolders present (train[, val][, test]), or the folder itself as `train`."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"dataset.path={path!r} is not a folder (looked in {root.resolve()})")
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    if found and "train" not in found:
        raise ConfigError(f"dataset.path={path!r} has {sorted(found)} subfolders but no train/")
    return found or {"train": root}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_classes(folder: Path, path: str) -> dict[str, list[Path]]:
    """Class name -> its image files, for every subfolder of `folder` that holds images."""
    classes = {d.name: image_files(d) for d in sorted(folder.iterdir()) if d.is_dir()}
    classes = {name: files for name, files in classes.items() if files}
    if not classes:
        raise ConfigError(
            f"dataset.path={path!r}: {folder} has no class subfolders with images "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    if len(classes) == 1:
        raise ConfigError(
            f"dataset.path={path!r}: {folder} has one class ({next(iter(classes))}); "
            "a classifier needs at least two class subfolders"
        )
    return classes


def decode(path: Path, image_size: int, channels: int) -> np.ndarray | None:
    """The image resized to `image_size` squared, uint8; None when unreadable or corrupt."""
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as image:
            image.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced scale
            pixels = image.convert(mode).resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(pixels, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError):
        return None
    return array if channels == 3 else array[..., None]


def read_split(
    folder: Path, names: list[str], image_size: int, channels: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, unreadable files) of one split folder; labels index `names`."""
    files, labels = [], []
    for label, name in enumerate(names):
        class_files = image_files(folder / name) if (folder / name).is_dir() else []
        files += class_files
        labels += [label] * len(class_files)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda p: decode(p, image_size, channels), files))
    bad = [str(f) for f, a in zip(files, arrays, strict=True) if a is None]
    keep = [i for i, a in enumerate(arrays) if a is not None]
    x = np.stack([arrays[i] for i in keep]) if keep else np.zeros((0, image_size, image_size, 1))
    return x.astype(np.uint8), np.asarray(labels, dtype="int32")[keep], bad


def check_classes(found: dict[str, Path], names: list[str], path: str) -> None:
    """Validation and test folders must hold the training folder's classes, no others."""
    for split, folder in found.items():
        extra = sorted({d.name for d in folder.iterdir() if d.is_dir() and image_files(d)})
        if split != "train" and set(extra) - set(names):
            raise ConfigError(
                f"dataset.path={path!r}: {folder.name}/ has classes {extra} but train/ has {names}"
            )


def handle_corrupt(bad: list[str], policy: str, path: str) -> None:
    if not bad:
        return
    named = ", ".join(bad[:NAMED_IN_ERRORS]) + (" ..." if len(bad) > NAMED_IN_ERRORS else "")
    if policy == "error":
        raise ConfigError(
            f"dataset.path={path!r} has {len(bad)} unreadable or corrupt images: {named} "
            "(dataset.corrupt_images=skip leaves them out)"
        )
    log.warning("skipped %d unreadable or corrupt images: %s", len(bad), named)


def read_folder(path: str, image_size: int, channels: int, policy: str):
    """{split: (images, labels)}, the class names, and the unreadable files skipped."""
    found = split_folders(path)
    names = sorted(scan_classes(found["train"], path))
    check_classes(found, names, path)
    splits, bad = {}, []
    for split, folder in found.items():
        x, y, unreadable = read_split(folder, names, image_size, channels)
        splits[split] = (x, y)
        bad += unreadable
    handle_corrupt(bad, policy, path)
    if len(splits["train"][1]) == 0:
        raise ConfigError(f"dataset.path={path!r}: no readable training images")
    return splits, names, bad
