"""The three stages of an experiment: scratch, feature extraction, fine-tuning.

Stages share the task's splits and the seed, so their numbers are comparable; the test split is
touched only by each stage's final evaluation. Stages return plain results and never talk to MLflow:
tracking comes in as Keras callbacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import keras

from pipeline.backbones import build_backbone
from pipeline.boundary import FrozenFeatures, lowest_trainable
from pipeline.config import Config
from pipeline.data import Split, TaskData, batches, eval_batches
from pipeline.model import (
    FitResult,
    backbone_of,
    build_head,
    compile_classifier,
    fit,
    freeze,
    stack,
    trainable_param_count,
    unfreeze_top,
)

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """One stage's trained model and its numbers."""

    stage: str
    model: keras.Model
    fit: FitResult
    test_loss: float
    test_accuracy: float
    seconds: float
    params: dict[str, object] = field(default_factory=dict)
    head: keras.Model | None = None

    @property
    def best_val_accuracy(self) -> float:
        return self.fit.best_val_accuracy


@dataclass
class StageContext:
    """What every stage needs: the config, the task, and callbacks for each stage's fit."""

    cfg: Config
    task: TaskData
    callbacks: Callable[[str], list[keras.callbacks.Callback]] = lambda stage: []
    progress_bar: bool = False
    frozen: FrozenFeatures = field(init=False)  # the boundary cache of the pretrained backbone

    def __post_init__(self) -> None:
        self.frozen = FrozenFeatures.configured(self.cfg)

    def train_batches(self, split: Split | None = None):
        """Shuffled training batches: images (augmented if configured), or given features."""
        augment = self.cfg.dataset.augment if split is None else None
        split = self.task.train if split is None else split
        return batches(split, self.cfg.dataset.batch_size, self.cfg.seed, augment)

    def fit(self, model: keras.Model, stage: str, train, val, start=None) -> FitResult:
        return fit(
            model,
            train,
            val,
            epochs=getattr(self.cfg.train.epochs, stage),
            patience=self.cfg.train.patience,
            monitor=self.cfg.train.monitor,
            callbacks=self.callbacks(stage),
            progress_bar=self.progress_bar,
            label=stage,
            start=start,
        )


def evaluate(model: keras.Model, split) -> tuple[float, float]:
    """(loss, accuracy) of a compiled model on a batched split."""
    loss, accuracy = model.evaluate(split, verbose=0)
    return float(loss), float(accuracy)


def scratch(ctx: StageContext) -> StageResult:
    """The same architecture from random initialisation, every weight trained on the target task."""
    start = time.perf_counter()
    keras.utils.set_random_seed(ctx.cfg.seed)
    random_init = replace(ctx.cfg.backbone, weights=None)  # never pretrained weights
    backbone = build_backbone(random_init, ctx.task.input_shape)
    head = build_head(
        backbone.output_shape[-1], ctx.task.num_classes, ctx.cfg.backbone.head_dropout
    )
    model = stack(backbone, head, inference_backbone=False)
    compile_classifier(model, ctx.cfg.lr.scratch)
    val = eval_batches(ctx.task.val)
    result = ctx.fit(model, "scratch", ctx.train_batches(), val)
    test_loss, test_accuracy = evaluate(model, eval_batches(ctx.task.test))
    params = {"trainable_params": trainable_param_count(model), "learning_rate": ctx.cfg.lr.scratch}
    seconds = time.perf_counter() - start
    return StageResult("scratch", model, result, test_loss, test_accuracy, seconds, params, head)


def train_above_boundary(
    ctx: StageContext, model: keras.Model, stage: str, lr: float, start: dict | None = None
):
    """Fit and test a compiled-to-be classifier: on the boundary cache's activations when its
    frozen part allows (same numbers, far cheaper), else the whole model on the images.
    `start`: the validation metrics of its current weights, kept unless an epoch beats them.
    Returns (fit result, test loss, test accuracy); `model` ends compiled at `lr`."""
    task = ctx.task
    part, (train, val, test) = ctx.frozen.above(model, (task.train, task.val, task.test))
    compile_classifier(part, lr)
    train_batches = ctx.train_batches() if part is model else ctx.train_batches(train)
    result = ctx.fit(part, stage, train_batches, eval_batches(val), start)
    test_loss, test_accuracy = evaluate(part, eval_batches(test))
    if part is not model:
        compile_classifier(model, lr)
    return result, test_loss, test_accuracy


def prefetch_fine_tune_boundary(ctx: StageContext, backbone: keras.Model) -> None:
    """Fine-tuning at a configured depth follows: its boundary's activations are computed first,
    and the head's features from them, so the images pass through the frozen bottom once."""
    cfg = ctx.cfg
    if "fine_tune" not in cfg.stages or cfg.search.tuner != "none" or not ctx.frozen.enabled:
        return
    unfreeze_top(backbone, cfg.freeze.unfreeze_blocks, cfg.freeze.unfreeze_layers)
    position = lowest_trainable(backbone)
    freeze(backbone)
    ctx.frozen.prefetch(backbone, position, (ctx.task.train, ctx.task.val, ctx.task.test))


def feature_extraction(ctx: StageContext, backbone: keras.Model) -> StageResult:
    """Pretrained backbone frozen, a new head trained on top of it.

    A frozen backbone without augmentation computes the same features every epoch, so by default
    they are computed once and only the head is trained on them: same result, far cheaper. With
    augmentation every epoch sees new images, and the whole model runs.
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(ctx.cfg.seed)
    prefetch_fine_tune_boundary(ctx, backbone)
    freeze(backbone)
    head = build_head(
        backbone.output_shape[-1], ctx.task.num_classes, ctx.cfg.backbone.head_dropout
    )
    model = stack(backbone, head, inference_backbone=True)
    lr = ctx.cfg.lr.feature_extraction
    result, test_loss, test_accuracy = train_above_boundary(ctx, model, "feature_extraction", lr)
    params = {"trainable_params": trainable_param_count(model), "learning_rate": lr}
    seconds = time.perf_counter() - start
    return StageResult(
        "feature_extraction", model, result, test_loss, test_accuracy, seconds, params, head
    )


def fine_tune(
    ctx: StageContext,
    extracted: StageResult,
    unfreeze_blocks: int | None = None,
    learning_rate: float | None = None,
) -> StageResult:
    """Continue from the feature-extraction model with the top blocks unfrozen, at a lower rate;
    the frozen blocks below them run once per split (the boundary cache), not every epoch."""
    start = time.perf_counter()
    keras.utils.set_random_seed(ctx.cfg.seed)
    model = extracted.model
    backbone = backbone_of(model)
    freeze_cfg = ctx.cfg.freeze
    blocks = freeze_cfg.unfreeze_blocks if unfreeze_blocks is None else unfreeze_blocks
    unfrozen = unfreeze_top(backbone, blocks, freeze_cfg.unfreeze_layers)
    lr = ctx.cfg.lr.fine_tune if learning_rate is None else learning_rate
    # compiled after the change of `trainable`, which takes effect only then
    extracted_scores = None
    if ctx.cfg.train.fine_tune_must_improve:  # feature extraction's weights, unless beaten
        extracted_scores = {name: extracted.fit.best(name) for name in ("val_accuracy", "val_loss")}
    result, test_loss, test_accuracy = train_above_boundary(
        ctx, model, "fine_tune", lr, extracted_scores
    )
    params = {
        "trainable_params": trainable_param_count(model),
        "learning_rate": lr,
        "unfreeze_blocks": "all" if blocks is None else blocks,
        "unfrozen": ",".join(unfrozen),
    }
    seconds = time.perf_counter() - start
    return StageResult("fine_tune", model, result, test_loss, test_accuracy, seconds, params)
