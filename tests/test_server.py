"""A real `mlflow server` on 127.0.0.1: the pipeline logs through it as it does into SQLite."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.tracking import server as tracking_server
from tests.clusters import leftover
from tests.conftest import copy_store, headless, run_cli, runs_by_stage


def start_server(folder: Path, store: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` bound to 127.0.0.1 with proxied artifacts; its SQLite backend a copy of
    `store` (a migrated one: a new store's migrations take seconds)."""
    backend = copy_store(store, folder / "server.db")
    try:
        return tracking_server.start_server(
            backend, folder / "server-artifacts", log=folder / "server.log", timeout_s=90
        )
    except tracking_server.ServerDidNotStart as error:
        pytest.fail(str(error))


@pytest.fixture
def server(tmp_path: Path, migrated_store: Path):
    process, url = start_server(tmp_path, migrated_store)
    yield url
    left = leftover(tracking_server.stop_server(process))
    assert left == [], f"processes left behind: {left}"


def kill_server(process: subprocess.Popen) -> set[int]:
    """SIGKILL, without notice, to the server and its gunicorn/uvicorn workers (then to any child
    that left its process group); the processes it had."""
    return tracking_server.stop_server(process, kill=True)


def scratch_running(url: str) -> bool:
    try:
        runs = runs_by_stage(MlflowClient(url)).get("scratch", [])
    except Exception:
        return False
    return any(run.info.status == "RUNNING" for run in runs)


def start_pipeline(args: list[str], out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline", f"hydra.run.dir={out}", *args]
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "stage_ends"])
def test_a_dead_server_stops_the_command_in_one_line_naming_it(tmp_path, migrated_store, how):
    """Killed mid-stage: training goes on; SIGTERM exits 130 within 10 s, or the stage ends and
    the command exits 1; either way one line names the server, never a traceback."""
    process, url = start_server(tmp_path, migrated_store)
    epochs = "100000" if how == "sigterm" else "40"
    args = ["debug=smoke", f"tracking.uri={url}", "stages=[scratch]"]
    args += [f"train.epochs.scratch={epochs}"]
    if how == "sigterm":  # no metrics flush before the signal: a failed one may end it first
        args += ["tracking.metrics_flush_s=3600"]
    job = start_pipeline([*args, "train.patience=100000"], tmp_path / "out")
    try:
        deadline = time.monotonic() + 120
        while not scratch_running(url) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        server_processes = kill_server(process)
    if how == "sigterm":
        time.sleep(3)  # training goes on while writes fail
        job.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = job.communicate(timeout=180)
    assert (job.returncode, how == "sigterm") in ((130, True), (1, False)), stderr[-2000:]
    if how == "sigterm":
        assert time.monotonic() - sent < 10
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"the tracking server {url} is unreachable" in lines[0]
    assert leftover(server_processes) == []


@pytest.mark.slow
def test_experiment_logs_through_a_tracking_server(tmp_path, server):
    done = run_cli(["debug=smoke", "tracking=server", f"tracking.uri={server}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(server)
    runs = runs_by_stage(client)
    assert {"parent", "scratch", "feature_extraction", "fine_tune"} <= set(runs)
    assert all(run.info.status == "FINISHED" for group in runs.values() for run in group)
    (fine,) = runs["fine_tune"]
    artifacts = {a.path for a in client.list_artifacts(fine.info.run_id)}
    assert "learning_curve.png" in artifacts
    assert list((tmp_path / "server-artifacts").rglob("learning_curve.png"))
    experiment = client.get_experiment_by_name("transfer-lab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs_table = f"{server}/#/experiments/{experiment.experiment_id}/runs"
    assert f"open {runs_table} in a browser" in done.stdout
    # the printed link opens on the runs table, the parent run listed by its name
    (parent,) = runs["parent"]
    assert parent.info.run_name == "digits-small_cnn-smoke-seed0"
    budget = "--virtual-time-budget=30000"  # the UI's JavaScript fetches the runs meanwhile
    page = headless(runs_table, tmp_path / "profile", budget, "--dump-dom")
    assert page.returncode == 0, page.stderr[-2000:]
    assert 'role="grid"' in page.stdout and parent.info.run_name in page.stdout
    screenshot = tmp_path / "runs.png"
    shot = headless(runs_table, tmp_path / "profile", budget, f"--screenshot={screenshot}")
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000
