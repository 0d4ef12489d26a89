"""Sweeps on real clusters: a single-host SLURM cluster (`.ci/slurm-cluster`) submitting every job
with `sbatch`, against an `mlflow server` over a throw-away PostgreSQL database (tests/clusters.py);
SLURM's signals (preemption, scancel, kill) and the server and database stopped mid-sweep."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from tests.clusters import PgTrackingServer, SlurmCluster
from tests.test_launchers import assert_two_finished_jobs, needs_submitit, sweep_and_jobs

pytestmark = [pytest.mark.slow, needs_submitit]

JOB_S = 600  # a sweep command of this module ends within this long (2-3 smoke jobs, 2 CPUs)
LONG = "600"  # scratch epochs of a job long enough to be signalled mid-stage (tens of seconds)


def slurm_sweep(url: str, experiment: str, sweep: Path, *overrides: str) -> list[str]:
    """`python -m pipeline -m hydra/launcher=submitit_slurm ...`: scratch-only smoke jobs (no
    backbone to pretrain), one CPU each, patience beyond the epochs (a long job stays long)."""
    return [
        sys.executable, "-m", "pipeline", "-m", "hydra/launcher=submitit_slurm",
        "hydra.launcher.timeout_min=15", "hydra.launcher.cpus_per_task=1",
        "debug=smoke", "stages=[scratch]", "train.patience=100000",
        f"tracking.uri={url}", f"tracking.experiment_name={experiment}",
        f"hydra.sweep.dir={sweep}", *overrides,
    ]  # fmt: skip


def run(command: list[str]) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=JOB_S
    )


def start(command: list[str]) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def submitted(sweep: Path) -> list[str]:
    """The SLURM jobs submitit submitted, `<array job>_<task>` (Hydra's launcher submits a job
    array, one task per sweep job; submitit's folders are named by them)."""
    folder = sweep / ".submitit"
    named = [p.name for p in folder.iterdir()] if folder.exists() else []
    return sorted(name for name in named if re.fullmatch(r"\d+_\d+", name))


def parents(url: str, experiment: str) -> list:
    """The experiment's jobs' parent runs (every run but the sweep's and the stages')."""
    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id])
    return [r for r in runs if r.data.tags.get("stage") is None]


def running_scratch(url: str, experiment: str, epochs: str) -> dict[str, str]:
    """{parent run id: status} of the jobs training `epochs` epochs whose scratch run is RUNNING."""
    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
    scratch = [r for r in runs if r.data.tags.get("stage") == "scratch"]
    return {
        r.data.tags["mlflow.parentRunId"]: r.data.tags.get("pid", "")
        for r in scratch
        if r.data.params.get("train.epochs.scratch", epochs) == epochs
    }


def wait_until(condition, what: str, timeout: float = 300) -> object:
    """Poll `condition` twice a second until it returns something true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout} s")


def slurm_job_of(cluster: SlurmCluster, pid: str) -> str:
    """The SLURM job whose step runs process `pid` (scontrol listpids: job id, pid)."""
    listed = cluster.command("scontrol", "listpids").stdout.split("\n")[1:]
    for line in listed:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == pid:
            return fields[1]
    pytest.fail(f"process {pid} is in no SLURM job: {listed}")


def test_a_slurm_sweep_runs_every_job_with_sbatch_nested_under_the_sweep_run(
    tmp_path, pg_server: PgTrackingServer, slurm_cluster: SlurmCluster
):
    sweep_dir = tmp_path / "sweep"
    done = run(slurm_sweep(pg_server.uri, "slurm", sweep_dir, "seed=0,1"))
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = submitted(sweep_dir)
    assert len(jobs) == 2
    # A job's result comes back while SLURM still completes it (state CG): the queue empties.
    wait_until(lambda: slurm_cluster.queue() == [], "squeue empty after the sweep", timeout=60)
    for job in jobs:  # each a real batch job of the controller, run on its node
        shown = slurm_cluster.command("scontrol", "show", "job", job).stdout
        assert "JobState=COMPLETED" in shown and "BatchHost=localhost" in shown, shown
    sweep, runs = sweep_and_jobs(pg_server.uri, "slurm")
    assert_two_finished_jobs(sweep, runs, sweep_dir)
