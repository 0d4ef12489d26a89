"""A real two-node Ray cluster on this host (`.ci/ray-cluster`: `ray start --head` and `ray start
--address=...` as separate processes, 1 CPU and a resource of its own each) running sweeps
through `hydra/launcher=ray hydra.launcher.ray.init.address=auto` against a real `mlflow server`.
The commands are docs/scaling-out-ray.md's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from tests.test_server import kill_server, start_server

CLUSTER_SCRIPT = PROJECT_ROOT / ".ci" / "ray-cluster"
RAY_DAEMONS = {"raylet", "gcs_server"}
# Ray's Python services (monitor, log monitor, client server, dashboard), by their command lines.
RAY_SERVICES = ("site-packages/ray/", "ray.util.client.server")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_spec("hydra_plugins.hydra_ray_launcher") is None or find_spec("ray") is None,
        reason="hydra-ray-launcher or ray is not installed (pip install -e '.[cluster]')",
    ),
]


def is_ray(name: str | None, command: str) -> bool:
    """A Ray daemon, worker or agent (`ray::IDLE`, `ray::_run_job`, ...), or service."""
    services = any(service in command for service in RAY_SERVICES)
    return name in RAY_DAEMONS or command.startswith("ray::") or services


def ray_processes() -> set[int]:
    """Ray's processes on this host: its daemons, its workers and agents (`ray::...`), and its
    Python services (monitor, log monitor, client server, dashboard)."""
    found = set()
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:  # ended, not yet reaped by init
            continue
        command = " ".join(process.info["cmdline"] or [])
        if is_ray(process.info["name"], command):
            found.add(process.pid)
    return found


def described(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()[:2])[:200]
    except psutil.Error:
        return f"{pid} (ended meanwhile)"


@dataclass
class RayCluster:
    variables: dict[str, str]  # what `start` prints: RAY_ADDRESS, RAY_AUTH_MODE, ..._TOKEN_PATH
    state: Path  # the cluster's temp folder (sessions, logs, sockets)

    @property
    def address(self) -> str:
        """127.0.0.1:PORT, what RAY_ADDRESS says to `address=auto`."""
        return self.variables["RAY_ADDRESS"]

    def raylet(self, resource: str) -> psutil.Process:
        """The raylet of this cluster's node with the custom resource `resource`."""
        for process in psutil.process_iter(["name", "cmdline"]):
            args = process.info["cmdline"] or []
            mine = any(str(self.state) in arg for arg in args)
            if process.info["name"] == "raylet" and mine and f"{resource},1" in " ".join(args):
                return process
        raise AssertionError(f"no raylet with resource {resource} in {self.state}")

    def node_id(self, resource: str) -> str:
        args = self.raylet(resource).cmdline()
        return next(arg.split("=", 1)[1] for arg in args if arg.startswith("--node_id="))


def cluster_script(command: str, state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TL_RAY_STATE": str(state)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # this venv's `ray`
    return subprocess.run(
        [str(CLUSTER_SCRIPT), command], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    """Two nodes started by `.ci/ray-cluster start`, stopped by `.ci/ray-cluster stop`; no Ray
    process of theirs is left (checked). A short folder: Ray's socket paths must stay short."""
    before = ray_processes()
    state = Path(tempfile.mkdtemp(prefix="tl-ray-", dir="/tmp"))
    started = cluster_script("start", state)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        variables = dict(line.split("=", 1) for line in started.stdout.split())
        assert variables["RAY_ADDRESS"].startswith("127.0.0.1:")
        assert variables["RAY_AUTH_MODE"] == "token"
        assert Path(variables["RAY_AUTH_TOKEN_PATH"]).parent == state
        yield RayCluster(variables, state)
    finally:
        stopped = cluster_script("stop", state)
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        deadline = time.monotonic() + 30  # a lost node's workers end on their own, soon
        while ray_processes() - before and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [described(pid) for pid in ray_processes() - before]
        assert left == [], f"Ray processes left behind: {left}"
        assert not state.exists()


@pytest.fixture
def tracking_server(tmp_path: Path, migrated_store: Path) -> Iterator[str]:
    """A tracking server on 127.0.0.1 (SQLite behind `mlflow server`; a PostgreSQL-backed one
    can replace it: the tests need only its URL)."""
    process, url = start_server(tmp_path / "server", migrated_store)
    yield url
    kill_server(process)


def ray_sweep(cluster: RayCluster, url: str, sweep_dir: Path, *extra: str) -> list[str]:
    """Four seconds-long jobs (seeds 0-3, scratch only), one CPU each: with one CPU a node, Ray
    runs one job on each node at a time."""
    return [
        sys.executable, "-m", "pipeline", "-m", "hydra/launcher=ray",
        "hydra.launcher.ray.init.address=auto",
        "+hydra.launcher.ray.init.object_store_memory=null",  # the launcher's default: refused
        "+hydra.launcher.ray.remote.num_cpus=1",
        "seed=0,1,2,3", "debug=smoke", "stages=[scratch]", *extra,
        f"tracking.uri={url}", "tracking.experiment_name=ray-cluster",
        f"hydra.sweep.dir={sweep_dir}", f"hydra.run.dir={sweep_dir.parent / 'out'}",
    ]  # fmt: skip


def sweep_env(cluster: RayCluster) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return {**env, **cluster.variables, "RAY_USAGE_STATS_ENABLED": "0"}


def run_sweep(command: list[str], cluster: RayCluster) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=sweep_env(cluster), capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip


def job_runs(url: str) -> list:
    """Every job's parent run (no `stage` tag), oldest first."""
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("ray-cluster")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [run for run in runs if "stage" not in run.data.tags]


def all_runs(url: str) -> list:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("ray-cluster")
    return client.search_runs([experiment.experiment_id])


def test_a_sweep_runs_its_jobs_on_both_nodes_of_a_ray_cluster(
    tmp_path, ray_cluster, tracking_server
):
    done = run_sweep(ray_sweep(ray_cluster, tracking_server, tmp_path / "sweep"), ray_cluster)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert (
        f"Using address {ray_cluster.address} set in the environment variable RAY_ADDRESS" in output
    )
    assert "Started a local Ray instance" not in output
    jobs = job_runs(tracking_server)
    assert sorted(run.data.tags["seed"] for run in jobs) == ["0", "1", "2", "3"]
    assert all(run.info.status == "FINISHED" for run in all_runs(tracking_server))
    nodes = {"head_node": ray_cluster.node_id("head_node")}
    nodes["worker_node"] = ray_cluster.node_id("worker_node")
    placed = {run.data.tags["seed"]: run.data.tags["ray_node_id"] for run in jobs}
    print("job seed -> Ray node:", {s: n[:8] for s, n in sorted(placed.items())})
    assert set(placed.values()) == set(nodes.values()), "every node ran a job"
    hosts = {run.data.tags["host"] for run in jobs}
    assert len(hosts) == 1, "one host, two nodes: only ray_node_id tells them apart"


def wait_for_running_job(url: str, node_id: str, timeout_s: float = 240) -> None:
    """Until a job's scratch stage runs on the node `node_id` (bounded in time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            runs = all_runs(url)
        except Exception:  # the experiment does not exist yet
            runs = []
        if any(
            run.data.tags.get("ray_node_id") == node_id
            and run.data.tags.get("stage") == "scratch"
            and run.info.status == "RUNNING"
            for run in runs
        ):
            return
        time.sleep(1)
    pytest.fail(f"no job ran on node {node_id} within {timeout_s} s")


def test_a_worker_node_lost_mid_sweep_its_job_runs_again_on_the_other_node(
    tmp_path, ray_cluster, tracking_server
):
    """The worker node's raylet killed while it runs a job: Ray says which node died and runs
    the task again (its default retries) on the head node; the lost attempt's runs end FAILED
    (the orphan rule: its process is gone); the same command again skips all four jobs."""
    worker = ray_cluster.node_id("worker_node")
    long_jobs = ["train.epochs.scratch=30", "train.patience=100"]
    command = ray_sweep(ray_cluster, tracking_server, tmp_path / "sweep", *long_jobs)
    sweep = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=sweep_env(ray_cluster), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_running_job(tracking_server, worker)
        ray_cluster.raylet("worker_node").send_signal(signal.SIGKILL)
        stdout, stderr = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(timeout=30)
    output = stdout + stderr
    assert sweep.returncode == 0, output[-3000:]
    lost = [line for line in output.splitlines() if worker in line]
    assert any("node it was running on is dead" in line for line in lost), output[-3000:]
    runs = all_runs(tracking_server)
    assert [run for run in runs if run.info.status == "RUNNING"] == []
    jobs = job_runs(tracking_server)
    finished = sorted(run.data.tags["seed"] for run in jobs if run.info.status == "FINISHED")
    assert finished == ["0", "1", "2", "3"]
    (attempt,) = [run for run in jobs if run.info.status == "FAILED"]
    assert attempt.data.tags["ray_node_id"] == worker
    assert attempt.data.tags["error"].startswith("orphaned: process ")
    again = run_sweep(command, ray_cluster)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert ": 0 finished, 0 failed, 4 skipped" in again.stdout + again.stderr
    assert len(job_runs(tracking_server)) == len(jobs), "nothing ran again"
