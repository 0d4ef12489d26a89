"""Checks of a composed config that its schema cannot express, run before anything is trained.

Every message names the offending key and value and what is allowed. The tracking keys are
checked by tracking/validation.py, a sweep's launcher by sweeps/launchers.py.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.catalog import APPLICATIONS, BACKBONES, block_count, min_image_size
from pipeline.config import STAGES, Config, Sampling
from pipeline.data.embedded import EMBEDDED_LOADERS
from pipeline.errors import require
from pipeline.tracking.validation import check_tracking


def check_stages(stages: list[str]) -> None:
    require(len(stages) > 0, f"stages={stages} is empty; allowed: a list from {list(STAGES)}")
    require(len(set(stages)) == len(stages), f"stages={stages} names a stage twice")
    require(
        stages == sorted(stages, key=STAGES.index),
        f"stages={stages} is out of order; they run as {list(STAGES)}",
    )
    require(
        "fine_tune" not in stages or "feature_extraction" in stages,
        f"stages={stages}: fine_tune continues from feature_extraction, which must run too",
    )


SEED_MAX = 2**32 - 1  # what keras.utils.set_random_seed (numpy) accepts


def check_training(cfg: Config) -> None:
    require(0 <= cfg.seed <= SEED_MAX, f"seed={cfg.seed} must be in 0..{SEED_MAX}")
    for stage in cfg.stages:
        rate = getattr(cfg.lr, stage)
        require(rate > 0, f"lr.{stage}={rate} must be > 0")
        epochs = getattr(cfg.train.epochs, stage)
        require(epochs >= 1, f"train.epochs.{stage}={epochs} must be >= 1")
    require(cfg.train.patience >= 0, f"train.patience={cfg.train.patience} must be >= 0")
    limit = cfg.train.cache_max_gb
    require(limit > 0, f"train.cache_max_gb={limit} must be > 0 (no cache: cache_boundary=false)")


def check_source(data) -> None:
    """The keys the chosen dataset source needs."""
    if data.source == "embedded":
        require(
            data.loader in EMBEDDED_LOADERS,
            f"dataset.loader={data.loader!r}; allowed: {sorted(EMBEDDED_LOADERS)}",
        )
    elif data.source == "tfds":
        require(bool(data.tfds_name), "dataset.tfds_name is empty; allowed: a TFDS dataset name")
    else:
        require(bool(data.path), "dataset.path is empty; allowed: a folder of class subfolders")


def check_labels_and_augment(data) -> None:
    require(
        not (data.classes and data.groups),
        "dataset.classes and dataset.groups are both set; allowed: one of them (keep or merge)",
    )
    for key in ("classes", "groups"):
        value = getattr(data, key)
        require(value is None or len(value) >= 2, f"dataset.{key}={value} needs >= 2 classes")
    augment = data.augment
    for key in ("rotation", "zoom"):
        value = getattr(augment, key)
        require(0 <= value < 1, f"dataset.augment.{key}={value} must be in [0, 1)")


def check_dataset(cfg: Config) -> None:
    data = cfg.dataset
    check_source(data)
    check_labels_and_augment(data)
    for key in ("val_size", "test_size", "batch_size", "image_size"):
        value = getattr(data, key)
        require(value >= 1, f"dataset.{key}={value} must be >= 1")
    require(data.channels in (1, 3), f"dataset.channels={data.channels}; allowed: 1 or 3")
    for key in ("val_fraction", "test_fraction"):
        value = getattr(data, key)
        require(0 < value < 1, f"dataset.{key}={value} must be in (0, 1)")
    per_class = data.train_per_class
    require(
        per_class is None or per_class >= 1,
        f"dataset.train_per_class={per_class} must be >= 1 (or null for all)",
    )
    smallest = min_image_size(cfg.backbone.name)
    require(
        data.image_size >= smallest,
        f"dataset.image_size={data.image_size} is below {cfg.backbone.name}'s minimum input "
        f"size {smallest}; allowed: >= {smallest}",
    )


# What Keras' load_weights reads: HDF5 (.h5, .weights.h5) or a .keras archive (a zip).
WEIGHTS_SIGNATURES = (b"\x89HDF\r\n\x1a\n", b"PK\x03\x04")


def weights_file(weights: str) -> bool:
    path = Path(weights).expanduser()
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        head = handle.read(8)
    return head.startswith(WEIGHTS_SIGNATURES)


def check_application(backbone) -> None:
    """keras.applications: imagenet, an existing local weights file, or null."""
    weights = backbone.weights
    require(
        weights in ("imagenet", None) or weights_file(weights),
        f"backbone.weights={weights!r} is not an HDF5 or .keras weights file; allowed for "
        f"{backbone.name}: 'imagenet', a local weights file (.h5), or null",
    )
    require(backbone.alpha > 0, f"backbone.alpha={backbone.alpha} must be > 0")


def check_in_house(backbone) -> None:
    require(
        backbone.weights in ("source", None),
        f"backbone.weights={backbone.weights!r}; allowed for {backbone.name}: 'source' or null",
    )
    require(len(backbone.widths) >= 1, f"backbone.widths={backbone.widths} needs one width a block")
    source = backbone.source
    sources = [*sorted(EMBEDDED_LOADERS), "tfds"]
    require(
        source.dataset in sources,
        f"backbone.source.dataset={source.dataset!r}; allowed: {sources}",
    )
    require(
        source.dataset != "tfds" or bool(source.tfds_name),
        "backbone.source.tfds_name is empty but backbone.source.dataset='tfds'",
    )
    require(source.epochs >= 1, f"backbone.source.epochs={source.epochs} must be >= 1")
    require(
        0 <= source.seed <= SEED_MAX,
        f"backbone.source.seed={source.seed} must be in 0..{SEED_MAX}",
    )
    require(source.batch_size >= 1, f"backbone.source.batch_size={source.batch_size} must be >= 1")
    require(
        source.max_examples is None or source.max_examples >= 1,
        f"backbone.source.max_examples={source.max_examples} must be >= 1 or null (all)",
    )
    require(
        source.learning_rate > 0,
        f"backbone.source.learning_rate={source.learning_rate} must be > 0",
    )
    require(
        0 < source.val_fraction < 1,
        f"backbone.source.val_fraction={source.val_fraction} must be in (0, 1)",
    )


def check_backbone(cfg: Config) -> None:
    backbone = cfg.backbone
    require(
        backbone.name in BACKBONES, f"backbone.name={backbone.name!r}; allowed: {list(BACKBONES)}"
    )
    require(
        0 <= backbone.head_dropout < 1,
        f"backbone.head_dropout={backbone.head_dropout} must be in [0, 1)",
    )
    if backbone.name in APPLICATIONS:
        check_application(backbone)
    else:
        check_in_house(backbone)


def check_freeze(cfg: Config) -> None:
    blocks = block_count(cfg.backbone)
    depth = cfg.freeze.unfreeze_blocks
    require(
        depth is None or 0 <= depth <= blocks,
        f"freeze.unfreeze_blocks={depth} but {cfg.backbone.name} has {blocks} blocks "
        f"(allowed: 0..{blocks}, or null for all)",
    )
    layers = cfg.freeze.unfreeze_layers
    require(layers is None or layers >= 1, f"freeze.unfreeze_layers={layers} must be >= 1")


def check_search_space(cfg: Config) -> None:
    space, blocks = cfg.search.unfreeze_blocks, block_count(cfg.backbone)
    top = blocks if space.max is None else space.max
    require(
        0 <= space.min <= top <= blocks,
        f"search.unfreeze_blocks.min={space.min}, max={space.max} but {cfg.backbone.name} has "
        f"{blocks} blocks (allowed: 0 <= min <= max <= {blocks}, max null for all)",
    )
    rate = cfg.search.learning_rate
    require(
        0 < rate.min <= rate.max,
        f"search.learning_rate.min={rate.min}, max={rate.max}: need 0 < min <= max",
    )
    require(
        cfg.search.tuner != "grid" or rate.step is not None,
        "search.learning_rate.step=null but search.tuner='grid' needs a step "
        "(with log sampling a factor, e.g. 10)",
    )
    log_sampling = Sampling(rate.sampling) != Sampling.linear  # the step is then a factor
    require(
        rate.step is None or (rate.step > 1 if log_sampling else rate.step > 0),
        f"search.learning_rate.step={rate.step} with sampling={Sampling(rate.sampling).value}: "
        + ("a factor > 1 (e.g. 10)" if log_sampling else "a step > 0"),
    )


def check_oracle(search) -> None:
    """The oracle that `search.oracle._target_` names is the tuner that `search.tuner` names."""
    target = str((search.oracle or {}).get("_target_", ""))
    oracle = target.rsplit(".", 1)[-1].lower().removeprefix("capped")
    require(
        oracle.startswith(str(search.tuner)),
        f"search.tuner='{search.tuner}' but search.oracle._target_={target or None}; choose the "
        f"tuner with its option: search={search.tuner}",
    )


def check_search(cfg: Config) -> None:
    search = cfg.search
    if search.tuner == "none":
        return
    check_oracle(search)
    require(
        {"feature_extraction", "fine_tune"} <= set(cfg.stages),
        f"search.tuner='{search.tuner}' tunes fine_tune from feature_extraction, but "
        f"stages={cfg.stages} lacks one of them",
    )
    require(
        cfg.freeze.unfreeze_layers is None,
        f"freeze.unfreeze_layers={cfg.freeze.unfreeze_layers} with search.tuner='{search.tuner}':"
        " the search chooses unfreeze_blocks; set freeze.unfreeze_layers=null",
    )
    require(
        search.max_trials is not None or search.tuner in ("grid", "hyperband"),
        f"search.max_trials=null with search.tuner='{search.tuner}'; allowed: a number >= 1 "
        "(null only for grid and hyperband)",
    )
    for key in ("max_trials", "epochs", "executions_per_trial", "max_consecutive_failed_trials"):
        value = getattr(search, key)
        require(value is None or value >= 1, f"search.{key}={value} must be >= 1")
    require(
        search.hyperband.factor >= 2,
        f"search.hyperband.factor={search.hyperband.factor} must be >= 2",
    )
    require(
        search.hyperband.iterations >= 1,
        f"search.hyperband.iterations={search.hyperband.iterations} must be >= 1 "
        "(0 would never end)",
    )
    check_search_space(cfg)


def check_config(cfg: Config) -> None:
    """Raise ConfigError on the first impossible value; pass silently otherwise."""
    check_stages(cfg.stages)
    check_training(cfg)
    check_dataset(cfg)
    check_backbone(cfg)
    check_freeze(cfg)
    check_search(cfg)
    check_tracking(cfg)
