"""The boundary cache: training above the frozen part on activations computed once, vs. the full
model, per epoch, for feature extraction and for fine-tuning.

Run from the project root with the project's virtual environment active:

    python bench/feature_extraction.py                 # cats_and_dogs_filtered, MobileNetV2 1.0
    python bench/feature_extraction.py --epochs 3 --unfreeze-blocks 7 --alpha 0.35

Both ways train the same model on the same training and validation images (ImageNet MobileNetV2 at
160x160, no augmentation, BatchNorm in inference mode), in one process, one stage after the other:

- feature extraction (boundary: the whole backbone): backbone + head fitted on images, as with
  `train.cache_boundary=false`, vs. the head fitted on the backbone's output computed once;
- fine-tuning of the top `--unfreeze-blocks` blocks (boundary: below the first unfrozen block,
  `cats_dogs_mobilenet`'s 3 by default): the whole model fitted on images vs. the unfrozen top
  fitted on the frozen bottom's activations computed once (the pipeline's `FrozenFeatures`).
  Both start from the same weights.

Printed per stage: the median seconds of an epoch after the first (which traces the graph) both
ways, the one-off cost of computing the activations, the per-epoch ratio (goal: 20x for feature
extraction, 10x for fine-tuning), the ratio over `--epochs` epochs with the one-off cost included,
both ways' last validation accuracy (the same work: they agree closely) and the process's peak
resident memory.
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

from record import write_result  # bench/record.py, beside this script

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
SHARED = PROJECT_ROOT.parent / "shared"
WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"
GOALS = {"feature_extraction": 20.0, "fine_tune": 10.0}


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


def both_ways(model, lr: float, task, epochs: int) -> dict:
    """The model fitted on images, then (from the same weights) above its freeze boundary."""
    from pipeline.boundary import FrozenFeatures
    from pipeline.data import batches, eval_batches
    from pipeline.model import compile_classifier

    start_weights = model.get_weights()
    compile_classifier(model, lr)
    full = fit_timed(model, batches(task.train, 32, 0), eval_batches(task.val), epochs)
    model.set_weights(start_weights)
    start = time.perf_counter()
    part, (train, val) = FrozenFeatures(True, 2.0).above(model, (task.train, task.val))
    one_off = time.perf_counter() - start
    assert part is not model, "nothing was cached"
    compile_classifier(part, lr)
    cached = fit_timed(part, batches(train, 32, 0), eval_batches(val), epochs)
    return {"full": full, "cached": cached, "one_off": one_off}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(SHARED / "images" / "cats_and_dogs_filtered"))
    parser.add_argument("--alpha", default="1.0", choices=["0.35", "1.0"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--unfreeze-blocks", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=160)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")  # ours shuffle

    import keras

    from pipeline.backbones import build_backbone
    from pipeline.config import BackboneConfig, DatasetConfig
    from pipeline.data import load_task
    from pipeline.model import build_head, freeze, stack, unfreeze_top

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
    model = stack(backbone, head, inference_backbone=True)
    stages = {"feature_extraction": both_ways(model, 1e-3, task, args.epochs)}
    unfreeze_top(backbone, args.unfreeze_blocks)
    stages["fine_tune"] = both_ways(model, 1e-5, task, args.epochs)
    n_train, n_val = len(task.train), len(task.val)
    print(f"MobileNetV2 alpha={args.alpha}, {args.image_size}px, {n_train} train + {n_val} val")
    figures = {stage: report(stage, measured, args.epochs) for stage, measured in stages.items()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak:.0f} MiB")
    figures["peak_rss_mib"] = peak
    settings = {k: v for k, v in vars(args).items() if k != "folder"}
    write_result("feature_extraction", figures, 1, train=n_train, val=n_val, **settings)


def report(stage: str, measured: dict, epochs: int) -> dict:
    """One stage's per-epoch and end-to-end ratios, and its goal met or not; its figures."""
    (full_epochs, full_acc), (cached_epochs, cached_acc) = measured["full"], measured["cached"]
    full = statistics.median(full_epochs[1:] or full_epochs)
    cached = statistics.median(cached_epochs[1:] or cached_epochs)
    ratio, goal = full / cached, GOALS[stage]
    end_to_end = sum(full_epochs) / (measured["one_off"] + sum(cached_epochs))
    print(f"{stage}:")
    print(f"  full model:             {full:8.3f} s/epoch   val acc {full_acc:.4f}")
    print(f"  above the boundary:     {cached:8.3f} s/epoch   val acc {cached_acc:.4f}")
    print(f"  activations computed once: {measured['one_off']:.1f} s")
    verdict = "met" if ratio >= goal else "NOT met"
    print(f"  per-epoch ratio: {ratio:.1f}x (goal >= {goal:.0f}x: {verdict})")
    print(f"  over {epochs} epochs, one-off cost included: {end_to_end:.1f}x")
    return {
        "full_seconds_per_epoch": full, "cached_seconds_per_epoch": cached,
        "full_val_accuracy": full_acc, "cached_val_accuracy": cached_acc,
        "activations_once_seconds": measured["one_off"], "per_epoch_ratio": ratio,
        "goal_ratio": goal, "goal_met": ratio >= goal, "end_to_end_ratio": end_to_end,
    }  # fmt: skip


if __name__ == "__main__":
    main()
