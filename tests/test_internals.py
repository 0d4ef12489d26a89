"""The adapters that reach into libraries' private APIs (`*_internals.py`), checked on real objects.

Each test fails with a message naming its adapter when an upgrade of the library changes what the
adapter relies on: the name and signature, and the behaviour.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import subprocess
import sys
import threading
import time

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT


def broken(adapter: str, what: str) -> str:
    """The failure message: which adapter to fix, and what changed."""
    return f"{adapter}: {what}; the library changed its private API, fix the adapter"


MLFLOW = "pipeline/tracking/mlflow_internals.py"
HYDRA = "pipeline/cli/hydra_internals.py"
TUNER = "pipeline/search/tuner_internals.py"
TENSORFLOW = "pipeline/tensorflow_internals.py"
PYTHON = "pipeline/cli/python_internals.py"


def parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def async_loops() -> set[threading.Thread]:
    """MLflow's asynchronous logging threads (MLflow names them so)."""
    return {t for t in threading.enumerate() if t.name == "MLflowAsyncLoggingLoop"}


@pytest.mark.empty_store
def test_mlflow_ends_a_run_at_once_and_shuts_the_queue_down(store_uri):
    from pipeline.tracking.mlflow_internals import (
        end_run_at_once,
        shut_down_async_logging,
        tracking_store,
    )

    client = MlflowClient(store_uri)
    store = tracking_store(client)
    expected = ["run_id", "run_status", "end_time", "run_name"]
    assert parameters(store.update_run_info) == expected, broken(MLFLOW, "update_run_info")
    experiment = client.create_experiment("internals")
    ended, logging_run = (client.create_run(experiment).info.run_id for _ in range(2))
    before = async_loops()
    metric = Metric("m", 1.0, int(time.time() * 1000), 0)
    client.log_batch(logging_run, metrics=[metric], synchronous=False)
    queue = async_loops() - before
    assert queue, broken(
        MLFLOW, "no asynchronous logging thread after log_batch(synchronous=False)"
    )

    started = time.time()
    end_run_at_once(client, ended, "KILLED")
    info = client.get_run(ended).info
    assert info.status == "KILLED", broken(MLFLOW, "update_run_info did not set the status")
    assert info.end_time and abs(info.end_time / 1000 - started) < 60, broken(MLFLOW, "end time")
    assert all(t.is_alive() for t in queue), broken(MLFLOW, "ending a run stopped the queue")

    later = Metric("m", 2.0, int(time.time() * 1000), 1)
    client.log_batch(logging_run, metrics=[later], synchronous=False)
    shut_down_async_logging(client)
    history = sorted((m.step, m.value) for m in client.get_metric_history(logging_run, "m"))
    assert history == [(0, 1.0), (1, 2.0)], broken(MLFLOW, "queued writes lost at shut-down")
    for thread in queue:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in queue), broken(MLFLOW, "the queue's thread outlived it")


@pytest.mark.empty_store
def test_mlflow_reads_metric_histories_in_bulk(store_uri):
    from pipeline.tracking.mlflow_internals import metric_history_bulk

    client = MlflowClient(store_uri)
    experiment = client.create_experiment("internals")
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    for offset, run_id in enumerate(runs):
        for step in range(3):
            client.log_metric(run_id, "val_accuracy", step + offset / 10, step=step)
            client.log_metric(run_id, "other", 9.0, step=step)
    found = metric_history_bulk(client, runs, "val_accuracy", max_results=100)
    assert found is not None, broken(MLFLOW, "the SQL store has no get_metric_history_bulk")
    got = sorted((m.run_id, m.step, m.value) for m in found)
    expected = sorted((run_id, s, s + o / 10) for o, run_id in enumerate(runs) for s in range(3))
    assert got == expected, broken(MLFLOW, "get_metric_history_bulk returned other values")


@pytest.mark.empty_store
def test_mlflow_reads_runs_in_bulk_as_search_runs_does(store_uri):
    """Ties of start time, a NaN and an updated metric, a deleted run, another experiment."""
    import math

    from pipeline.tracking.mlflow_internals import runs_bulk
    from pipeline.tracking.query import RunRecord, record_of

    client = MlflowClient(store_uri)
    experiment, other = client.create_experiment("internals"), client.create_experiment("other")
    runs = [client.create_run(experiment, start_time=1000 + i // 2) for i in range(5)]
    for i, run in enumerate(runs):
        run_id = run.info.run_id
        client.log_batch(
            run_id,
            metrics=[
                Metric("m", i, 0, 0),
                Metric("m", i + 0.5, 0, 1),
                Metric("nan", math.nan, 0, 0),
            ],
            params=[Param("p", str(i)), Param("q", "x" * 300)],
            tags=[RunTag("stage", "trial"), RunTag("mlflow.parentRunId", runs[0].info.run_id)],
        )
    client.set_terminated(runs[1].info.run_id, "FAILED")
    client.delete_run(runs[2].info.run_id)
    client.create_run(other)
    found = runs_bulk(client, [experiment])
    assert found is not None, broken(MLFLOW, "the SQL store has no ManagedSessionMaker")
    expected = [
        record_of(run)
        for run in client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    ]
    got = [RunRecord(**values) for values in found]
    assert len(got) == 4 and all(math.isnan(r.metrics.pop("nan")) for r in got + expected)
    assert got == expected, broken(MLFLOW, "the runs, tags, params or latest metrics differ")


def test_mlflow_loggers_quieted_on_a_failing_store_still_exist():
    from pipeline.tracking.mlflow_internals import ASYNC_QUEUE_LOGGER, STORE_ERROR_LOGGER

    for name in (ASYNC_QUEUE_LOGGER, STORE_ERROR_LOGGER):
        try:
            importlib.import_module(name)
        except ImportError:
            pytest.fail(broken(MLFLOW, f"module {name} is gone: its logger is not quieted"))
        assert name in logging.Logger.manager.loggerDict, broken(MLFLOW, f"no logger {name}")


def test_hydra_reads_the_command_line_as_hydra_main_does():
    from pipeline.cli.hydra_internals import INFO_FLAGS, parse_command_line

    args = parse_command_line(["-m", "seed=0,1", "hydra/launcher=joblib"])
    assert args.multirun is True, broken(HYDRA, "-m not read as multirun")
    assert args.overrides == ["seed=0,1", "hydra/launcher=joblib"], broken(HYDRA, "overrides")
    plain = parse_command_line(["seed=1"])
    assert not plain.multirun and plain.overrides == ["seed=1"], broken(HYDRA, "a plain run")
    spelled = {
        "help": ["--help"],
        "hydra_help": ["--hydra-help"],
        "cfg": ["--cfg", "job"],
        "info": ["--info"],
        "shell_completion": ["--shell-completion"],
        "resolve": ["--cfg", "job", "--resolve"],
    }
    assert set(spelled) == set(INFO_FLAGS)
    for flag, argv in spelled.items():
        assert not getattr(plain, flag), broken(HYDRA, f"{flag} set without its flag")
        assert getattr(parse_command_line(argv), flag), broken(HYDRA, f"{argv} does not set {flag}")


def test_keras_tuner_searches_a_declared_space_without_building_models(tmp_path):
    import keras_tuner

    from pipeline.search.tuner_internals import DeclaredSpaceTuner, checkpoint_path

    builds = []

    class Counting(keras_tuner.HyperModel):
        def declare_hyperparameters(self, hp) -> None:
            hp.Int("depth", 0, 3)

        def build(self, hp):
            builds.append(hp.values)
            raise AssertionError("never built in these tests")

    class ScoreDepth:
        def run_trial(self, trial, *args, **kwargs):
            return {"score": float(trial.hyperparameters.get("depth"))}

    def tuner(base: type, name: str):
        oracle = keras_tuner.oracles.RandomSearchOracle(
            objective=keras_tuner.Objective("score", "max"), max_trials=2, seed=0
        )
        kind = type(name, (ScoreDepth, base), {})
        return kind(oracle, Counting(), directory=tmp_path, project_name=name)

    declared = tuner(DeclaredSpaceTuner, "declared")
    declared.search()
    assert builds == [], broken(TUNER, "_populate_initial_space no longer called: models built")
    space = [hp.name for hp in declared.oracle.get_space().space]
    assert space == ["depth"], broken(TUNER, "the declared space did not reach the oracle")
    assert len(declared.oracle.trials) == 2
    with pytest.raises(AssertionError, match="never built"):
        tuner(keras_tuner.Tuner, "plain").search()  # Keras Tuner's own population builds one

    trial_id = next(iter(declared.oracle.trials))
    path = checkpoint_path(declared, trial_id)
    assert path.endswith(".weights.h5"), broken(TUNER, f"checkpoint {path} is not Keras weights")
    in_trial = path.startswith(str(declared.get_trial_dir(trial_id)))
    assert in_trial, broken(TUNER, f"checkpoint {path} is not in its trial's folder")


def test_tensorflow_op_determinism_can_be_read_and_undone():
    import tensorflow as tf

    from pipeline.tensorflow_internals import disable_op_determinism, op_determinism_enabled

    was = op_determinism_enabled()
    try:
        tf.config.experimental.enable_op_determinism()
        assert op_determinism_enabled() is True, broken(TENSORFLOW, "is_op_determinism_enabled")
        disable_op_determinism()
        assert op_determinism_enabled() is False, broken(TENSORFLOW, "disable_op_determinism")
    finally:
        if was:
            tf.config.experimental.enable_op_determinism()


def test_keras_builds_training_variables_before_fit():
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.tensorflow_internals import build_training_variables

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    data = tf.data.Dataset.from_tensor_slices((np.zeros((4, 4)), np.zeros(4))).batch(2)
    method = getattr(model, "_symbolic_build", None)
    assert method is not None, broken(TENSORFLOW, "Keras has no Trainer._symbolic_build")
    assert "data_batch" in parameters(method), broken(TENSORFLOW, "_symbolic_build's signature")
    assert not model.optimizer.built
    metric_variables = len(model.metrics_variables)
    build_training_variables(model, data.element_spec)
    assert model.optimizer.built and model.optimizer.variables, broken(TENSORFLOW, "no optimizer")
    more = len(model.metrics_variables) > metric_variables
    assert more, broken(TENSORFLOW, "_symbolic_build made no metric variables")


def test_python_runs_the_exit_handlers_before_a_prompt_exit():
    script = (
        "import atexit, os\n"
        "from pipeline.cli.python_internals import run_exit_handlers\n"
        "atexit.register(print, 'exit handler ran', flush=True)\n"
        "run_exit_handlers()\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "exit handler ran\n", broken(PYTHON, "atexit._run_exitfuncs")


@pytest.mark.empty_store
def test_mlflow_reads_runs_by_tag_and_status_as_search_runs_does(store_uri):
    """The resume lookup's read: ties of start time, another status, a deleted run, a tag
    prefix that must not match, another experiment."""
    from pipeline.tracking.mlflow_internals import runs_bulk
    from pipeline.tracking.query import RunRecord, newest_first, record_of

    client = MlflowClient(store_uri)
    experiment, other = client.create_experiment("internals"), client.create_experiment("other")
    values = ["abc", "abc", "abc", "abcd", "abc"]
    runs = [client.create_run(experiment, start_time=1000 + i // 2) for i in range(5)]
    for run, value in zip(runs, values, strict=True):
        client.log_batch(run.info.run_id, params=[Param("p", "1")], tags=[RunTag("h", value)])
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(runs[1].info.run_id, "FAILED")
    client.delete_run(runs[4].info.run_id)
    client.set_terminated(client.create_run(other, tags={"h": "abc"}).info.run_id, "FINISHED")
    found = runs_bulk(client, [experiment], ("h", "abc"), "FINISHED")
    assert found is not None, broken(MLFLOW, "the SQL store has no ManagedSessionMaker")
    query = "tags.h = 'abc' and attributes.status = 'FINISHED'"
    expected = [record_of(run) for run in client.search_runs([experiment], query)]
    got = sorted((RunRecord(**v) for v in found), key=newest_first)
    assert len(got) == 2 and got == expected, broken(MLFLOW, "the runs by tag differ")
