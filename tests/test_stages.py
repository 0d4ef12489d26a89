"""The transfer recipe on real (tiny) training: what must move moves, what must not does not."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.backbones import block_map
from pipeline.data import load_task
from pipeline.model import backbone_of, save_weights_atomically
from pipeline.pretrain import LocalWeightsStore, pretrained_backbone
from pipeline.stages import StageContext, feature_extraction, fine_tune, scratch
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> Path:
    """Pretrained backbones, one a recipe, kept for the module: the first test pretrains."""
    return tmp_path_factory.mktemp("backbones")


def make_context(backbones: Path, *overrides: str) -> tuple[StageContext, keras.Model]:
    cfg = compose_config(["debug=smoke", "tracking=off", *overrides])
    config = OmegaConf.to_object(cfg)
    task = load_task(config.dataset, config.seed)
    store = LocalWeightsStore(backbones)
    backbone = pretrained_backbone(config.backbone, task.input_shape, store, False)
    return StageContext(config, task), backbone.model


def snapshot(layers) -> dict[str, list[np.ndarray]]:
    """Every weight (BatchNorm moving statistics too), copied, by variable path."""
    return {w.path: np.array(w) for layer in layers for w in layer.weights}


def moved(before: dict, after: dict) -> set[str]:
    return {name for name in before if not np.array_equal(before[name], after[name])}


@pytest.mark.parametrize("fast", [True, False], ids=["cached-features", "full-forward"])
def test_feature_extraction_leaves_every_backbone_weight_bit_identical(backbones, fast):
    ctx, backbone = make_context(
        backbones, f"train.cache_boundary={fast}", "train.epochs.feature_extraction=3"
    )
    before = snapshot(backbone.layers)
    result = feature_extraction(ctx, backbone)
    assert moved(before, snapshot(backbone.layers)) == set()
    head_kernel = result.head.get_layer("head_classifier").kernel
    assert result.fit.epochs >= 1 and np.abs(np.array(head_kernel)).sum() > 0
    assert 0.0 <= result.test_accuracy <= 1.0


def test_cached_features_train_the_same_head_as_full_forward_passes(backbones):
    results = {}
    for fast in (True, False):
        ctx, backbone = make_context(backbones, f"train.cache_boundary={fast}")
        results[fast] = feature_extraction(ctx, backbone)
    assert results[True].fit.epochs == results[False].fit.epochs
    np.testing.assert_allclose(
        results[True].fit.history["loss"], results[False].fit.history["loss"], rtol=1e-4
    )


def fine_tuned(backbones, *overrides: str):
    """(fine-tune result, its context, every classifier weight after it)."""
    ctx, backbone = make_context(
        backbones,
        "train.epochs.fine_tune=4",
        "lr.fine_tune=0.01",
        "train.fine_tune_must_improve=false",  # every epoch's weights, whatever they score
        *overrides,
    )
    result = fine_tune(ctx, feature_extraction(ctx, backbone))
    return result, ctx, snapshot(result.model.layers)


@pytest.mark.slow
@pytest.mark.parametrize("unfreeze_blocks", [1, 2])
def test_fine_tuning_on_cached_boundary_activations_matches_the_full_model(
    backbones, unfreeze_blocks
):
    depth = f"freeze.unfreeze_blocks={unfreeze_blocks}"
    cached, ctx, cached_weights = fine_tuned(backbones, depth, "train.cache_boundary=true")
    full, full_ctx, full_weights = fine_tuned(backbones, depth, "train.cache_boundary=false")
    boundaries = {position for position, _ in ctx.frozen.cache}
    assert len(boundaries) == 2, "the head's and the fine-tune's activations were cached"
    assert full_ctx.frozen.cache == {}
    assert cached.fit.epochs == full.fit.epochs >= 2
    for name, values in full.fit.history.items():
        np.testing.assert_allclose(cached.fit.history[name], values, rtol=1e-4, err_msg=name)
    assert cached_weights.keys() == full_weights.keys()
    for name, weight in full_weights.items():
        np.testing.assert_allclose(cached_weights[name], weight, rtol=1e-4, atol=1e-6, err_msg=name)
    assert cached.test_accuracy == pytest.approx(full.test_accuracy, abs=1e-6)


def test_activations_over_the_cache_limit_run_the_full_model_with_one_line(backbones, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.boundary"):
        result, ctx, _ = fine_tuned(backbones, "train.cache_max_gb=1e-6")
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.boundary"]
    assert len(warnings) == 2  # feature extraction's and fine-tuning's activations
    assert "block3_conv" in warnings[-1] and "train.cache_max_gb=1e-06" in warnings[-1]
    assert ctx.frozen.cache == {}
    assert result.fit.epochs == 4 and 0.0 <= result.test_accuracy <= 1.0


def test_fine_tuning_that_never_beats_feature_extraction_keeps_its_weights(backbones):
    # a rate so low that no epoch can change a validation prediction, so none beats the start
    ctx, backbone = make_context(backbones, "train.epochs.fine_tune=3", "lr.fine_tune=1e-12")
    extracted = feature_extraction(ctx, backbone)
    before = snapshot(extracted.model.layers)
    result = fine_tune(ctx, extracted)
    assert result.fit.epochs >= 1 and result.fit.best_epoch == -1
    assert moved(before, snapshot(result.model.layers)) == set(), "bit for bit the start"
    assert result.best_val_accuracy == extracted.best_val_accuracy
    assert result.test_accuracy == pytest.approx(extracted.test_accuracy, abs=1e-6)


@pytest.mark.parametrize("unfreeze_blocks", [1, 2])
def test_fine_tune_moves_only_the_unfrozen_blocks_and_the_head(backbones, unfreeze_blocks):
    ctx, backbone = make_context(
        backbones,
        f"freeze.unfreeze_blocks={unfreeze_blocks}",
        "lr.fine_tune=0.01",
        "train.fine_tune_must_improve=false",
    )
    extracted = feature_extraction(ctx, backbone)
    blocks = block_map(backbone)
    frozen_layers = [layer for block in blocks[:-unfreeze_blocks] for layer in block]
    open_layers = [layer for block in blocks[-unfreeze_blocks:] for layer in block]
    bn_layers = [layer for layer in backbone.layers if "bn" in layer.name]
    frozen_before, open_before = snapshot(frozen_layers), snapshot(open_layers)
    bn_before, head_before = snapshot(bn_layers), snapshot(extracted.head.layers)

    result = fine_tune(ctx, extracted)

    assert moved(frozen_before, snapshot(frozen_layers)) == set()
    assert moved(bn_before, snapshot(bn_layers)) == set(), "BatchNorm must stay frozen"
    open_moved = moved(open_before, snapshot(open_layers))
    expected = {name for name in open_before if "_conv" in name}
    assert open_moved == expected
    assert moved(head_before, snapshot(extracted.head.layers)) == set(head_before)
    assert result.params["unfreeze_blocks"] == unfreeze_blocks
    assert result.params["unfrozen"] == ",".join(f"block{i}" for i in range(4 - unfreeze_blocks, 4))


def test_fine_tune_counts_trainable_parameters_of_the_open_blocks_only(backbones):
    ctx, backbone = make_context(backbones)
    extracted = feature_extraction(ctx, backbone)
    result = fine_tune(ctx, extracted)
    conv3 = backbone.get_layer("block3_conv").kernel
    head = extracted.head.get_layer("head_classifier")
    expected = int(np.prod(conv3.shape) + np.prod(head.kernel.shape) + np.prod(head.bias.shape))
    assert result.params["trainable_params"] == expected
    assert extracted.params["trainable_params"] == expected - int(np.prod(conv3.shape))


def test_scratch_trains_every_weight_from_random_init(backbones):
    ctx, pretrained = make_context(backbones)
    result = scratch(ctx)
    backbone = backbone_of(result.model)
    assert backbone is not pretrained
    trainable = {w.path for w in result.model.trainable_weights}
    assert {w.path for w in backbone.trainable_weights} <= trainable
    assert result.params["trainable_params"] > 0


def test_fit_traces_its_train_step_once(backbones, monkeypatch):
    """Keras creates the optimizer's and metrics' variables in the first trace unless they are
    built first, and TensorFlow then traces the train step again: seconds at every stage."""
    ctx, _ = make_context(backbones)
    traces = []
    original = keras.Model.train_step

    def traced(model, data):
        traces.append(model.name)
        return original(model, data)

    monkeypatch.setattr(keras.Model, "train_step", traced)
    result = scratch(ctx)
    assert result.fit.epochs == 2
    assert traces == [result.model.name]


def test_weights_are_saved_under_a_temporary_name_then_renamed(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = tmp_path / "checkpoint.weights.h5"
    target.write_bytes(b"an older checkpoint")
    save_weights_atomically(model, target)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.weights.h5"]
    restored = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    restored.load_weights(target)
    for saved, loaded in zip(model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, loaded)
