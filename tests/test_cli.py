"""`python -m pipeline` in real processes: the summary, reproducibility, one-line errors."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT, experiment
from pipeline.errors import ConfigError
from pipeline.experiment import run_experiment
from pipeline.tracking.environment import check_mlflow_environment
from pipeline.tracking.store import prepare_store
from tests.conftest import (
    compose_config,
    copy_store,
    run_cli,
    run_cli_watching_imports,
    runs_by_stage,
)


def numbers_of(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    """Every metric of a run, every step, except wall time."""
    run = client.get_run(run_id)
    return {
        name: [m.value for m in client.get_metric_history(run_id, name)]
        for name in run.data.metrics
        if name != "seconds"
    }


@pytest.fixture(scope="module")
def same_command_twice(tmp_path_factory, migrated_store) -> tuple[MlflowClient, list, str]:
    """`python -m pipeline debug=smoke` run twice into a new store (the first pretrains, the
    second reuses): its client, the two finished commands, the store's URI."""
    root = tmp_path_factory.mktemp("same-command-twice")
    store_uri = copy_store(migrated_store, root / "mlruns" / "mlflow.db")
    done = [run_cli(["debug=smoke", f"tracking.uri={store_uri}"], root / str(n)) for n in (0, 1)]
    return MlflowClient(store_uri), done, store_uri


@pytest.mark.slow
def test_same_command_twice_gives_identical_metrics(same_command_twice):
    """Determinism across processes; the second run reuses the pretrained backbone."""
    client, done, _ = same_command_twice
    assert [d.returncode for d in done] == [0, 0], done[0].stderr[-3000:] + done[1].stderr[-3000:]
    runs = runs_by_stage(client)
    assert set(runs) == {"parent", "scratch", "feature_extraction", "fine_tune"}
    for second, first in runs.values():
        assert numbers_of(client, first.info.run_id) == numbers_of(client, second.info.run_id)
        assert first.data.params == second.data.params
    reused = sorted(run.data.tags["backbone_reused"] for run in runs["parent"])
    assert reused == ["false", "true"]


@pytest.mark.slow
def test_summary_table_and_mlflow_ui_command_are_printed(same_command_twice):
    client, (_, done), store_uri = same_command_twice
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    for column in ("best val acc", "test acc", "epochs", "seconds", "run id"):
        assert column in lines[header]
    rows = lines[header + 2 : header + 5]
    assert [row.split()[0] for row in rows] == ["scratch", "feature_extraction", "fine_tune"]
    runs = runs_by_stage(client)
    second = {run.info.run_id for stage in runs.values() for run in stage[:1]}  # newest first
    assert {row.split()[-1] for row in rows} <= second
    assert f"mlflow ui --backend-store-uri {store_uri} --host 127.0.0.1" in done.stdout
    experiment = client.get_experiment_by_name("transfer-lab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs" in done.stdout
    assert {run.info.run_name for run in runs["parent"]} == {"digits-small_cnn-smoke-seed0"}
    assert re.search(r"fine_tune epoch 1/1 .*val_accuracy=", done.stderr + done.stdout)
    # TensorFlow's start-up chatter (absl, oneDNN, CUDA probe) is kept out of the terminal
    assert "absl::InitializeLog" not in done.stderr and "cuInit" not in done.stderr
    assert not re.search(r"^[IWE]\d{4} ", done.stderr, re.MULTILINE), done.stderr[:2000]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["freeze.unfreeze_blocks=20"], "freeze.unfreeze_blocks=20 but small_cnn has 3 blocks"),
        (["lr.fine_tune=-1"], "lr.fine_tune=-1.0 must be > 0"),
        (["dataset.train_per_class=500"], "dataset.train_per_class=500 but class"),
    ],
)
def test_impossible_values_exit_2_with_one_line_and_log_nothing(tmp_path, store_uri, args, message):
    done = run_cli(["debug=smoke", f"tracking.uri={store_uri}", *args], tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in done.stderr
    assert MlflowClient(store_uri).get_experiment_by_name("transfer-lab") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset.trian_per_class=5"], "dataset.trian_per_class is not a config key; allowed:"),
        (["+dataset.colour=red"], "dataset.colour is not a config key; allowed:"),
        (["seed=zero"], "seed: Value 'zero' of type 'str' could not be converted to Integer"),
        (["backbone=resnet9000"], "backbone=resnet9000 is not an option; allowed: efficientnet_b0"),
        (["-m", "seed=0,x"], "seed: Value 'x' of type 'str' could not be converted"),
        (["lr.fine_tune=[0.1"], "lr.fine_tune=[0.1: no viable alternative"),
    ],
)
def test_composition_mistakes_exit_2_in_one_line_before_anything_runs(tmp_path, args, message):
    done = run_cli(args, tmp_path, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists(), "nothing ran: no output folder"


@pytest.mark.parametrize(
    "args",
    [
        ["seed=-1"],
        ["freeze.unfreeze_blocks=20"],
        ["backbone.source.max_examples=0"],
        ["-m", "seed=0,1", "search=hyperband", "search.hyperband.iterations=0"],
    ],
)
def test_value_mistakes_exit_2_in_one_line_before_tensorflow_is_imported(args):
    done = run_cli_watching_imports(args)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines


@pytest.mark.parametrize(
    ("sweep", "variable", "value", "allowed"),
    [
        ([], "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1.5", "an integer"),
        (["-m", "seed=0,1"], "MLFLOW_ENABLE_ASYNC_LOGGING", "yes", "true, false, 1 or 0"),
    ],
    ids=["run", "sweep"],
)
def test_an_mlflow_setting_mlflow_cannot_read_is_one_line_before_anything_runs(
    tmp_path, monkeypatch, sweep, variable, value, allowed
):
    """MLflow reads MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS on its logging thread: a value it
    cannot convert ends that thread, and the command then waited for its writes for ever."""
    monkeypatch.setenv(variable, value)
    db = tmp_path / "mlflow.db"
    args = [*sweep, "debug=smoke", f"tracking.uri=sqlite:///{db}"]
    done = run_cli([*args, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    expected = f"error: {variable}={value!r} in the environment: MLflow needs {allowed}"
    [line] = done.stderr.splitlines()
    assert line.startswith(expected) and line.endswith(" there; set it so, or unset it"), line
    assert not db.exists() and not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()


def test_mlflow_settings_are_checked_where_the_store_opens_too(monkeypatch, store_uri):
    """Library use (run_experiment, no command line) and HYDRA_FULL_ERROR=1 skip the command
    line's check; opening the store, before any run is created, checks again."""
    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "abc")
    with pytest.raises(ConfigError, match="MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS='abc'"):
        prepare_store(store_uri, ["transfer-lab"])


def test_mlflow_settings_mlflow_can_read_pass(monkeypatch):
    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "2")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "TRUE")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    check_mlflow_environment()  # raises ConfigError for a value MLflow cannot read
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "thirty")  # the same check is live
    with pytest.raises(ConfigError, match="MLFLOW_HTTP_REQUEST_TIMEOUT='thirty'"):
        check_mlflow_environment()


def test_unreachable_tracking_server_fails_fast_in_one_line(tmp_path):
    done = run_cli(["debug=smoke", "tracking.uri=http://127.0.0.1:9"], tmp_path, timeout=60)
    assert done.returncode == 2
    assert "tracking.uri=http://127.0.0.1:9 is unreachable" in done.stderr


def test_an_unreachable_server_is_found_before_the_data_loads(monkeypatch):
    loaded = []
    monkeypatch.setattr(experiment, "load_task", lambda *args: loaded.append(args))
    with pytest.raises(ConfigError, match=r"tracking.uri=http://127.0.0.1:9 is unreachable"):
        run_experiment(compose_config(["debug=smoke", "tracking.uri=http://127.0.0.1:9"]))
    assert loaded == []


@pytest.mark.slow
def test_parallel_sweep_into_a_fresh_store_groups_its_jobs(tmp_path, fresh_store_uri):
    """Hydra multirun with the joblib launcher: two processes, one fresh SQLite store."""
    args = [
        "-m",
        "seed=0,1",
        "debug=smoke",
        f"tracking.uri={fresh_store_uri}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    parents = runs_by_stage(MlflowClient(fresh_store_uri))["parent"]
    assert sorted(run.data.tags["seed"] for run in parents) == ["0", "1"]
    assert {run.data.tags["sweep_id"] for run in parents} == {str(tmp_path / "sweep")}
    assert len({run.data.tags["output_dir"] for run in parents}) == 2
    assert all(run.info.status == "FINISHED" for run in parents)
    for run in parents:  # the logged command composes the job's config again
        command = shlex.split(run.data.tags["command"])
        assert command[:3] == ["python", "-m", "pipeline"]
        cfg = compose_config(command[3:])
        assert cfg.seed == int(run.data.tags["seed"]) and cfg.tracking.uri == fresh_store_uri


EXIT_SCRIPT = """
import atexit, sys, threading, time, types
sys.modules["tensorflow"] = types.ModuleType("tensorflow")  # its teardown is what is skipped
from pipeline.cli.process import exit_promptly
atexit.register(print, "exit handler ran")
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread ended"))).start()
print("buffered output", end="")
exit_promptly(int(sys.argv[2]))
"""


@pytest.mark.parametrize("thread", ["none", "thread"])
@pytest.mark.parametrize("code", [0, 3])
def test_a_command_exits_promptly_with_its_code_handlers_run_and_output_flushed(thread, code):
    """Past TensorFlow's teardown, not past what an exit must do: the handlers run, buffered
    output is written, a running thread that is not a daemon is waited for."""
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, thread, str(code)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == code, done.stderr
    lines = done.stdout.splitlines()
    if thread == "thread":
        assert lines == ["buffered outputthread ended", "exit handler ran"]
    else:
        assert lines == ["buffered outputexit handler ran"]
