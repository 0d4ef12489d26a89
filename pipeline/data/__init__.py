"""Datasets -> train/validation/test splits, read by the `dataset` config group.

Sources: `embedded` (ships inside a package), `tfds` (any TensorFlow Datasets name) and `folder`
(one subfolder per class). Label tasks, the low-data regime and augmentation apply to all of them.
Modules: splits (in-memory splits, batching), embedded, tfds_source, folder, labels, task.
"""

from pipeline.data.embedded import EMBEDDED_LOADERS, load_embedded
from pipeline.data.splits import (
    Split,
    TaskData,
    augmenting,
    batches,
    per_class_sample,
    split_task,
)
from pipeline.data.task import load_source_task, load_task

__all__ = [
    "EMBEDDED_LOADERS",
    "Split",
    "TaskData",
    "augmenting",
    "batches",
    "load_embedded",
    "load_source_task",
    "load_task",
    "per_class_sample",
    "split_task",
]
