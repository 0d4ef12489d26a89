"""The tracking package: import boundary, Protocol, injected faults, leftovers, read side."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import threading

import psutil
import pytest
from omegaconf import OmegaConf

from pipeline import PROJECT_ROOT, experiment
from pipeline.experiment import run_experiment
from pipeline.tracking import Tracker, open_tracker
from pipeline.tracking.mlflow_tracker import MlflowTracker
from pipeline.tracking.null import NullTracker
from pipeline.tracking.query import StoreReader, experiment_id, variants
from tests.conftest import compose_config, runs_by_stage

PACKAGE = PROJECT_ROOT / "pipeline"
SEARCH = ["search=random", "search.max_trials=2", "search.epochs=1"]
SEARCH += ["stages=[feature_extraction,fine_tune]"]
WORKER_ONLY = ("chief_search", "fetch_artifact")  # called by distributed workers only
SEARCH_ONLY = ("search_run", "trial_observer", "log_artifact", "log_search_outcome")
SEARCH_ONLY += ("resumable_search",)
SWEEP_ONLY = ("finished_experiment_run", "record_skipped_job")  # a sweep's job, before it runs
PROTOCOL = sorted(
    name for name in vars(Tracker) if not name.startswith("_") and callable(vars(Tracker)[name])
)


def importers(module: str) -> set[str]:
    pattern = re.compile(rf"^\s*(import {module}\b|from {module}\b)", re.M)
    return {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if pattern.search(path.read_text())
    }


def test_mlflow_is_imported_only_inside_the_tracking_package():
    found = importers("mlflow")
    assert found, "the grep must find the tracking package's imports"
    assert {path for path in found if not path.startswith("tracking/")} == set()


def test_keras_tuner_is_imported_only_by_the_search_code():
    found = importers("keras_tuner")
    assert found == {"search/tuner.py", "search/callbacks.py", "search/tuner_internals.py"}


def test_importing_the_search_package_does_not_import_keras_tuner():
    script = "import sys, pipeline.search.roles\nassert 'keras_tuner' not in sys.modules, 'loaded'"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_search_code_talks_to_tracking_through_the_protocol_only():
    for name in ("search/tuner.py", "search/stage.py", "search/roles.py", "search/callbacks.py"):
        source = (PACKAGE / name).read_text()
        assert not re.search(r"\bmlflow\.\w", source), name
        assert ".client" not in source and ".experiment_id" not in source
        assert "tracker.enabled" not in source and "tracking.enabled" not in source


@pytest.mark.slow
def test_tracking_off_loads_neither_mlflow_nor_keras_tuner(tmp_path):
    script = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from pipeline.config import register_configs\n"
        "from pipeline.experiment import run_experiment\n"
        "register_configs()\n"
        f"overrides = ['debug=smoke', 'tracking=off', 'tracking.untracked_cache={tmp_path}']\n"
        f"with initialize_config_dir(config_dir='{PROJECT_ROOT / 'conf'}', version_base='1.3'):\n"
        "    run_experiment(compose(config_name='config', overrides=overrides))\n"
        "loaded = [m for m in ('mlflow', 'keras_tuner') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def parameters(cls: type, name: str) -> list[tuple[str, object]]:
    signature = inspect.signature(getattr(cls, name))
    return [(p.name, p.kind) for p in signature.parameters.values()]


def test_both_trackers_implement_the_protocol_with_its_signatures():
    # isinstance on a runtime-checkable Protocol checks the names only: compare the parameters
    assert "experiment_run" in PROTOCOL and "log_search_outcome" in PROTOCOL
    for tracker in (MlflowTracker, NullTracker):
        for name in [*PROTOCOL, "__enter__", "__exit__"]:
            expected = parameters(Tracker, name)
            assert parameters(tracker, name) == expected, f"{tracker.__name__}.{name}"


def drive(tracker: Tracker) -> tuple[str, str, dict[str, str]]:
    """One invocation's calls, through the Protocol only: a parent run, a stage, a metric."""
    with tracker, tracker.experiment_run("protocol", {"dataset": "digits"}) as parent:
        tracker.log_config({"seed": 0})
        with tracker.stage_run("scratch") as stage:
            tracker.log_metrics({"test_accuracy": 0.5})
        return parent, stage, tracker.run_ids()


def test_both_trackers_take_the_same_calls(store_uri, client):
    overrides = [f"tracking.uri={store_uri}"]
    tracked = OmegaConf.to_object(compose_config(overrides)).tracking
    parent, stage, ids = drive(open_tracker(tracked))
    assert ids == {"parent": parent, "scratch": stage}
    run = client.get_run(stage)
    assert run.data.metrics["test_accuracy"] == 0.5 and run.data.tags["stage"] == "scratch"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).info.status == "FINISHED"

    off = OmegaConf.to_object(compose_config([*overrides, "tracking=off"])).tracking
    parent, stage, ids = drive(open_tracker(off))
    assert ids == {} and parent == stage == "-"


def mlflow_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "MLflow" in t.name]


@pytest.mark.slow
def test_nothing_outlives_the_command_whether_it_returns_or_raises(smoke, monkeypatch):
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    run_experiment(compose_config(smoke))
    assert {child.pid for child in me.children(recursive=True)} == before
    assert mlflow_threads() == []

    def broken(*args, **kwargs):
        raise RuntimeError("stage broke")

    monkeypatch.setattr(experiment, "log_stage", broken)
    with pytest.raises(RuntimeError):
        run_experiment(compose_config(smoke))
    assert {child.pid for child in me.children(recursive=True)} == before
    assert mlflow_threads() == []


class InjectedFailure(Exception):
    pass


def fail_on_call(monkeypatch, name: str) -> list[str]:
    """Make the first call of `MlflowTracker.<name>` raise; later calls work. The list records
    the calls."""
    called: list[str] = []
    original = getattr(MlflowTracker, name)

    def failing(self, *args, **kwargs):
        called.append(name)
        if len(called) == 1:
            raise InjectedFailure(f"injected failure in {name}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowTracker, name, failing)
    return called


def assert_tree_failed_cleanly(client, raised: BaseException, name: str) -> None:
    """Nothing RUNNING; the parent (when it was created) FAILED; the error named, in one line."""
    assert len(str(raised).splitlines()) == 1
    runs = [run for group in runs_by_stage(client).values() for run in group]
    assert all(run.info.status != "RUNNING" for run in runs)
    parents = [run for run in runs if "stage" not in run.data.tags]
    assert all(run.info.status == "FAILED" for run in parents)
    errors = [run.data.tags.get("error", "") for run in runs]
    assert parents == [] or any(f"injected failure in {name}" in error for error in errors)


@pytest.mark.parametrize(
    "name", [n for n in PROTOCOL if n not in WORKER_ONLY + SEARCH_ONLY + SWEEP_ONLY], ids=str
)
@pytest.mark.slow
def test_a_tracking_call_that_fails_leaves_a_true_run_tree(name, smoke, client, monkeypatch):
    called = fail_on_call(monkeypatch, name)
    with pytest.raises(Exception) as raised:
        run_experiment(compose_config(smoke))
    assert called[0] == name
    assert_tree_failed_cleanly(client, raised.value, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SEARCH_ONLY, ids=str)
def test_a_search_tracking_call_that_fails_leaves_a_true_run_tree(
    name, smoke, client, monkeypatch, tmp_path
):
    called = fail_on_call(monkeypatch, name)
    overrides = [*smoke, *SEARCH, f"search.directory={tmp_path / 'search'}"]
    with pytest.raises(Exception) as raised:
        run_experiment(compose_config(overrides))
    assert called[0] == name
    assert_tree_failed_cleanly(client, raised.value, name)


def test_a_write_the_store_refuses_fails_its_own_stage(smoke, client, monkeypatch):
    """A real asynchronous write that MLflow rejects (a param logged again with another value):
    the stage it was queued in ends FAILED, not a later run; the parent FAILED."""
    original = experiment.log_stage

    def relogging(tracker, result):
        original(tracker, result)
        if result.stage == "feature_extraction":
            tracker.log_params({"learning_rate": -1})

    monkeypatch.setattr(experiment, "log_stage", relogging)
    with pytest.raises(experiment.StagesFailed, match="feature_extraction"):
        run_experiment(compose_config(smoke))
    runs = runs_by_stage(client)
    assert runs["feature_extraction"][0].info.status == "FAILED"
    assert "learning_rate" in runs["feature_extraction"][0].data.tags["error"]
    assert runs["scratch"][0].info.status == "FINISHED"
    assert runs["parent"][0].info.status == "FAILED"
    assert all(run.info.status != "RUNNING" for group in runs.values() for run in group)


@pytest.mark.slow
def test_the_read_side_groups_invocations_into_variants_over_seeds(smoke, client):
    for extra in (["seed=0"], ["seed=1"], ["seed=0", "lr.fine_tune=0.001"]):
        run_experiment(compose_config([*smoke, *extra]))
    reader = StoreReader(client, [experiment_id(client, "transfer-lab")])
    invocations = reader.experiment_runs()
    assert len(invocations) == 3
    for invocation in invocations:
        assert set(invocation.stages) == {"scratch", "feature_extraction", "fine_tune"}
        assert invocation.parent.status == "FINISHED"
        fine = invocation.stages["fine_tune"]
        assert fine.metrics["test_accuracy"] == invocation.parent.metrics["fine_tune_test_accuracy"]
        history = reader.metric_history(fine.run_id, "val_accuracy")
        assert [step for step, _ in history] == list(range(1, int(fine.metrics["epochs_run"]) + 1))
    grouped = variants(invocations)
    assert sorted(sorted(v.seeds) for v in grouped) == [[0], [0, 1]]
    assert len({invocation.config_hash for invocation in invocations}) == 3
    only = reader.experiment_runs("params.`lr.fine_tune` = '0.001'")
    assert [invocation.seed for invocation in only] == [0]


def test_open_tracker_is_a_context_manager_that_opens_the_store(store_uri, client):
    cfg = OmegaConf.to_object(compose_config([f"tracking.uri={store_uri}"])).tracking
    with (
        open_tracker(cfg) as tracker,
        tracker.experiment_run("probe", {"seed": "0"}) as parent,
        tracker.stage_run("scratch"),
    ):
        tracker.log_metrics({"test_accuracy": 0.5})
    assert client.get_run(parent).info.status == "FINISHED"
    (stage,) = runs_by_stage(client)["scratch"]
    assert stage.data.tags["mlflow.parentRunId"] == parent
    assert stage.data.metrics["test_accuracy"] == 0.5


def test_a_fetched_artifact_appears_whole_to_a_process_reading_it(store_uri, tmp_path):
    """Distributed workers share a search directory and fetch the chief's checkpoint into it
    while another worker's trial loads it: a reader must never see a half-copied file."""
    cfg = OmegaConf.to_object(compose_config([f"tracking.uri={store_uri}"])).tracking
    payload = os.urandom(48 * 2**20)
    logged = tmp_path / "logged" / "checkpoint.weights.h5"
    logged.parent.mkdir()
    logged.write_bytes(payload)
    shared = tmp_path / "shared"
    with open_tracker(cfg) as tracker, tracker.experiment_run("probe", {}) as run_id:
        tracker.log_artifact(logged)
        tracker.fetch_artifact(run_id, logged.name, shared)  # the first worker's copy
        sizes, fetching = [], threading.Event()

        def read_while_fetching() -> None:
            while not fetching.is_set():
                sizes.append(len((shared / logged.name).read_bytes()))

        reader = threading.Thread(target=read_while_fetching)
        reader.start()
        try:
            for _ in range(3):  # the other workers' copies
                fetched = tracker.fetch_artifact(run_id, logged.name, shared)
        finally:
            fetching.set()
            reader.join()
    assert fetched == shared / logged.name and fetched.read_bytes() == payload
    assert sizes and set(sizes) == {len(payload)}
    assert [p.name for p in shared.iterdir()] == [logged.name], "no staging folder left behind"
