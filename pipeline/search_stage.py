"""The search stage, between feature extraction and the final fine-tune: wiring, not algorithms.

Locally or as the distributed chief: save the feature-extraction checkpoint, run the search in a
`search` run (a fresh one, or the unfinished one of the same config, resumed) and return the best
trial. As a distributed worker: attach to the chief's search run, fetch its checkpoint and run
trials until the chief's oracle says stop. Keras Tuner lives in search.py, MLflow in
search_tracking.py.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
from hydra.core.hydra_config import HydraConfig

from pipeline.backbones import block_count, build_backbone
from pipeline.config import Config, SearchConfig
from pipeline.data import TaskData, augmenting
from pipeline.errors import ConfigError, SearchError
from pipeline.model import build_head, save_weights_atomically, stack
from pipeline.search import (
    CHECKPOINT,
    HYPERPARAMETERS,
    NullObserver,
    SearchSetup,
    TrialRecord,
    require_best,
    role,
    run_search,
    tuner_id,
)
from pipeline.search_tracking import (
    TrialRuns,
    close_stale_trials,
    log_search_summary,
    resumable_search,
    resume_tags,
    search_params,
    wait_for_chief,
)
from pipeline.stages import StageContext, StageResult, fine_tune
from pipeline.tracking import Tracker, tracked_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchChoice:
    """What the final fine-tune takes from the search."""

    best: TrialRecord
    checkpoint: Path  # the feature-extraction weights every trial started from
    run_id: str  # the search run ("-" when tracking is off)

    @property
    def values(self) -> dict[str, object]:
        return {name: self.best.values[name] for name in HYPERPARAMETERS}


def classifier_factory(cfg: Config, task: TaskData):
    """Backbone + head as feature extraction stacks them; weights come from a checkpoint."""
    architecture = dataclasses.replace(cfg.backbone, weights=None)  # nothing to download

    def build() -> keras.Model:
        backbone = build_backbone(architecture, task.input_shape)
        head = build_head(backbone.output_shape[-1], task.num_classes, cfg.backbone.head_dropout)
        return stack(backbone, head, inference_backbone=True)

    return build


def default_directory() -> Path:
    """<the run's output dir>/search; outside Hydra (tests, notebooks) a fresh temporary folder."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir) / "search"
    return Path(tempfile.mkdtemp(prefix="transfer-lab-search-"))


def make_setup(cfg: Config, task: TaskData, directory: Path) -> SearchSetup:
    return SearchSetup(
        cfg=cfg.search,
        directory=directory,
        build_classifier=classifier_factory(cfg, task),
        block_count=block_count(cfg.backbone),
        batch_size=cfg.dataset.batch_size,
        seed=cfg.seed,
        cache_features=cfg.search.cache_features and not augmenting(cfg.dataset.augment),
    )


def search_run(tracker, previous, config_hash: str):
    """The search's MLflow run: resumed when `previous` is given, else a new child run."""
    if not tracker.enabled:
        return nullcontext()
    if previous is not None:
        tags = resume_tags(previous, mlflow.active_run().info.run_id)
        return tracked_run(run_id=previous.info.run_id, nested=True, tags=tags)
    tags = {"stage": "search", "config_hash": config_hash, "search_state": "running"}
    return tracked_run(
        experiment_id=tracker.experiment_id, run_name="search", nested=True, tags=tags
    )


def start_fresh(setup: SearchSetup, extracted: StageResult, tracker) -> None:
    """Checkpoint the feature-extraction model where every trial (and worker) finds it."""
    setup.directory.mkdir(parents=True, exist_ok=True)
    save_weights_atomically(extracted.model, setup.checkpoint)
    if tracker.enabled:
        mlflow.log_params(search_params(setup.cfg, setup.block_count))
        mlflow.set_tags({"search_dir": str(setup.directory.resolve()), "tuner": setup.cfg.tuner})
        mlflow.log_artifact(str(setup.checkpoint))


def resume(previous, tracker) -> Path:
    directory = Path(previous.data.tags["search_dir"])
    log.info("resuming search run %s from %s", previous.info.run_id, directory)
    if "error" in previous.data.tags:
        tracker.client.delete_tag(previous.info.run_id, "error")
    close_stale_trials(tracker.client, tracker.experiment_id, previous.info.run_id)
    return directory


def search_stage(ctx: StageContext, extracted: StageResult, tracker) -> SearchChoice:
    """Search (or resume the search of) the fine-tuning depth and rate; the best trial."""
    cfg = ctx.cfg
    config_hash = mlflow.active_run().data.tags["config_hash"] if tracker.enabled else ""
    previous = (
        resumable_search(tracker.client, tracker.experiment_id, config_hash)
        if tracker.enabled and role() != "worker"
        else None
    )
    with search_run(tracker, previous, config_hash):
        if previous is not None:
            directory = resume(previous, tracker)
        else:
            directory = Path(cfg.search.directory) if cfg.search.directory else default_directory()
        setup = make_setup(cfg, ctx.task, directory)
        if previous is None:
            start_fresh(setup, extracted, tracker)
        best = search_in_run(setup, ctx.task, tracker)
        run_id = mlflow.active_run().info.run_id if tracker.enabled else "-"
    return SearchChoice(best, setup.checkpoint, run_id)


def search_in_run(setup: SearchSetup, task: TaskData, tracker) -> TrialRecord:
    """Run the tuner inside the active search run; summary logged even when every trial failed."""
    observer = NullObserver()
    if tracker.enabled:
        if role() == "chief":
            mlflow.set_tag("oracle_address", oracle_address())  # workers attach once this is set
        observer = trial_runs(tracker, mlflow.active_run().info.run_id, setup.cfg)
    outcome = run_search(setup, observer, task.train, task.val)
    if tracker.enabled:
        log_search_summary(outcome, setup.cfg.objective)
    try:
        best = require_best(outcome, setup.cfg)
    except SearchError:
        if tracker.enabled:
            mlflow.set_tag("search_state", "failed")
        raise
    if tracker.enabled:
        mlflow.set_tag("search_state", "done")
    return best


def trial_runs(tracker, search_run_id: str, cfg: SearchConfig) -> TrialRuns:
    """An MLflow run per trial under the search run."""
    sync = not tracker.cfg.async_logging
    runs = TrialRuns(tracker.client, tracker.experiment_id, search_run_id, cfg.objective, sync)
    runs.executions = cfg.executions_per_trial
    return runs


def oracle_address() -> str:
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"


def run_worker(cfg: Config, task: TaskData, config_hash: str) -> float:
    """A distributed worker: trials under the chief's search run, from the chief's checkpoint."""
    if not cfg.tracking.enabled:
        raise ConfigError(
            "tracking.enabled=false with KERASTUNER_ORACLE_IP set: distributed workers find the "
            "chief's search run and checkpoint in MLflow; enable tracking (a shared store)"
        )
    tracker = Tracker(cfg.tracking)
    chief = wait_for_chief(
        tracker.client,
        tracker.experiment_id,
        config_hash,
        oracle_address(),
        cfg.search.worker_wait_s,
    )
    directory = Path(cfg.search.directory) if cfg.search.directory else default_directory()
    directory.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(
        run_id=chief.info.run_id, artifact_path=CHECKPOINT, dst_path=str(directory)
    )
    setup = make_setup(cfg, task, directory)
    observer = trial_runs(tracker, chief.info.run_id, cfg.search)
    log.info("worker %s: trials of search run %s", tuner_id(), chief.info.run_id)
    run_search(setup, observer, task.train, task.val)
    return math.nan  # the chief reports the search's objective


def fine_tune_chosen(ctx: StageContext, extracted: StageResult, choice: SearchChoice):
    """The final fine-tune: from the checkpoint the trials started from, with the best pair."""
    extracted.model.load_weights(choice.checkpoint)
    values = choice.values
    result = fine_tune(ctx, extracted, values["unfreeze_blocks"], values["learning_rate"])
    result.params.update({"search_run_id": choice.run_id, "search_trial_id": choice.best.trial_id})
    return result
