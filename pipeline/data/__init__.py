"""Datasets -> train/validation/test splits, read by the `dataset` config group.

Sources: `embedded` (ships inside a package), `tfds` (any TensorFlow Datasets name) and `folder`
(one subfolder per class). Label tasks, the low-data regime and augmentation apply to all of them.
Modules: splits (in-memory splits, batching), embedded, tfds_source, folder, labels, task.

The names below load their module (and TensorFlow) on first use, so that checking a config, which
imports `pipeline.data.embedded`, does not import TensorFlow.
"""

from __future__ import annotations

from importlib import import_module

EXPORTS = {
    "EMBEDDED_LOADERS": "embedded",
    "load_embedded": "embedded",
    "Split": "splits",
    "TaskData": "splits",
    "augmenting": "splits",
    "batches": "splits",
    "eval_batches": "splits",
    "inference_batch_size": "splits",
    "per_class_sample": "splits",
    "split_task": "splits",
    "load_source_task": "task",
    "load_task": "task",
}

__all__ = sorted(EXPORTS)


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{EXPORTS[name]}"), name)
    globals()[name] = value
    return value
