"""Source-task pretraining of in-house backbones, once per distinct recipe.

A recipe is the backbone config (its `source.seed` included) and the input shape; its hash names
the result. Where the
weights are kept (an MLflow run, or a local folder when tracking is off) is the store's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Protocol

import keras

from pipeline.backbones import build_backbone
from pipeline.config import BACKBONE_WEIGHTS_FILE, BackboneConfig
from pipeline.data import batches, load_source_task
from pipeline.model import build_head, compile_classifier, fit, stack

log = logging.getLogger(__name__)

WEIGHTS_FILE = BACKBONE_WEIGHTS_FILE


@dataclass(frozen=True)
class PretrainedBackbone:
    """A backbone with its pretrained weights loaded, and where those came from."""

    model: keras.Model
    recipe_hash: str
    reference: str  # MLflow run id of the pretraining run, or the local weights path
    reused: bool


class WeightsStore(Protocol):
    """Where pretrained backbone weights are found again by recipe hash."""

    def load(self, recipe_hash: str, model: keras.Model) -> str | None:
        """Load the weights this recipe pretrained into `model`; their reference (a run id or a
        path), or None when it never ran. Nothing fetched for it outlives the call."""

    def save(self, recipe: dict, weights_file: Path, metrics: dict[str, float]) -> str:
        """Keep the weights; return their reference (a run id or a path)."""


class LocalWeightsStore:
    """A folder of `<recipe hash>.weights.h5` files: the store when MLflow tracking is off."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, recipe_hash: str) -> Path:
        return self.folder / f"{recipe_hash}.weights.h5"

    def load(self, recipe_hash: str, model: keras.Model) -> str | None:
        path = self.path(recipe_hash)
        if not path.exists():
            return None
        model.load_weights(path)
        return str(path)

    def save(self, recipe: dict, weights_file: Path, metrics: dict[str, float]) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(recipe["hash"])
        partial = target.with_suffix(".partial")
        partial.write_bytes(weights_file.read_bytes())
        os.replace(partial, target)  # atomic: an interrupted write never looks complete
        return str(target)


def recipe_of(cfg: BackboneConfig, input_shape: tuple[int, ...]) -> dict:
    """Everything that determines the pretrained weights, with its hash."""
    plain = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    recipe = {"backbone": plain, "input_shape": list(input_shape), "seed": cfg.source.seed}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return {**recipe, "hash": digest}


def pretrain(cfg: BackboneConfig, input_shape: tuple[int, ...], progress_bar: bool):
    """Train backbone + head on the source task; return the backbone and its source metrics."""
    seed = cfg.source.seed
    source = load_source_task(cfg.source, seed, input_shape)  # conformed to the target's shape
    keras.utils.set_random_seed(seed)
    backbone = build_backbone(cfg, input_shape)
    head = build_head(backbone.output_shape[-1], source.num_classes, cfg.head_dropout)
    model = stack(backbone, head, inference_backbone=False)
    compile_classifier(model, cfg.source.learning_rate)
    log.info("pretraining %s on %s (%d examples)", cfg.name, source.name, len(source.train))
    result = fit(
        model,
        batches(source.train, cfg.source.batch_size, shuffle_seed=seed),
        batches(source.val, 256),
        epochs=cfg.source.epochs,
        patience=cfg.source.epochs,
        monitor="val_accuracy",
        callbacks=[],
        progress_bar=progress_bar,
        label=f"pretrain {cfg.name}",
    )
    return backbone, {"source_val_accuracy": result.best_val_accuracy}


def pretrained_backbone(
    cfg: BackboneConfig,
    input_shape: tuple[int, ...],
    store: WeightsStore,
    progress_bar: bool,
) -> PretrainedBackbone:
    """The backbone pretrained on its source task: reused from `store`, or trained and stored."""
    recipe = recipe_of(cfg, input_shape)
    backbone = build_backbone(cfg, input_shape)
    reference = store.load(recipe["hash"], backbone)
    if reference is not None:
        log.info("reusing pretrained %s (recipe %s) from %s", cfg.name, recipe["hash"], reference)
        return PretrainedBackbone(backbone, recipe["hash"], reference, reused=True)
    trained, metrics = pretrain(cfg, input_shape, progress_bar)
    with tempfile.TemporaryDirectory() as tmp:
        weights_file = Path(tmp) / WEIGHTS_FILE
        trained.save_weights(weights_file)
        reference = store.save(recipe, weights_file, metrics)
        backbone.load_weights(weights_file)
    return PretrainedBackbone(backbone, recipe["hash"], reference, reused=False)
