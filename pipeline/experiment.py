"""The composition root: config -> data -> backbone -> stages, every step tracked.

`run_experiment` is what `python -m pipeline` calls; it returns the last stage's best validation
accuracy, so that a Hydra sweeper can optimise it (never the test accuracy).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import partial

import keras
from omegaconf import DictConfig, OmegaConf

from pipeline.backbones import build_backbone
from pipeline.catalog import APPLICATIONS
from pipeline.config import Config
from pipeline.data import TaskData, load_task
from pipeline.errors import ConfigError, TrackingLost
from pipeline.interrupts import raise_if_interrupted
from pipeline.pretrain import pretrained_backbone
from pipeline.provenance import (
    config_hash,
    git_commit,
    hydra_tags,
    package_versions,
    run_name,
    variant_hash,
)
from pipeline.stages import StageContext, StageResult, feature_extraction, fine_tune, scratch
from pipeline.summary import summary_table
from pipeline.sweeps.job import sweep_run_id
from pipeline.tracking import Tracker, check_server, open_tracker
from pipeline.validation import check_config

log = logging.getLogger(__name__)


def searching(cfg: Config) -> bool:
    return cfg.search.tuner != "none"


def distributed_worker() -> bool:
    """A Keras Tuner worker (KERASTUNER_* set, not the chief) runs trials, not an experiment."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return False
    from pipeline.search.roles import role

    return role() == "worker"


def parent_tags(cfg: Config, resolved: dict, extra: dict[str, str] | None = None) -> dict[str, str]:
    tags = {
        "dataset": cfg.dataset.name,
        "backbone": cfg.backbone.name,
        "seed": str(cfg.seed),
        "config_hash": config_hash(resolved),
        "variant_hash": variant_hash(resolved),
        "git_commit": git_commit(),
    }
    tags["mlflow.source.git.commit"] = tags["git_commit"].removesuffix("-dirty")
    versions = {f"version.{name}": v for name, v in package_versions().items()}
    return {**tags, **versions, **hydra_tags(), **(extra or {})}


def backbone_for_transfer(
    cfg: Config, input_shape, tracker: Tracker, progress_bar: bool
) -> keras.Model:
    """The pretrained backbone: keras.applications weights (ImageNet or a file), random, or an
    in-house backbone pretrained on its source task (reused when its recipe ran before)."""
    if cfg.backbone.weights is None or cfg.backbone.name in APPLICATIONS:
        keras.utils.set_random_seed(cfg.seed)
        tracker.set_tags({"backbone_weights": str(cfg.backbone.weights or "random")})
        return build_backbone(cfg.backbone, input_shape)
    store = tracker.weights_store()
    pretrained = pretrained_backbone(cfg.backbone, input_shape, store, progress_bar)
    tracker.set_tags(
        {
            "backbone_run_id": pretrained.reference,
            "backbone_recipe": pretrained.recipe_hash,
            "backbone_reused": str(pretrained.reused).lower(),
        }
    )
    return pretrained.model


def log_skipped_files(tracker: Tracker, skipped: tuple[str, ...]) -> None:
    """Unreadable images left out of the dataset: counted, and the first ones named."""
    if skipped:
        tracker.log_metrics({"skipped_images": len(skipped)})
        tracker.set_tags({"skipped_images": ", ".join(skipped[:20])[:4000]})


def log_stage(tracker: Tracker, result: StageResult) -> None:
    tracker.log_params(result.params)
    tracker.log_metrics(
        {
            "best_val_accuracy": result.best_val_accuracy,
            "test_loss": result.test_loss,
            "test_accuracy": result.test_accuracy,
            # counted from 1, like the terminal's; 0: fine-tuning kept the weights it started from
            "best_epoch": result.fit.best_epoch + 1,
            "epochs_run": result.fit.epochs,
            "seconds": result.seconds,
        }
    )
    tracker.log_learning_curve(result.fit.history, result.stage, result.fit.best_epoch)


class StagesFailed(RuntimeError):
    """One or more stages failed; the others ran. Fails the parent run."""


def run_stage(stage: str, ctx: StageContext, backbone: keras.Model, done: dict) -> StageResult:
    log.info("stage %s", stage)
    if stage == "scratch":
        return scratch(ctx)
    if stage == "feature_extraction":
        return feature_extraction(ctx, backbone)
    if "search" in done:
        from pipeline.search.stage import fine_tune_chosen

        return fine_tune_chosen(ctx, done["feature_extraction"], done["search"])
    return fine_tune(ctx, done["feature_extraction"])


def run_search_stage(
    ctx: StageContext, tracker: Tracker, config_hash: str, done: dict, failures: dict
) -> bool:
    """The search of the fine-tuning stage, its own run beside the stages: its best trial goes
    into `done["search"]`, or its error into `failures`; whether fine-tuning can go on."""
    from pipeline.search.stage import search_stage  # Keras Tuner only when searching

    try:
        done["search"] = search_stage(ctx, done["feature_extraction"], tracker, config_hash)
    except TrackingLost:  # the other stages could not log either
        raise
    except Exception as error:
        raise_if_interrupted(cause=error)
        failures["search"] = f"{type(error).__name__}: {error}".splitlines()[0]
        failures["fine_tune"] = "not run: the search failed"
        return False
    return True


def run_stages(
    ctx: StageContext, pretrained: Callable[[], keras.Model], tracker: Tracker, config_hash: str
):
    """Each configured stage in its own child run; fine-tuning continues feature extraction.

    The pretrained backbone is fetched (or pretrained) first, and only when feature extraction
    needs it.
    A stage that fails ends its run FAILED and the stages that do not depend on it still run.
    Returns the results of the stages that finished and the errors of the others.
    """
    done: dict[str, StageResult] = {}
    rows, failures = [], {}
    backbone = None
    if "feature_extraction" in ctx.cfg.stages:
        try:  # before any stage trains: weights that cannot load are a config mistake (exit 2)
            backbone = pretrained()  # tagged on the parent run
        except (ConfigError, TrackingLost):
            raise
        except Exception as error:
            raise_if_interrupted(cause=error)  # an interrupt come out as another error
            failures["feature_extraction"] = f"pretrained backbone: {type(error).__name__}: {error}"
            log.error("stage feature_extraction failed: %s", failures["feature_extraction"])
    for stage in ctx.cfg.stages:
        if stage == "feature_extraction" and backbone is None:
            continue
        if stage == "fine_tune" and "feature_extraction" not in done:
            failures[stage] = "not run: feature_extraction failed"
            continue
        no_search = stage != "fine_tune" or not searching(ctx.cfg)
        if not (no_search or run_search_stage(ctx, tracker, config_hash, done, failures)):
            continue
        try:
            with tracker.stage_run(stage):
                result = run_stage(stage, ctx, backbone, done)
                log_stage(tracker, result)
                rows.append(result)
        except TrackingLost:  # the other stages could not log either
            raise
        except Exception as error:
            raise_if_interrupted(cause=error)  # no later stage starts after Ctrl-C or SIGTERM
            failures[stage] = f"{type(error).__name__}: {error}".splitlines()[0]
            log.error("stage %s failed: %s", stage, failures[stage])
            continue
        done[stage] = result
    return rows, failures


def run_experiment(cfg: DictConfig, extra_tags: dict[str, str] | None = None) -> float:
    """Validate, load, pretrain (or reuse), run the stages, print the summary.

    The tracker is opened (the store created) only once the config and the data are known to be
    valid, and closed before this returns or raises; a tracking server that does not answer is
    found before the data loads.
    """
    config: Config = OmegaConf.to_object(cfg)
    check_config(config)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    check_server(config.tracking)
    task = load_task(config.dataset, config.seed)
    with open_tracker(config.tracking) as tracker:
        if distributed_worker():
            from pipeline.search.stage import run_worker

            return run_worker(config, task, config_hash(resolved), tracker)
        return run_tracked(config, resolved, task, tracker, extra_tags)


def run_tracked(
    config: Config, resolved: dict, task: TaskData, tracker: Tracker, extra_tags: dict | None
) -> float:
    """The parent run and its stages; the last stage's best validation accuracy."""
    progress_bar = sys.stdout.isatty()
    tags = parent_tags(config, resolved, extra_tags)
    command = tags.get("command", "")
    name = run_name(config.dataset.name, config.backbone.name, config.seed, command)
    with tracker.experiment_run(name, tags, sweep_run_id(config.tracking)) as parent_id:
        tracker.log_config(resolved)
        log_skipped_files(tracker, task.skipped_files)
        ctx = StageContext(config, task, tracker.callbacks, progress_bar)
        pretrained = partial(backbone_for_transfer, config, task.input_shape, tracker, progress_bar)
        rows, failures = run_stages(ctx, pretrained, tracker, tags["config_hash"])
        metrics = {f"{r.stage}_test_accuracy": r.test_accuracy for r in rows}
        if not failures:  # what the job returns, so that a skipped job can return it again
            metrics["objective"] = rows[-1].best_val_accuracy
        tracker.log_metrics(metrics)
        ids = tracker.run_ids()
        table = [(result, ids.get(result.stage, "-")) for result in rows]
        print(summary_table(table, parent_id, tracker.ui_command()))
        if failures:
            raise StagesFailed("; ".join(f"{s}: {e}" for s, e in failures.items()))
    return rows[-1].best_val_accuracy
