"""Feature extraction: a head trained on cached features vs. full forward passes, per epoch.

Run from the project root with the project's virtual environment active:

    python bench/feature_extraction.py                 # cats_and_dogs_filtered, MobileNetV2 1.0
    python bench/feature_extraction.py --epochs 3 --alpha 0.35

Both ways train the same head on the same frozen backbone (ImageNet MobileNetV2 at 160x160, no
augmentation) over the same training and validation images, in one process:

- full forward passes: backbone + head fitted on images, as without `train.fast_feature_extraction`;
- cached features: the backbone's output computed once for every image, then the head fitted on it.

Printed: the median seconds of an epoch after the first (which traces the graph) for both ways,
the one-off cost of computing the features, the per-epoch ratio, the ratio over `--epochs` epochs
with the one-off cost included, and both ways' validation accuracy (the same work: they agree
closely). Goal: a per-epoch ratio of at least 20x. Measured on the 2-core CPU (2026-11): 15.0 s vs
0.125 s an epoch, 120x; features computed once in 20.1 s; 2.5x over 3 epochs with that included.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
SHARED = PROJECT_ROOT.parent / "shared"
WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"
GOAL = 20.0


class EpochClock:
    """Seconds of every epoch of a fit (a Keras callback, built lazily to import Keras late)."""

    @staticmethod
    def make():
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.start)

        return Clock()


def fit_timed(model, train, val, epochs: int) -> tuple[list[float], float]:
    clock = EpochClock.make()
    history = model.fit(train, validation_data=val, epochs=epochs, callbacks=[clock], verbose=0)
    return clock.seconds, float(history.history["val_accuracy"][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(SHARED / "images" / "cats_and_dogs_filtered"))
    parser.add_argument("--alpha", default="1.0", choices=["0.35", "1.0"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=160)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")  # ours shuffle

    import keras

    from pipeline.backbones import build_backbone
    from pipeline.config import BackboneConfig, DatasetConfig
    from pipeline.data import batches, load_task
    from pipeline.model import build_head, compile_classifier, freeze, stack
    from pipeline.stages import features_of

    data = DatasetConfig(
        name="cats_dogs_filtered", source="folder", path=args.folder,
        image_size=args.image_size, channels=3,
    )  # fmt: skip
    task = load_task(data, seed=0)
    weights = str(SHARED / "keras" / "models" / WEIGHTS.format(alpha=args.alpha))
    backbone_cfg = BackboneConfig(name="mobilenet_v2", weights=weights, alpha=float(args.alpha))
    backbone = build_backbone(backbone_cfg, task.input_shape)
    freeze(backbone)

    keras.utils.set_random_seed(0)
    head = build_head(backbone.output_shape[-1], task.num_classes, 0.2)
    full = stack(backbone, head, inference_backbone=True)
    compile_classifier(full, 1e-3)
    full_epochs, full_acc = fit_timed(
        full, batches(task.train, 32, 0), batches(task.val, 256), args.epochs
    )

    start = time.perf_counter()
    train_f, val_f = features_of(backbone, task.train), features_of(backbone, task.val)
    one_off = time.perf_counter() - start
    keras.utils.set_random_seed(0)
    head = build_head(backbone.output_shape[-1], task.num_classes, 0.2)
    compile_classifier(head, 1e-3)
    cached_epochs, cached_acc = fit_timed(
        head, batches(train_f, 32, 0), batches(val_f, 256), args.epochs
    )
    report(args, task, full_epochs, cached_epochs, one_off, full_acc, cached_acc)


def report(args, task, full_epochs, cached_epochs, one_off, full_acc, cached_acc) -> None:
    """The per-epoch and end-to-end ratios, and the goal met or not."""
    full = statistics.median(full_epochs[1:] or full_epochs)
    cached = statistics.median(cached_epochs[1:] or cached_epochs)
    ratio = full / cached
    end_to_end = sum(full_epochs) / (one_off + sum(cached_epochs))
    n_train, n_val = len(task.train), len(task.val)
    print(f"MobileNetV2 alpha={args.alpha}, {args.image_size}px, {n_train} train + {n_val} val")
    print(f"full forward passes: {full:8.3f} s/epoch   val acc {full_acc:.4f}")
    print(f"cached features:     {cached:8.3f} s/epoch   val acc {cached_acc:.4f}")
    print(f"features computed once: {one_off:.1f} s")
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(f"per-epoch ratio: {ratio:.0f}x (goal >= {GOAL:.0f}x: {verdict})")
    print(f"over {args.epochs} epochs, one-off cost included: {end_to_end:.1f}x")


if __name__ == "__main__":
    main()
