"""The search stage, between feature extraction and the final fine-tune: wiring, not algorithms.

Locally or as the distributed chief: save the feature-extraction checkpoint, run the search in a
`search` run (a fresh one, or the unfinished one of the same config, resumed) and return the best
trial. As a distributed worker: attach to the chief's search run, fetch its checkpoint and run
trials until the chief's oracle says stop. Keras Tuner lives in tuner.py, MLflow in
pipeline/tracking/ (through the Tracker Protocol only).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
from hydra.core.hydra_config import HydraConfig

from pipeline.backbones import build_backbone
from pipeline.boundary import FrozenFeatures
from pipeline.catalog import block_count
from pipeline.config import Config, SearchConfig
from pipeline.data import TaskData
from pipeline.model import build_head, save_weights_atomically, stack
from pipeline.search.roles import role, tuner_id
from pipeline.search.tuner import SearchSetup, require_best, run_search
from pipeline.stages import StageContext, StageResult, fine_tune
from pipeline.tracking import Tracker
from pipeline.tracking.params import flatten
from pipeline.tracking.trial_records import CHECKPOINT, HYPERPARAMETERS, TrialRecord

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


def make_setup(
    cfg: Config, task: TaskData, directory: Path, frozen: FrozenFeatures | None = None
) -> SearchSetup:
    """What the tuner needs; `frozen`: the stages' boundary cache (a worker makes its own)."""
    if frozen is None:
        frozen = FrozenFeatures.configured(cfg)
    return SearchSetup(
        cfg=cfg.search,
        directory=directory,
        build_classifier=classifier_factory(cfg, task),
        block_count=block_count(cfg.backbone),
        batch_size=cfg.dataset.batch_size,
        seed=cfg.seed,
        frozen=frozen,
    )


UNSET_PARAMS = ("directory", "worker_wait_s", "oracle")  # where and how, not the search's identity


def search_params(cfg: SearchConfig, block_count: int) -> dict[str, object]:
    """Tuner, space and budget as flat params (`unfreeze_blocks.max` resolved to a number)."""
    plain = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNSET_PARAMS}
    if plain["unfreeze_blocks"]["max"] is None:
        plain["unfreeze_blocks"]["max"] = block_count
    return {k: str(v) for k, v in flatten(plain).items()}


def start_fresh(setup: SearchSetup, extracted: StageResult, tracker: Tracker) -> None:
    """Checkpoint the feature-extraction model where every trial (and worker) finds it."""
    setup.directory.mkdir(parents=True, exist_ok=True)
    save_weights_atomically(extracted.model, setup.checkpoint)
    tracker.log_params(search_params(setup.cfg, setup.block_count))
    tracker.set_tags({"search_dir": str(setup.directory.resolve()), "tuner": str(setup.cfg.tuner)})
    tracker.log_artifact(setup.checkpoint)


def search_stage(
    ctx: StageContext, extracted: StageResult, tracker: Tracker, config_hash: str
) -> SearchChoice:
    """Search (or resume the search of) the fine-tuning depth and rate; the best trial."""
    cfg = ctx.cfg
    previous = tracker.resumable_search(config_hash) if role() != "worker" else None
    with tracker.search_run(config_hash, previous) as run_id:
        if previous is not None:
            directory = Path(previous.tags["search_dir"])
            log.info("resuming search run %s from %s", run_id, directory)
        else:
            directory = Path(cfg.search.directory) if cfg.search.directory else default_directory()
        setup = make_setup(cfg, ctx.task, directory, ctx.frozen)
        if previous is None:
            start_fresh(setup, extracted, tracker)
        best = search_in_run(setup, ctx.task, tracker, run_id)
    return SearchChoice(best, setup.checkpoint, run_id)


def search_in_run(setup: SearchSetup, task: TaskData, tracker: Tracker, run_id: str) -> TrialRecord:
    """Run the tuner inside the open search run; summary logged even when every trial failed."""
    if role() == "chief":
        tracker.set_tags({"oracle_address": oracle_address()})  # workers attach once this is set
    observer = tracker.trial_observer(run_id, setup.cfg)
    outcome = run_search(setup, observer, task.train, task.val)
    tracker.log_search_outcome(outcome, str(setup.cfg.objective))
    try:
        best = require_best(outcome, setup.cfg)
    except Exception:
        tracker.set_tags({"search_state": "failed"})
        raise
    tracker.set_tags({"search_state": "done"})
    return best


def oracle_address() -> str:
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"


def run_worker(cfg: Config, task: TaskData, config_hash: str, tracker: Tracker) -> float:
    """A distributed worker: trials under the chief's search run, from the chief's checkpoint."""
    chief = tracker.chief_search(config_hash, oracle_address(), cfg.search.worker_wait_s)
    directory = Path(cfg.search.directory) if cfg.search.directory else default_directory()
    tracker.fetch_artifact(chief.run_id, CHECKPOINT, directory)
    setup = make_setup(cfg, task, directory)
    observer = tracker.trial_observer(chief.run_id, cfg.search)
    log.info("worker %s: trials of search run %s", tuner_id(), chief.run_id)
    run_search(setup, observer, task.train, task.val)
    return math.nan  # the chief reports the search's objective


def fine_tune_chosen(ctx: StageContext, extracted: StageResult, choice: SearchChoice):
    """The final fine-tune: from the checkpoint the trials started from, with the best pair."""
    extracted.model.load_weights(choice.checkpoint)
    values = choice.values
    result = fine_tune(ctx, extracted, values["unfreeze_blocks"], values["learning_rate"])
    result.params.update({"search_run_id": choice.run_id, "search_trial_id": choice.best.trial_id})
    return result
