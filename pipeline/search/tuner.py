"""Keras Tuner searches the fine-tuning stage: how many blocks to unfreeze, at what learning rate.

Reads the `search` config group. Every trial starts from the feature-extraction checkpoint (backbone
and trained head, saved once, never retrained per trial), applies its `unfreeze_blocks` and
`learning_rate`, recompiles and fine-tunes on the training split; it is scored on the validation
split only. Below a trial's freeze boundary everything is frozen, in inference mode and sees no
augmentation, so its output is the same every epoch: it is computed once per depth (the boundary
cache, pipeline/boundary.py) and only the unfrozen top is trained on it.

Roles as in keras-tuner: the HyperModel builds and fits, the Tuner drives, observers watch. Tracking
comes in as a `TrialObserver`; this module never imports mlflow. Distributed mode is keras-tuner's
own (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT; see roles.py): the chief
runs the oracle, workers run trials.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_tuner
from hydra.utils import instantiate
from keras_tuner.engine.trial import TrialStatus

from pipeline.boundary import FrozenFeatures
from pipeline.config import SearchConfig
from pipeline.data import Split, batches, eval_batches
from pipeline.errors import SearchError
from pipeline.interrupts import raise_if_interrupted
from pipeline.model import (
    StopWhenInterrupted,
    backbone_of,
    build_for_training,
    compile_classifier,
    unfreeze_top,
)
from pipeline.search.callbacks import BestWeights, FailOnNaN, best_of
from pipeline.search.roles import role
from pipeline.search.tuner_internals import DeclaredSpaceTuner, checkpoint_path
from pipeline.tracking.trial_records import (
    CHECKPOINT,
    HYPERPARAMETERS,
    SearchOutcome,
    TrialObserver,
    TrialRecord,
)

log = logging.getLogger(__name__)


@dataclass
class SearchSetup:
    """What a search needs besides the data: the config and where the starting point lives."""

    cfg: SearchConfig
    directory: Path  # tuner state (keras-tuner's project) and the feature-extraction checkpoint
    build_classifier: Callable[[], keras.Model]  # backbone + head architecture, any weights
    block_count: int
    batch_size: int
    seed: int
    frozen: FrozenFeatures  # the boundary cache (shared with the stages when in one process)

    @property
    def checkpoint(self) -> Path:
        return self.directory / CHECKPOINT


class TransferHyperModel(keras_tuner.HyperModel):
    """Builds the feature-extraction model with a trial's depth and rate; fits its unfrozen top."""

    def __init__(self, setup: SearchSetup):
        super().__init__(name="fine_tune")
        self.setup = setup

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        blocks, rate = self.setup.cfg.unfreeze_blocks, self.setup.cfg.learning_rate
        top = self.setup.block_count if blocks.max is None else blocks.max
        hp.Int("unfreeze_blocks", blocks.min, top)
        hp.Float("learning_rate", rate.min, rate.max, step=rate.step, sampling=str(rate.sampling))

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        model = self.setup.build_classifier()
        model.load_weights(self.setup.checkpoint)
        unfreeze_top(backbone_of(model), hp.get("unfreeze_blocks"))
        compile_classifier(model, hp.get("learning_rate"))  # `trainable` changes need a compile
        return model

    def fit(self, hp, model, train: Split, val: Split, *, callbacks, epochs, initial_epoch=0):
        part, (train_part, val_part) = self.setup.frozen.above(model, (train, val))
        if part is not model:
            compile_classifier(part, hp.get("learning_rate"))
        train_batches = batches(train_part, self.setup.batch_size, shuffle_seed=self.setup.seed)
        build_for_training(part, train_batches)
        return part.fit(
            train_batches,
            validation_data=eval_batches(val_part),
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=0,
        )


def release_memory() -> None:
    """Drop the previous trial's models and graphs, so memory stays flat over many trials."""
    keras.backend.clear_session()
    gc.collect()


class TransferTuner(DeclaredSpaceTuner):
    """Runs trials from the checkpoint (Hyperband: from the parent trial's) and reports them."""

    def __init__(self, oracle, hypermodel: TransferHyperModel, observer: TrialObserver, **kwargs):
        super().__init__(oracle, hypermodel, **kwargs)
        self.observer = observer
        self.scores: dict[str, float] = {}

    def run_trial(self, trial, train: Split, val: Split):
        try:
            return self.run_executions(trial, train, val)
        except Exception as error:
            # An interrupt raised inside an extension can come out as another error (a
            # SystemError from a C function): the trial was interrupted, not failed.
            raise_if_interrupted(cause=error)
            raise

    def run_executions(self, trial, train: Split, val: Split):
        hp = trial.hyperparameters
        epochs = hp.values.get("tuner/epochs", self.hypermodel.setup.cfg.epochs)
        keeper = BestWeights(self.oracle.objective)
        histories = []
        for execution in range(self.executions_per_trial):
            release_memory()
            raise_if_interrupted()  # one swallowed while the last trial's session was cleared
            keras.utils.set_random_seed(self.hypermodel.setup.seed + execution)
            model = self.hypermodel.build(hp)
            keeper.whole = model
            observers = self.observer.callbacks(trial.trial_id, execution)
            callbacks = [StopWhenInterrupted(), keeper, *observers, FailOnNaN()]
            initial = self.continue_parent(hp, model)
            histories.append(
                self.hypermodel.fit(
                    hp, model, train, val, callbacks=callbacks, epochs=epochs, initial_epoch=initial
                )
            )
        keeper.save(checkpoint_path(self, trial.trial_id))
        scores = [best_of(h, self.oracle.objective) for h in histories]
        self.scores[trial.trial_id] = sum(scores) / len(scores)
        return histories

    def continue_parent(self, hp, model: keras.Model) -> int:
        """Hyperband continues a trial from its parent's best weights; the initial epoch."""
        parent = hp.values.get("tuner/trial_id")
        if parent is None:
            return 0
        path = checkpoint_path(self, parent)
        if not os.path.exists(path):  # another worker's, on a disk we cannot see
            log.warning("trial %s checkpoint not found: restarting from feature extraction", parent)
            return 0
        model.load_weights(path)
        return hp.values.get("tuner/initial_epoch", 0)

    def on_trial_begin(self, trial) -> None:
        raise_if_interrupted()  # no new trial run after an interrupt the last trial swallowed
        super().on_trial_begin(trial)
        values = dict(trial.hyperparameters.values)
        log.info("trial %s (%s) %s", trial.trial_id, self.tuner_id, values)
        self.observer.trial_started(trial.trial_id, values)

    def on_trial_end(self, trial) -> None:
        try:
            super().on_trial_end(trial)  # the oracle scores it; may stop after repeated failures
        finally:
            record = record_of(trial, self.scores.get(trial.trial_id))
            log.info("trial %s %s %s", record.trial_id, record.status, record.error or record.score)
            self.observer.trial_ended(record)


def record_of(trial, score: float | None = None) -> TrialRecord:
    completed = trial.status == TrialStatus.COMPLETED
    score = trial.score if trial.score is not None else score
    return TrialRecord(
        trial_id=trial.trial_id,
        status=trial.status,
        values=dict(trial.hyperparameters.values),
        score=float(score) if completed and score is not None else None,
        best_step=trial.best_step if completed else None,
        message=trial.message,
    )


class CappedHyperbandOracle(keras_tuner.oracles.HyperbandOracle):
    """keras-tuner's Hyperband with `max_trials` as a cap on the whole budget (None: every
    bracket), so that every search option takes the same `search.max_trials`."""

    def __init__(self, max_trials: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_trials = max_trials


def make_oracle(cfg: SearchConfig, seed: int) -> keras_tuner.Oracle:
    """The oracle that `search.oracle` names (`_target_`), with the arguments every one takes."""
    direction = "min" if cfg.objective == "val_loss" else "max"
    return instantiate(
        cfg.oracle,
        objective=keras_tuner.Objective(str(cfg.objective), direction),
        seed=seed + 1,  # keras-tuner takes seed 0 for "no seed"
        max_retries_per_trial=cfg.max_retries_per_trial,
        max_consecutive_failed_trials=cfg.max_consecutive_failed_trials,
    )


def make_tuner(setup: SearchSetup, observer: TrialObserver) -> TransferTuner:
    """A tuner whose state lives in `setup.directory`: reloaded there when it exists (resume)."""
    tuner = TransferTuner(
        make_oracle(setup.cfg, setup.seed),
        TransferHyperModel(setup),
        observer,
        executions_per_trial=setup.cfg.executions_per_trial,
        directory=str(setup.directory),
        project_name="tuner",
        overwrite=False,
    )
    tuner.oracle.verbose = 0  # progress goes to the log, one line a trial
    return tuner


def run_search(
    setup: SearchSetup, observer: TrialObserver, train: Split, val: Split
) -> SearchOutcome | None:
    """Search (or, as a distributed worker, run trials until the chief stops); the best trial.

    Raises SearchError when no trial succeeded, naming the error of the last failed trial.
    """
    tuner = make_tuner(setup, observer)
    done = len(getattr(tuner.oracle, "end_order", []))
    if done:
        log.info("resuming the search in %s: %d trial(s) already ended", setup.directory, done)
    try:
        tuner.search(train, val)
    except BaseException as error:
        observer.interrupted(error)
        if isinstance(error, RuntimeError) and "consecutive failures" in str(error):
            raise SearchError(
                f"search stopped: {setup.cfg.max_consecutive_failed_trials} consecutive trials "
                f"failed (search.max_consecutive_failed_trials); last: {last_line(str(error))}"
            ) from None
        raise
    if role() == "worker":
        return None
    return outcome_of(tuner, setup)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def outcome_of(tuner: TransferTuner, setup: SearchSetup) -> SearchOutcome:
    """Every trial the oracle knows, and the best completed one (None when none completed)."""
    trials = [record_of(t, tuner.scores.get(t.trial_id)) for t in tuner.oracle.trials.values()]
    trials.sort(key=lambda record: record.trial_id)
    completed = {t.trial_id: t for t in trials if t.status == TrialStatus.COMPLETED}
    best = [t for t in tuner.oracle.get_best_trials(1) if t.trial_id in completed]
    return SearchOutcome(
        best=completed[best[0].trial_id] if best else None, trials=trials, directory=setup.directory
    )


def require_best(outcome: SearchOutcome, cfg: SearchConfig) -> TrialRecord:
    """The best trial; a search where no trial succeeded is an error, never a silent None."""
    if outcome.best is None or outcome.best.score is None:
        failed = [t for t in outcome.trials if t.error]
        reason = f"trial {failed[-1].trial_id}: {failed[-1].error}" if failed else "no trial ran"
        raise SearchError(
            f"search.tuner={cfg.tuner}: none of the {len(outcome.trials)} trial(s) succeeded; "
            f"{reason}"
        )
    best = outcome.best
    chosen = {name: best.values[name] for name in HYPERPARAMETERS}
    log.info("best trial %s: %s=%.4f %s", best.trial_id, cfg.objective, best.score, chosen)
    return best
