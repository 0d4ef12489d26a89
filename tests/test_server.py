"""A real `mlflow server` on 127.0.0.1: the pipeline logs through it as it does into SQLite."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.conftest import headless, run_cli, runs_by_stage


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    """`mlflow server` bound to 127.0.0.1 with a SQLite backend and proxied artifacts."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"mlflow server did not start: {process.stderr.read().decode()[-2000:]}")
    yield url
    process.terminate()
    process.wait(timeout=30)


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
