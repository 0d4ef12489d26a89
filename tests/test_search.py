"""Tiny real Keras Tuner searches into a real SQLite MLflow store: tuners, failures, resume."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError
from pipeline.experiment import StagesFailed, run_experiment
from pipeline.search import tuner
from pipeline.tracking.store import prepare_store
from pipeline.validation import check_config
from tests.conftest import compose_config, run_cli, runs_by_stage

TINY = ["stages=[feature_extraction,fine_tune]", "search.epochs=1"]
TUNER_OVERRIDES = {
    "random": ["search.max_trials=2"],
    "bayesian": ["search.max_trials=3", "search.bayesian.num_initial_points=2"],
    # max_epochs 2, factor 2: two trials of one epoch, then the best continued to two (capped at 3)
    "hyperband": ["search.epochs=2", "search.hyperband.factor=2", "search.max_trials=3"],
    "grid": ["search.unfreeze_blocks.max=1", "search.learning_rate.min=0.001"],
}


def searched(overrides: list[str], tmp_path: Path) -> list[str]:
    """Two or three trials of one epoch, tuner state in the test's folder."""
    return [*TINY, *overrides, f"search.directory={tmp_path / 'search'}"]


def trials_of(runs: dict[str, list]) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for run in runs.get("trial", []):
        grouped.setdefault(run.data.tags["trial_id"], []).append(run)
    return grouped


@pytest.mark.slow
@pytest.mark.parametrize("tuner", sorted(TUNER_OVERRIDES))
def test_each_tuner_runs_a_tiny_search_tracked_run_by_run(tuner, smoke, client, tmp_path):
    overrides = searched([*smoke, f"search={tuner}", *TUNER_OVERRIDES[tuner]], tmp_path)
    run_experiment(compose_config(overrides))
    runs = runs_by_stage(client)
    (parent,), (search_run,), (fine,) = runs["parent"], runs["search"], runs["fine_tune"]
    assert search_run.info.status == "FINISHED"
    assert search_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert search_run.data.params["tuner"] == tuner
    assert {"unfreeze_blocks.min", "learning_rate.max", "epochs", "max_trials"} <= set(
        search_run.data.params
    )
    artifacts = {a.path for a in client.list_artifacts(search_run.info.run_id)}
    assert {"trials.csv", "search_objective.png", "feature_extraction.weights.h5"} <= artifacts

    trials = trials_of(runs)
    expected = {"random": 2, "bayesian": 3, "hyperband": 3, "grid": 4}[tuner]
    assert len(trials) == expected and all(len(t) == 1 for t in trials.values())
    for (run,) in trials.values():
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "COMPLETED"
        assert run.data.tags["mlflow.parentRunId"] == search_run.info.run_id
        assert {"unfreeze_blocks", "learning_rate"} <= set(run.data.params)
        assert client.get_metric_history(run.info.run_id, "val_accuracy")
        assert 0.0 <= run.data.metrics["best_val_accuracy"] <= 1.0

    best_id = search_run.data.tags["best_trial_id"]
    (best,) = trials[best_id]
    assert search_run.data.metrics["best_val_accuracy"] == best.data.metrics["best_val_accuracy"]
    scores = [r.data.metrics["best_val_accuracy"] for (r,) in trials.values()]
    assert best.data.metrics["best_val_accuracy"] == max(scores)
    assert fine.data.params["search_trial_id"] == best_id
    assert fine.data.params["search_run_id"] == search_run.info.run_id
    assert fine.data.params["unfreeze_blocks"] == best.data.params["unfreeze_blocks"]
    assert float(fine.data.params["learning_rate"]) == float(best.data.params["learning_rate"])
    if tuner == "hyperband":
        continued = [r for (r,) in trials.values() if "tuner/trial_id" in r.data.params]
        assert continued, "hyperband continues its best trial from that trial's checkpoint"


def trial_histories(store_uri: str) -> dict[str, dict[str, list[float]]]:
    """Per unfreeze depth: every epoch's loss and validation metrics of that depth's trial."""
    client = MlflowClient(store_uri)
    histories = {}
    for run in runs_by_stage(client)["trial"]:
        assert run.info.status == "FINISHED", run.data.tags.get("error")
        histories[run.data.params["unfreeze_blocks"]] = {
            name: [m.value for m in sorted(client.get_metric_history(run.info.run_id, name),
                                           key=lambda m: m.step)]
            for name in ("loss", "val_loss", "val_accuracy")
        }  # fmt: skip
    return histories


@pytest.mark.slow
def test_trials_on_cached_boundary_features_match_full_passes_at_every_depth(tmp_path):
    """Training the unfrozen top on the frozen part's cached output = the full forward pass,
    trial by trial and epoch by epoch, at three depths (the whole backbone frozen, one and two
    blocks unfrozen)."""
    base = ["debug=smoke", "search=grid", "search.unfreeze_blocks.min=0"]
    base += [
        "search.unfreeze_blocks.max=2",
        "search.epochs=3",
        "stages=[feature_extraction,fine_tune]",
    ]
    base += ["search.learning_rate.min=0.01", "search.learning_rate.max=0.01"]
    histories = []
    for cache in ("true", "false"):
        uri = f"sqlite:///{tmp_path / cache / 'mlflow.db'}"
        overrides = [*base, f"train.cache_boundary={cache}", f"tracking.uri={uri}"]
        run_experiment(compose_config([*overrides, f"search.directory={tmp_path / cache / 's'}"]))
        histories.append(trial_histories(uri))
    cached, full = histories
    assert sorted(cached) == sorted(full) == ["0", "1", "2"]
    for depth, metrics in cached.items():
        for name, values in metrics.items():
            assert len(values) == 3
            assert values == pytest.approx(full[depth][name], abs=1e-4), (depth, name)


def failing_fit(original):
    def fit(self, hp, model, *args, **kwargs):
        if hp.get("unfreeze_blocks") == 1:
            raise RuntimeError("disk full in trial")
        return original(self, hp, model, *args, **kwargs)

    return fit


@pytest.mark.slow
def test_a_failing_trial_is_logged_failed_and_the_search_goes_on(
    smoke, client, tmp_path, monkeypatch
):
    monkeypatch.setattr(tuner.TransferHyperModel, "fit", failing_fit(tuner.TransferHyperModel.fit))
    overrides = [*smoke, "search=grid", "search.unfreeze_blocks.max=1"]
    overrides += ["search.learning_rate.min=0.01"]
    run_experiment(compose_config(searched(overrides, tmp_path)))
    runs = runs_by_stage(client)
    trials = [run for group in trials_of(runs).values() for run in group]
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert len(trials) == 2 and len(failed) == 1
    assert failed[0].data.params["unfreeze_blocks"] == "1"
    assert failed[0].data.tags["status"] == "FAILED"
    assert "RuntimeError: disk full in trial" in failed[0].data.tags["error"]
    assert "traceback.txt" in {a.path for a in client.list_artifacts(failed[0].info.run_id)}
    (search_run,) = runs["search"]
    assert search_run.info.status == "FINISHED"
    assert search_run.data.metrics["trials_failed"] == 1.0
    assert runs["fine_tune"][0].data.params["unfreeze_blocks"] == "0"


@pytest.mark.slow
def test_all_trials_failing_is_an_error_naming_it(smoke, client, tmp_path, monkeypatch):
    original = tuner.TransferHyperModel.fit
    monkeypatch.setattr(tuner.TransferHyperModel, "fit", failing_fit(original))
    overrides = [*smoke, "search=grid", "search.unfreeze_blocks.min=1"]
    overrides += ["search.unfreeze_blocks.max=1", "search.learning_rate.min=0.01"]
    with pytest.raises(StagesFailed, match=r"none of the 1 trial\(s\) succeeded.*disk full"):
        run_experiment(compose_config(searched(overrides, tmp_path)))
    runs = runs_by_stage(client)
    (search_run,) = runs["search"]
    assert search_run.info.status == "FAILED"
    assert search_run.data.tags["search_state"] == "failed"
    assert "fine_tune" not in runs
    assert all(r.info.status != "RUNNING" for group in runs.values() for r in group)


@pytest.mark.slow
def test_diverging_trials_fail_and_the_command_exits_non_zero(tmp_path, store_uri):
    """A NaN/inf loss fails its trial; with every trial diverged, one line names the error."""
    args = ["debug=smoke", f"tracking.uri={store_uri}", "search=random", "search.max_trials=2"]
    args += ["search.learning_rate.min=1e37", "search.learning_rate.max=3e38", *TINY]
    done = run_cli(args, tmp_path)
    assert done.returncode == 1
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "none of the 2 trial(s) succeeded" in line and "the trial diverged" in line
    runs = runs_by_stage(MlflowClient(store_uri))
    assert all(r.data.tags["status"] == "FAILED" for r in runs["trial"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.tuner=grid"], "search.tuner='grid' but search.oracle._target_=keras_tuner"),
        (["search=hyperband", "search.hyperband.iterations=0"], "iterations=0 must be >= 1"),
        (["search.unfreeze_blocks.max=9"], "search.unfreeze_blocks.min=0, max=9 but small_cnn"),
        (["search.learning_rate.min=0"], "search.learning_rate.min=0.0, max=0.01"),
        (["search.max_trials=null"], "search.max_trials=null with search.tuner='random'"),
        (["stages=[scratch,feature_extraction]"], "lacks one of them"),
        (["freeze.unfreeze_layers=3"], "set freeze.unfreeze_layers=null"),
    ],
)
def test_impossible_search_settings_fail_naming_the_key(overrides, message):
    config = OmegaConf.to_object(compose_config(["search=random", *overrides]))
    with pytest.raises(ConfigError) as error:
        check_config(config)
    assert message in str(error.value)


def test_grid_needs_a_learning_rate_step():
    config = OmegaConf.to_object(compose_config(["search=grid", "search.learning_rate.step=null"]))
    with pytest.raises(ConfigError, match=r"search\.learning_rate\.step=null"):
        check_config(config)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def pipeline_process(args: list[str], out: Path, env: dict | None = None) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    environment.update(env or {})
    command = [sys.executable, "-m", "pipeline", f"hydra.run.dir={out}", *args]
    return subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def running_trial(client: MlflowClient, trial_id: str) -> bool:
    experiment = client.get_experiment_by_name("transfer-lab")
    if experiment is None:
        return False
    query = f"tags.stage = 'trial' and tags.trial_id = '{trial_id}'"
    return bool(client.search_runs([experiment.experiment_id], query))


@pytest.mark.slow
def test_a_killed_search_resumes_in_its_run_without_repeating_trials(tmp_path, store_uri, client):
    args = ["debug=smoke", f"tracking.uri={store_uri}", "search=random", "search.max_trials=3"]
    args += ["stages=[feature_extraction,fine_tune]", "search.epochs=40"]
    first = pipeline_process(args, tmp_path / "first")
    try:
        wait_for(lambda: running_trial(client, "1"), 240, "trial 1 to start")
    finally:
        first.send_signal(signal.SIGKILL)  # no clean-up at all: runs stay RUNNING
        first.communicate(timeout=60)
    done = run_cli(args, tmp_path / "second")
    assert done.returncode == 0, done.stderr[-3000:]

    runs = runs_by_stage(client)
    (search_run,) = runs["search"]
    assert search_run.info.status == "FINISHED" and search_run.data.tags["resumes"] == "1"
    assert len(runs["parent"]) == 2
    finished_parent = next(r for r in runs["parent"] if r.info.status == "FINISHED")
    assert search_run.data.tags["mlflow.parentRunId"] == finished_parent.info.run_id
    trials = trials_of(runs)
    assert sorted(trials) == ["0", "1", "2"]
    assert len(trials["0"]) == 1 and trials["0"][0].info.status == "FINISHED", "not repeated"
    assert sorted(r.info.status for r in trials["1"]) in (
        ["FAILED", "FINISHED"],
        ["FINISHED", "KILLED"],
    )
    assert all(r.info.status != "RUNNING" for group in runs.values() for r in group)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distributed_search_chief_and_two_workers_run_every_trial_once(tmp_path, store_uri, client):
    args = ["debug=smoke", f"tracking.uri={store_uri}", "search=random", "search.max_trials=4"]
    args += [*TINY, f"search.directory={tmp_path / 'shared'}"]
    prepare_store(store_uri, ["transfer-lab", "transfer-lab-backbones"])  # no race on creation
    oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(free_port())}
    processes = [
        pipeline_process(args, tmp_path / name, {**oracle, "KERASTUNER_TUNER_ID": name})
        for name in ("chief", "tuner0", "tuner1")
    ]
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]

    runs = runs_by_stage(client)
    (parent,), (search_run,) = runs["parent"], runs["search"]
    assert parent.info.status == "FINISHED" and search_run.info.status == "FINISHED"
    trials = trials_of(runs)
    assert sorted(trials) == ["0", "1", "2", "3"]
    ended = {i: [(r.info.status, r.data.tags.get("error")) for r in g] for i, g in trials.items()}
    assert all(group == [("FINISHED", None)] for group in ended.values()), (ended, outputs)
    assert {g[0].data.tags["tuner_id"] for g in trials.values()} <= {"tuner0", "tuner1"}
    assert search_run.data.metrics["trials_completed"] == 4.0
    best_id = search_run.data.tags["best_trial_id"]
    assert runs["fine_tune"][0].data.params["search_trial_id"] == best_id
