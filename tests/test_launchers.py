"""Sweeps through Hydra's cluster launchers (the `cluster` extra): a store every host can reach,
real submitit jobs against a real `mlflow server`."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

from pipeline.preflight import check_composition
from tests.conftest import run_cli

SQLITE_REFUSED = "cannot share the SQLite store"

# .ci/run installs the extras, so in CI these never skip.
needs_submitit = pytest.mark.skipif(
    find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install -e '.[cluster]')",
)
needs_ray = pytest.mark.skipif(
    find_spec("hydra_plugins.hydra_ray_launcher") is None or find_spec("ray") is None,
    reason="hydra-ray-launcher or ray is not installed (pip install -e '.[cluster]')",
)


@needs_submitit
@needs_ray
@pytest.mark.parametrize(
    ("args", "uri"),
    [
        (["hydra/launcher=submitit_slurm", "tracking.uri=sqlite:////tmp/x/mlflow.db"], "/tmp/x/"),
        (["hydra/launcher=ray"], "mlruns/mlflow.db"),  # the default store is SQLite too
        (["hydra/launcher=ray_aws", "tracking=sqlite"], "mlflow.db"),
    ],
)
def test_a_multi_host_launcher_with_a_sqlite_store_is_refused_naming_both(args, uri):
    problem = check_composition(["-m", "seed=0,1", *args])
    assert problem is not None and SQLITE_REFUSED in problem
    assert problem.startswith(f"{args[0]} runs jobs on other hosts") and uri in problem
    assert "tracking.uri=http://" in problem


@needs_submitit
@needs_ray
def test_mlflow_tracking_uri_sqlite_is_refused_too_and_one_host_launchers_may_use_sqlite(
    monkeypatch,
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/env/mlflow.db")
    problem = check_composition(["-m", "seed=0,1", "hydra/launcher=submitit_slurm"])
    assert problem is not None and "/tmp/env/mlflow.db" in problem
    for launcher in ("basic", "joblib", "submitit_local"):
        assert check_composition(["-m", "seed=0,1", f"hydra/launcher={launcher}"]) is None
    server = ["-m", "seed=0,1", "tracking.uri=http://mlflow-host:5000"]
    assert check_composition([*server, "hydra/launcher=ray"]) is None
    assert check_composition([*server, "hydra/launcher=submitit_slurm", "tracking=off"]) is None
    assert check_composition(["seed=0", "hydra/launcher=ray"]) is None  # one run: no sweep


def test_an_unknown_launcher_is_one_line_with_the_installed_ones():
    problem = check_composition(["-m", "seed=0,1", "hydra/launcher=slurm"])
    assert problem is not None and problem.startswith("hydra/launcher=slurm is not an option")
    assert "joblib" in problem and "pip install -e '.[cluster]'" in problem


@needs_submitit
def test_the_refusal_exits_2_in_one_line_before_any_job_starts(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}"]
    done = run_cli(args, tmp_path, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hydra/launcher=submitit_slurm")
    assert "use a tracking server" in lines[0]
    assert not sweep.exists(), "nothing ran: no sweep folder"
