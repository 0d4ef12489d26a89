"""Real tiny experiments into a real SQLite MLflow store: the run tree is as promised."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import experiment
from pipeline.experiment import run_experiment
from tests.conftest import compose_config, runs_by_stage

STAGES = ("scratch", "feature_extraction", "fine_tune")
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
FINAL_METRICS = ("best_val_accuracy", "test_loss", "test_accuracy")


@pytest.fixture
def finished(smoke, client) -> dict[str, list]:
    """One complete smoke experiment; its runs grouped by stage tag."""
    objective = run_experiment(compose_config(smoke))
    assert 0.0 <= objective <= 1.0
    return runs_by_stage(client)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, MlflowClient, dict[str, list]]:
    """One smoke experiment that the read-only tests below inspect: its folder, client, runs."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    objective = run_experiment(compose_config(["debug=smoke", f"tracking.uri={uri}"]))
    assert 0.0 <= objective <= 1.0
    client = MlflowClient(uri)
    return root, client, runs_by_stage(client)


@pytest.mark.slow
def test_parent_run_carries_tags_params_metrics_and_config(shared):
    _, client, finished = shared
    (parent,) = finished["parent"]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["dataset"] == "digits" and tags["backbone"] == "small_cnn" and tags["seed"] == "0"
    assert len(tags["config_hash"]) == 12 and tags["git_commit"]
    params = parent.data.params
    assert params["freeze.unfreeze_blocks"] == "1"
    assert params["dataset.train_per_class"] == "2"
    assert params["lr.fine_tune"] == "0.0001"
    for stage in STAGES:
        assert f"{stage}_test_accuracy" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "config.yaml" in artifacts


def test_a_child_run_per_stage_with_epoch_metrics_final_metrics_and_plot(shared):
    _, client, finished = shared
    (parent,) = finished["parent"]
    for stage in STAGES:
        (run,) = finished[stage]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
        assert run.data.metrics["test_loss"] > 0.0
        assert set(FINAL_METRICS) <= set(run.data.metrics)
        epochs = int(run.data.metrics["epochs_run"])
        for name in EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        best = client.get_metric_history(run.info.run_id, "val_accuracy")
        if stage == "fine_tune" and run.data.metrics["best_epoch"] == 0:  # kept its start
            extracted = finished["feature_extraction"][0].data.metrics["best_val_accuracy"]
            assert run.data.metrics["best_val_accuracy"] == pytest.approx(extracted)
            assert max(m.value for m in best) <= extracted
        else:
            best_val = max(m.value for m in best)
            assert run.data.metrics["best_val_accuracy"] == pytest.approx(best_val)
            best_step = max(best, key=lambda m: (m.value, -m.step)).step
            assert run.data.metrics["best_epoch"] == best_step  # both counted from 1
        assert "learning_rate" in run.data.params and "trainable_params" in run.data.params
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "learning_curve.png" in artifacts
    (fine,) = finished["fine_tune"]
    assert fine.data.params["unfreeze_blocks"] == "1" and fine.data.params["unfrozen"] == "block3"


def test_artifacts_live_beside_the_store(shared):
    root, _, finished = shared
    (parent,) = finished["parent"]
    assert parent.info.artifact_uri.startswith((root / "mlruns" / "artifacts").as_uri())


@pytest.mark.slow
@pytest.mark.empty_store
def test_pretrained_backbone_is_a_run_reused_and_cited_by_later_runs(
    finished, smoke, client, tmp_path, monkeypatch
):
    backbones = client.get_experiment_by_name("transfer-lab-backbones").experiment_id
    (pretrain,) = client.search_runs([backbones])
    assert pretrain.data.tags["stage"] == "pretrain"
    assert "backbone.weights.h5" in {a.path for a in client.list_artifacts(pretrain.info.run_id)}
    (first,) = finished["parent"]
    assert first.data.tags["backbone_run_id"] == pretrain.info.run_id
    assert first.data.tags["backbone_reused"] == "false"

    scratch_space = tmp_path / "tmp"
    scratch_space.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_space))
    run_experiment(compose_config([*smoke, "seed=0"]))
    assert len(client.search_runs([backbones])) == 1, "the same recipe must not pretrain twice"
    assert list(scratch_space.iterdir()) == [], "the fetched weights are not left behind"
    parents = runs_by_stage(client)["parent"]
    second = next(r for r in parents if r.info.run_id != first.info.run_id)
    assert second.data.tags["backbone_run_id"] == pretrain.info.run_id
    assert second.data.tags["backbone_reused"] == "true"
    for stage in STAGES:
        a, b = runs_by_stage(client)[stage]
        assert a.data.metrics["test_accuracy"] == b.data.metrics["test_accuracy"]


def test_a_failing_stage_ends_its_runs_failed_with_the_error(smoke, client, monkeypatch):
    def broken_fine_tune(*args, **kwargs):
        raise RuntimeError("disk full while fine-tuning")

    monkeypatch.setattr(experiment, "fine_tune", broken_fine_tune)
    with pytest.raises(RuntimeError, match="disk full"):
        run_experiment(compose_config(smoke))
    runs = runs_by_stage(client)
    (parent,) = runs["parent"]
    (fine,) = runs["fine_tune"]
    assert parent.info.status == "FAILED" and fine.info.status == "FAILED"
    assert "disk full" in fine.data.tags["error"]
    assert runs["scratch"][0].info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for group in runs.values() for r in group)


def test_tracking_off_logs_nothing(tmp_path, store_uri, client):
    cache = tmp_path / "cache"
    overrides = ["debug=smoke", "tracking=off", f"tracking.untracked_cache={cache}"]
    run_experiment(compose_config(overrides))
    assert client.get_experiment_by_name("transfer-lab") is None
    assert list(cache.glob("*.weights.h5")), "pretrained weights are cached locally"
