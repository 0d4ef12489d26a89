"""keras.applications backbones: block maps, their own preprocessing, weights (local file, ImageNet
through Keras' cache, wrong width), validation before training, and one real tiny experiment."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.backbones import build_backbone, named_blocks
from pipeline.catalog import APPLICATIONS, block_count
from pipeline.config import BackboneConfig
from pipeline.errors import ConfigError
from pipeline.model import unfreeze_top
from pipeline.validation import check_config
from tests.conftest import SHARED_DIR, compose_config, run_cli, runs_by_stage

MODELS = SHARED_DIR / "keras" / "models"
WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{}_224_no_top.h5"
CATS_DOGS = SHARED_DIR / "images" / "cats_and_dogs_filtered"
needs_weights = pytest.mark.skipif(
    not (MODELS / WEIGHTS.format("0.35")).is_file(),
    reason=f"no MobileNetV2 ImageNet weights under {MODELS} (../shared is absent here)",
)
BLOCK_ENDS = {
    "mobilenet_v2": ("block_1", "block_16", "Conv_1"),
    "efficientnet_b0": ("block1a", "block7a", "top"),
    "resnet50": ("conv2_block1", "conv5_block2", "conv5_block3"),
    "xception": ("block1", "block13", "block14"),
    "vgg16": ("block1", "block4", "block5"),
}


def weights(alpha: str) -> str:
    return str(MODELS / WEIGHTS.format(alpha))


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_block_map_names_every_weighted_layer_bottom_to_top(name):
    cfg = BackboneConfig(name=name, weights=None)
    size = APPLICATIONS[name].min_size
    backbone = build_backbone(cfg, (size, size, 3))
    blocks = named_blocks(backbone)
    assert len(blocks) == block_count(cfg)
    first, second_last, last = BLOCK_ENDS[name]
    names = list(blocks)
    assert (names[0], *names[-2:]) == (first, second_last, last)
    in_blocks = {id(layer) for layers in blocks.values() for layer in layers}
    assert all(id(layer) in in_blocks for layer in backbone.layers if layer.weights)


def test_unfreezing_top_blocks_opens_only_them_and_keeps_batchnorm_frozen():
    backbone = build_backbone(BackboneConfig(name="mobilenet_v2", weights=None), (32, 32, 3))
    assert unfreeze_top(backbone, 2) == ["block_16", "Conv_1"]
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable == {"block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"}


@needs_weights
def test_preprocessing_and_weights_match_keras_own_model_on_greyscale_too():
    image = np.random.default_rng(0).random((2, 96, 96, 3)).astype("float32")
    cfg = BackboneConfig(name="mobilenet_v2", weights=weights("0.35"), alpha=0.35)
    ours = build_backbone(cfg, (96, 96, 3))
    reference = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, include_top=False, pooling="avg",
        weights=weights("0.35"),
    )  # fmt: skip
    expected = reference(keras.applications.mobilenet_v2.preprocess_input(image * 255.0))
    np.testing.assert_allclose(ours(image), expected, atol=1e-4)
    grey = build_backbone(cfg, (96, 96, 1))
    np.testing.assert_allclose(grey(image[..., :1]), ours(np.repeat(image[..., :1], 3, -1)), 1e-5)


@needs_weights
def test_weights_of_another_width_fail_naming_key_and_alpha():
    cfg = BackboneConfig(name="mobilenet_v2", weights=weights("0.35"), alpha=1.0)
    with pytest.raises(ConfigError, match=r"backbone.weights=.*0\.35.* does not fit mobilenet_v2 "):
        build_backbone(cfg, (96, 96, 3))


@pytest.mark.slow
@needs_weights
def test_weights_that_do_not_load_exit_2_before_any_stage_trains(tmp_path, store_uri, client):
    mismatched = [f"backbone.weights={weights('0.35')}", "backbone.alpha=1.0"]
    overrides = ["debug=smoke", "backbone=mobilenet_v2", "dataset.image_size=32", *mismatched]
    done = run_cli([*overrides, f"tracking.uri={store_uri}"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit mobilenet_v2 alpha=1.0" in errors[0]
    grouped = runs_by_stage(client)
    assert set(grouped) == {"parent"}, "no stage ran"
    assert grouped["parent"][0].info.status == "FAILED"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["freeze.unfreeze_blocks=18"], "freeze.unfreeze_blocks=18 but mobilenet_v2 has 17 blocks"),
        (["dataset.image_size=24"], "dataset.image_size=24 is below mobilenet_v2's minimum"),
        (["backbone=xception", "dataset.image_size=64"], "below xception's minimum input size 71"),
        (["backbone.weights=/no/such.h5"], "backbone.weights='/no/such.h5' is not an HDF5"),
        (["backbone.weights=source"], "backbone.weights='source' is not an HDF5"),
    ],
)
def test_impossible_compositions_fail_before_any_training(overrides, expected):
    cfg = compose_config(["dataset=cats_dogs_filtered", "backbone=mobilenet_v2", *overrides])
    with pytest.raises(ConfigError) as error:
        check_config(OmegaConf.to_object(cfg))
    assert expected in str(error.value)


def test_cats_dogs_preset_is_the_tutorials_composition():
    cfg = compose_config(["experiment=cats_dogs_mobilenet"])
    assert (cfg.backbone.name, cfg.backbone.alpha, cfg.dataset.image_size) == (
        "mobilenet_v2",
        1.0,
        160,
    )
    assert cfg.train.epochs.fine_tune >= 10  # the tutorial fine-tunes 10 epochs
    # block_15, block_16, Conv_1: as good on validation as the tutorial's 7, at half the cost
    assert cfg.freeze.unfreeze_blocks == 3
    assert cfg.lr.fine_tune < cfg.lr.feature_extraction / 10


@pytest.mark.slow
@needs_weights
@pytest.mark.skipif(not CATS_DOGS.is_dir(), reason=f"{CATS_DOGS} is absent")
def test_tiny_real_experiment_with_imagenet_weights_from_keras_cache(
    tmp_path, store_uri, client, monkeypatch
):
    """ImageNet weights as Keras finds them offline (its cache), three stages, real images."""
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / WEIGHTS.format("0.35")).symlink_to(weights("0.35"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for split, count in (("train", 8), ("validation", 5)):
        for name in ("cats", "dogs"):
            (tmp_path / "img" / split / name).mkdir(parents=True)
            for src in sorted((CATS_DOGS / split / name).iterdir())[:count]:
                shutil.copy(src, tmp_path / "img" / split / name)
    done = run_cli(
        [
            "debug=smoke", f"tracking.uri={store_uri}", "dataset=cats_dogs_filtered",
            f"dataset.path={tmp_path / 'img'}", "dataset.image_size=96",
            "dataset.test_fraction=0.4",
            "dataset.train_per_class=null", "dataset.augment.flip=horizontal",
            "backbone=mobilenet_v2", "backbone.alpha=0.35", "backbone.weights=imagenet",
            "freeze.unfreeze_blocks=2",
        ],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    stages = runs_by_stage(client)
    assert set(stages) == {"parent", "scratch", "feature_extraction", "fine_tune"}
    assert stages["fine_tune"][0].data.params["unfrozen"] == "block_16,Conv_1"
    assert stages["parent"][0].data.tags["backbone_weights"] == "imagenet"
