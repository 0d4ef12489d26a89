"""Search speed and memory: the pipeline's search against the plain Keras Tuner way, in one run.

Run from the project root with the project's virtual environment active:

    python bench/search.py                       # 8 random-search trials of 5 epochs, both ways
    python bench/search.py --trials 4 --epochs 3
    python bench/search.py --memory 20           # resident memory over 20 trials (pipeline way)

Both ways search the same space (unfreeze_blocks 0..3, learning_rate 1e-5..1e-2 log) with the same
budget and seed on the default experiment (UCI digits, 10 labelled examples a class, small_cnn
pretrained on MNIST digits; the pretraining is cached and not timed), so the oracle proposes the
same trials to both:

- plain: every trial rebuilds the pretrained backbone, retrains the head (feature extraction, full
  forward passes, as configured: up to 200 epochs, patience 20), unfreezes and fine-tunes;
- pipeline: feature extraction once (head on features computed once), a checkpoint, then every trial
  restores it and trains only the unfrozen top on the frozen part's output, cached per depth.

Printed: wall time of each way, their ratio (goal >= 3x) and each way's best validation accuracy
(goal: within one point). `--memory N` prints the resident set size after every trial of an N-trial
search and compares trial N to trial 2 (goal: within 20 %).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from record import write_result  # bench/record.py, beside this script

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

SPEED_GOAL, ACCURACY_GOAL_POINTS, MEMORY_GOAL = 3.0, 1.0, 0.20


def compose(trials: int, epochs: int, directory: Path):
    """The default experiment with a random search, tracking off, composed from the real conf/."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import register_configs

    register_configs()
    overrides = [
        "search=random",
        f"search.max_trials={trials}",
        f"search.epochs={epochs}",
        f"search.directory={directory}",
        "tracking=off",
        f"tracking.untracked_cache={directory.parent / 'weights'}",
    ]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose(config_name="config", overrides=overrides))


def pretrained(cfg, task):
    """The pretrained backbone (trained once into the local cache, untimed) and its weights file."""
    from pipeline.pretrain import LocalWeightsStore, pretrained_backbone, recipe_of

    store = LocalWeightsStore(Path(cfg.tracking.untracked_cache))
    backbone = pretrained_backbone(cfg.backbone, task.input_shape, store, False).model
    return backbone, store.path(recipe_of(cfg.backbone, task.input_shape)["hash"])


def pipeline_way(cfg, task, backbone, observer=None) -> float:
    """Feature extraction once, a checkpoint, then the pipeline's search; the best val accuracy."""
    from pipeline.search.stage import make_setup
    from pipeline.search.tuner import require_best, run_search
    from pipeline.stages import StageContext, feature_extraction
    from pipeline.tracking.trial_records import NullObserver

    extracted = feature_extraction(StageContext(cfg, task), backbone)
    setup = make_setup(cfg, task, Path(cfg.search.directory))
    setup.directory.mkdir(parents=True, exist_ok=True)
    extracted.model.save_weights(setup.checkpoint)
    outcome = run_search(setup, observer or NullObserver(), task.train, task.val)
    return require_best(outcome, cfg.search).score


def plain_hypermodel(cfg, task, weights: Path):
    """What one writes without the pipeline: each trial transfers from the pretrained backbone."""
    import keras
    import keras_tuner

    from pipeline.backbones import build_backbone
    from pipeline.catalog import block_count
    from pipeline.data import batches
    from pipeline.model import build_head, compile_classifier, freeze, stack, unfreeze_top

    class PlainHyperModel(keras_tuner.HyperModel):
        def declare_hyperparameters(self, hp):  # the pipeline's space, declared in its order
            rate = cfg.search.learning_rate
            hp.Int("unfreeze_blocks", cfg.search.unfreeze_blocks.min, block_count(cfg.backbone))
            hp.Float("learning_rate", rate.min, rate.max, sampling=rate.sampling)

        def build(self, hp):
            self.declare_hyperparameters(hp)
            backbone = build_backbone(cfg.backbone, task.input_shape)
            backbone.load_weights(weights)
            keras.utils.set_random_seed(cfg.seed)
            freeze(backbone)
            head = build_head(backbone.output_shape[-1], task.num_classes, 0.0)
            model = stack(backbone, head, inference_backbone=True)
            compile_classifier(model, cfg.lr.feature_extraction)
            return model

        def fit(self, hp, model, train, val, callbacks=None, **kwargs):
            """Train the head with full forward passes, then unfreeze and fine-tune."""
            data = batches(train, cfg.dataset.batch_size, shuffle_seed=cfg.seed)
            val_data = batches(val, 256)
            stop = keras.callbacks.EarlyStopping(
                monitor=cfg.train.monitor, patience=cfg.train.patience, restore_best_weights=True
            )
            epochs = cfg.train.epochs.feature_extraction
            model.fit(data, validation_data=val_data, epochs=epochs, callbacks=[stop], verbose=0)
            unfreeze_top(model.layers[1], hp.get("unfreeze_blocks"))
            compile_classifier(model, hp.get("learning_rate"))
            keras.utils.set_random_seed(cfg.seed)
            return model.fit(
                data,
                validation_data=val_data,
                epochs=cfg.search.epochs,
                callbacks=callbacks,
                verbose=0,
            )

    return PlainHyperModel()


def plain_way(cfg, task, weights: Path, directory: Path) -> float:
    import keras_tuner

    from pipeline.search.tuner import make_oracle

    tuner = keras_tuner.Tuner(
        oracle=make_oracle(cfg.search, cfg.seed),
        hypermodel=plain_hypermodel(cfg, task, weights),
        directory=str(directory),
        project_name="plain",
        overwrite=True,
    )
    tuner.search(task.train, task.val, verbose=0)
    return tuner.oracle.get_best_trials(1)[0].score


def timed(label: str, work) -> tuple[float, float]:
    start = time.perf_counter()
    best = work()
    seconds = time.perf_counter() - start
    print(f"{label:<10} {seconds:8.1f} s   best val_accuracy {best:.4f}", flush=True)
    return seconds, best


def speed(trials: int, epochs: int) -> None:
    from pipeline.cli.process import configured
    from pipeline.data import load_task

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(trials, epochs, Path(tmp) / "pipeline")
        with configured(cfg):
            task = load_task(cfg.dataset, cfg.seed)
            backbone, weights = pretrained(cfg, task)
            print(f"random search, {trials} trials of {epochs} epochs, seed {cfg.seed}, same space")
            plain_s, plain_best = timed("plain", lambda: plain_way(cfg, task, weights, Path(tmp)))
            ours_s, ours_best = timed("pipeline", lambda: pipeline_way(cfg, task, backbone))
    ratio, gap = plain_s / ours_s, abs(plain_best - ours_best) * 100
    print(
        f"speed-up plain/pipeline: {ratio:.1f}x (goal >= {SPEED_GOAL:.0f}x: "
        f"{'met' if ratio >= SPEED_GOAL else 'NOT met'})"
    )
    print(
        f"best val accuracy gap: {gap:.2f} points (goal <= {ACCURACY_GOAL_POINTS:.0f}: "
        f"{'met' if gap <= ACCURACY_GOAL_POINTS else 'NOT met'})"
    )
    figures = {
        "plain_seconds": plain_s, "pipeline_seconds": ours_s, "plain_over_pipeline": ratio,
        "plain_best_val_accuracy": plain_best, "pipeline_best_val_accuracy": ours_best,
        "gap_points": gap, "speed_goal_met": ratio >= SPEED_GOAL,
        "accuracy_goal_met": gap <= ACCURACY_GOAL_POINTS,
    }  # fmt: skip
    write_result("search", figures, 1, trials=trials, epochs=epochs)


class RssAfterTrial:
    """An observer that records the resident set size after every trial."""

    def __init__(self):
        import psutil

        self.process, self.rss = psutil.Process(), []

    def trial_started(self, trial_id, values): ...

    def callbacks(self, trial_id, execution):
        return []

    def trial_ended(self, record):
        self.rss.append(self.process.memory_info().rss / 2**20)
        print(f"trial {record.trial_id}: rss {self.rss[-1]:.0f} MiB", flush=True)

    def interrupted(self, error): ...


def memory(trials: int) -> None:
    from pipeline.cli.process import configured
    from pipeline.data import load_task

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(trials, 2, Path(tmp) / "pipeline")
        with configured(cfg):
            task = load_task(cfg.dataset, cfg.seed)
            backbone, _ = pretrained(cfg, task)
            observer = RssAfterTrial()
            pipeline_way(cfg, task, backbone, observer)
    second, last = observer.rss[1], observer.rss[-1]
    growth = last / second - 1
    print(
        f"rss after trial 2: {second:.0f} MiB, after trial {len(observer.rss)}: {last:.0f} MiB, "
        f"growth {growth:+.1%} (goal <= {MEMORY_GOAL:.0%}: "
        f"{'met' if growth <= MEMORY_GOAL else 'NOT met'})"
    )
    figures = {"rss_mib_after_trial": observer.rss, "growth_after_trial_2": growth}
    write_result("search_memory", figures, 1, trials=trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--memory", type=int, metavar="TRIALS", help="memory over TRIALS trials")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.memory:
        memory(args.memory)
    else:
        speed(args.trials, args.epochs)


if __name__ == "__main__":
    main()
