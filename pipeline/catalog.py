"""What each backbone is, known without building it: names, block counts, smallest input size.

Kept free of Keras and TensorFlow so that a config is checked against it in the time Python and
Hydra take to start; pipeline/backbones.py builds the models.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import BackboneConfig

IN_HOUSE = ("small_cnn", "mlp")


@dataclass(frozen=True)
class Application:
    """A keras.applications family: how to build it and how its layers form blocks."""

    module: str  # keras.applications submodule holding preprocess_input
    constructor: str
    min_size: int  # smallest input side the architecture accepts
    blocks: int  # entries of its block map
    block_pattern: str  # regex whose first group names a layer's block


APPLICATIONS = {
    "mobilenet_v2": Application("mobilenet_v2", "MobileNetV2", 32, 17, r"^(block_\d+|Conv_1)"),
    "efficientnet_b0": Application(
        "efficientnet", "EfficientNetB0", 32, 17, r"^(block\d+[a-z]|top)_"
    ),
    "resnet50": Application("resnet50", "ResNet50", 32, 16, r"^(conv\d_block\d+)_"),
    "xception": Application("xception", "Xception", 71, 14, r"^(block\d+)_"),
    "vgg16": Application("vgg16", "VGG16", 32, 5, r"^(block\d+)_"),
}
IN_HOUSE_PATTERN = r"^(block\d+)_"
BACKBONES = (*IN_HOUSE, *APPLICATIONS)


def block_count(cfg: BackboneConfig) -> int:
    """How many blocks the backbone's block map has, known from its config alone."""
    return APPLICATIONS[cfg.name].blocks if cfg.name in APPLICATIONS else len(cfg.widths)


def min_image_size(name: str) -> int:
    """The smallest input side a backbone accepts (1 for in-house backbones)."""
    return APPLICATIONS[name].min_size if name in APPLICATIONS else 1
