"""Label tasks: keep some classes, or merge and remap them into new ones.

`dataset.classes: [cat, dog]` keeps those classes, relabelled 0..K-1 in the listed order.
`dataset.groups: {upper_body: [T-shirt/top, Pullover, Coat, Shirt], other: ["*"]}` merges classes
into new ones, in the listed order; `"*"` stands for every class no other group names. Classes are
named by their dataset's names or by their index.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError

REST = "*"


def class_index(ref: str, names: list[str], key: str) -> int:
    """The index of a class referred to by name or by index (as text)."""
    if ref in names:
        return names.index(ref)
    if str(ref).isdigit() and int(ref) < len(names):
        return int(ref)
    raise ConfigError(
        f"{key} names class {ref!r}; allowed: one of {names} or an index 0..{len(names) - 1}"
    )


def groups_mapping(groups: dict[str, list[str]], names: list[str]) -> np.ndarray:
    """Old label -> new label (-1: dropped) for `dataset.groups`."""
    mapping = np.full(len(names), -1, dtype="int32")
    rest_group = None
    for new, (group, members) in enumerate(groups.items()):
        for ref in members:
            if ref == REST:
                rest_group = new
                continue
            old = class_index(str(ref), names, f"dataset.groups.{group}")
            if mapping[old] != -1:
                raise ConfigError(f"dataset.groups names class {names[old]!r} in two groups")
            mapping[old] = new
    if rest_group is not None:
        mapping[mapping == -1] = rest_group
    return mapping


def label_mapping(
    names: list[str], classes: list[str] | None, groups: dict[str, list[str]] | None
) -> tuple[np.ndarray, list[str]]:
    """Old label -> new label (-1: dropped), and the new class names."""
    if groups:
        return groups_mapping(groups, names), list(groups)
    if classes:
        mapping = np.full(len(names), -1, dtype="int32")
        for new, ref in enumerate(classes):
            mapping[class_index(str(ref), names, "dataset.classes")] = new
        return mapping, [names[int(np.flatnonzero(mapping == i)[0])] for i in range(len(classes))]
    return np.arange(len(names), dtype="int32"), list(names)


def relabel(x: np.ndarray, y: np.ndarray, mapping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the examples whose class maps somewhere, with their new labels."""
    new = mapping[y]
    keep = new >= 0
    if keep.all():
        return x, new
    return x[keep], new[keep]
