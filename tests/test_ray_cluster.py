"""A real two-node Ray cluster on this host (`.ci/ray-cluster`: `ray start --head` and `ray start
--address=...` as separate processes, 1 CPU and a resource of its own each) running sweeps
through `hydra/launcher=ray hydra.launcher.ray.init.address=auto` against a real `mlflow server`.
The cluster, the server and the sweeps run in a network namespace whose only interface is `lo`
(tests/netns.py; on the host's network where the machine refuses one); the tests read the
server's SQLite file. The commands are docs/scaling-out-ray.md's. One cluster serves the module's
tests, in order: the last one loses the worker node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from tests.conftest import run_cli
from tests.netns import Namespace, TrackingServer, on_loopback, open_namespace, serve_tracking
from tests.test_launchers import assert_two_finished_jobs, smoke_sweep, sweep_and_jobs
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
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:  # a zombie has ended, not yet reaped
            return " ".join(process.cmdline()[:2])[:200]
    except psutil.Error:
        pass
    return f"{pid} (ended meanwhile)"


@dataclass
class RayCluster:
    variables: dict[str, str]  # what `start` prints: RAY_ADDRESS, RAY_AUTH_MODE, ..._TOKEN_PATH
    state: Path  # the cluster's temp folder (sessions, logs, sockets)
    namespace: Namespace
    before: set[int]  # Ray processes on the host before the cluster started (a parallel test's)

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

    def processes(self) -> dict[int, str]:
        """This cluster's processes by pid, with their names: those naming its folder (daemons,
        services), and their children (workers, agents)."""
        found = {}
        for process in psutil.process_iter(["name", "cmdline"]):
            if any(str(self.state) in arg for arg in process.info["cmdline"] or []):
                found[process.pid] = process.info["name"]
                with suppress(psutil.Error):  # ended meanwhile
                    children = process.children(recursive=True)
                    found.update({child.pid: child.name() for child in children})
        return found

    def node_id(self, resource: str) -> str:
        args = self.raylet(resource).cmdline()
        return next(arg.split("=", 1)[1] for arg in args if arg.startswith("--node_id="))


def cluster_script(command: str, state: Path, namespace: Namespace) -> subprocess.CompletedProcess:
    env = {**os.environ, "TL_RAY_STATE": str(state)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # this venv's `ray`
    return subprocess.run(
        [*namespace.prefix, str(CLUSTER_SCRIPT), command], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def test_ray_runs_a_sweep_on_a_local_ray_instance_against_a_tracking_server(
    tmp_path, migrated_store, monkeypatch
):
    """`ray.init` starts a local instance bound to 127.0.0.1 (no dashboard) and ends it. On Linux
    Ray rewrites 127.0.0.1 to the host's routable address and listens on 0.0.0.0, unless told
    it is a single-node instance (docs/scaling-out-ray.md: Loopback only). In this file, not
    beside the other launchers: Ray tests on two xdist workers at once count each other's
    processes as left behind."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    sweep_dir = tmp_path / "sweep"
    ray = [
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.init.num_cpus=2",
    ]
    process, server = start_server(tmp_path / "server", migrated_store)
    try:
        done = run_cli(smoke_sweep(ray, server, "ray", sweep_dir), tmp_path, timeout=360)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Started a local Ray instance" in done.stderr
        sweep, parents = sweep_and_jobs(server, "ray")
        assert_two_finished_jobs(sweep, parents, sweep_dir)
    finally:
        kill_server(process)


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    """A network namespace with only `lo`, for the module's daemons and sweeps."""
    made = open_namespace()
    yield made
    made.close()


@pytest.fixture(scope="module")
def ray_cluster(namespace: Namespace) -> Iterator[RayCluster]:
    """Two nodes started by `.ci/ray-cluster start`, stopped by `.ci/ray-cluster stop`; no Ray
    process of theirs is left (checked). A short folder: Ray's socket paths must stay short."""
    before = ray_processes()
    state = Path(tempfile.mkdtemp(prefix="tl-ray-", dir="/tmp"))
    started = cluster_script("start", state, namespace)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        variables = dict(line.split("=", 1) for line in started.stdout.split())
        assert variables["RAY_ADDRESS"].startswith("127.0.0.1:")
        assert variables["RAY_AUTH_MODE"] == "token"
        assert Path(variables["RAY_AUTH_TOKEN_PATH"]).parent == state
        yield RayCluster(variables, state, namespace, before)
    finally:
        stopped = cluster_script("stop", state, namespace)
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        deadline = time.monotonic() + 30  # a lost node's workers end on their own, soon
        while ray_processes() - before and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [described(pid) for pid in ray_processes() - before]
        assert left == [], f"Ray processes left behind: {left}"
        assert not state.exists()


@pytest.fixture(scope="module")
def tracking_server(
    tmp_path_factory, migrated_store: Path, namespace: Namespace
) -> Iterator[TrackingServer]:
    """The module's tracking server, in its namespace; the tests read its SQLite file."""
    with serve_tracking(tmp_path_factory.mktemp("ray-server"), migrated_store, namespace) as server:
        yield server


def ray_sweep(server: TrackingServer, sweep_dir: Path, experiment: str, *extra: str) -> list[str]:
    """Seconds-long jobs (scratch only), one CPU each: with one CPU a node, Ray runs one job on
    each node at a time."""
    return [
        sys.executable, "-m", "pipeline", "-m", "hydra/launcher=ray",
        "hydra.launcher.ray.init.address=auto",
        "+hydra.launcher.ray.init.object_store_memory=null",  # the launcher's default: refused
        "+hydra.launcher.ray.remote.num_cpus=1",
        "debug=smoke", "stages=[scratch]", *extra,
        f"tracking.uri={server.url}", f"tracking.experiment_name={experiment}",
        f"hydra.sweep.dir={sweep_dir}", f"hydra.run.dir={sweep_dir.parent / 'out'}",
    ]  # fmt: skip


def sweep_env(cluster: RayCluster) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return {**env, **cluster.variables, "RAY_USAGE_STATS_ENABLED": "0"}


def run_sweep(command: list[str], cluster: RayCluster) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cluster.namespace.prefix, *command], cwd=PROJECT_ROOT, env=sweep_env(cluster),
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip


def all_runs(server: TrackingServer, experiment: str) -> list:
    """The experiment's runs, read from the server's SQLite file; none before it exists."""
    client = MlflowClient(server.store)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def job_runs(server: TrackingServer, experiment: str) -> list:
    """Every job's parent run (no `stage` tag), oldest first."""
    return [run for run in all_runs(server, experiment) if "stage" not in run.data.tags]


def test_a_sweep_runs_its_jobs_on_both_nodes_of_a_ray_cluster(
    tmp_path, ray_cluster, tracking_server
):
    command = ray_sweep(tracking_server, tmp_path / "sweep", "both-nodes", "seed=0,1")
    done = run_sweep(command, ray_cluster)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert (
        f"Using address {ray_cluster.address} set in the environment variable RAY_ADDRESS" in output
    )
    assert "Started a local Ray instance" not in output
    jobs = job_runs(tracking_server, "both-nodes")
    assert sorted(run.data.tags["seed"] for run in jobs) == ["0", "1"]
    assert all(run.info.status == "FINISHED" for run in all_runs(tracking_server, "both-nodes"))
    nodes = {"head_node": ray_cluster.node_id("head_node")}
    nodes["worker_node"] = ray_cluster.node_id("worker_node")
    placed = {run.data.tags["seed"]: run.data.tags["ray_node_id"] for run in jobs}
    print("job seed -> Ray node:", {s: n[:8] for s, n in sorted(placed.items())})
    assert set(placed.values()) == set(nodes.values()), "every node ran a job"
    hosts = {run.data.tags["host"] for run in jobs}
    assert len(hosts) == 1, "one host, two nodes: only ray_node_id tells them apart"


def test_the_cluster_and_its_server_listen_on_the_loopback_only(ray_cluster, tracking_server):
    """Every process of the cluster (daemons, agents, Python services, the workers the sweep
    before left) and the tracking server run in the namespace, whose only interface is `lo`, and
    every socket a process there listens on is on the loopback."""
    namespace = ray_cluster.namespace
    if namespace.refused:
        pytest.skip(namespace.refused)
    server = psutil.Process(tracking_server.process.pid)
    cluster = ray_cluster.processes()
    started = [*cluster, server.pid, *(child.pid for child in server.children(recursive=True))]
    outside = [described(pid) for pid in started if not namespace.holds(pid)]
    # A worker that ends between the listing and the look has no namespace left to read.
    assert [about for about in outside if not about.endswith("(ended meanwhile)")] == []
    inside = [pid for pid in psutil.pids() if namespace.holds(pid)]
    seen = namespace.listening(inside)
    assert seen["interfaces"] == ["lo"]
    listening = {int(pid): addresses for pid, addresses in seen["listening"].items()}
    daemons = [pid for pid, name in cluster.items() if name in RAY_DAEMONS]
    assert len(daemons) == 3 and all(listening.get(pid) for pid in daemons), listening
    assert listening.get(server.pid) or any(listening.get(c.pid) for c in server.children())
    beyond = {
        described(pid): addresses
        for pid, addresses in listening.items()
        if not all(on_loopback(address, seen["interfaces"]) for address in addresses)
    }
    assert beyond == {}


WORKER_JOB_WAIT_S = 480


def wait_for_worker_job(server: TrackingServer, experiment: str, node_id: str) -> None:
    """Until the node `node_id` has finished a job and runs the scratch stage of its next one
    (bounded in time: a loaded CI machine took over 240 s once): that one is lost, and one job is
    done already."""
    deadline = time.monotonic() + WORKER_JOB_WAIT_S
    while time.monotonic() < deadline:
        runs = [
            r for r in all_runs(server, experiment) if r.data.tags.get("ray_node_id") == node_id
        ]
        jobs = [run for run in runs if "stage" not in run.data.tags]
        scratch = [run for run in runs if run.data.tags.get("stage") == "scratch"]
        if any(run.info.status == "FINISHED" for run in jobs) and any(
            run.info.status == "RUNNING" for run in scratch
        ):
            return
        time.sleep(0.5)
    pytest.fail(f"node {node_id} did not finish a job and start another in {WORKER_JOB_WAIT_S} s")


def test_a_worker_node_lost_mid_sweep_ends_the_sweep_in_one_line_and_the_rerun_finishes_it(
    tmp_path, ray_cluster, tracking_server
):
    """The worker node's raylet killed while it runs a job, with Ray's retries off: the sweep
    ends in one line naming the node (exit 1); the same command again ends the lost attempt's
    runs FAILED (the orphan rule: its process is gone) and runs only the jobs that did not
    finish, on the head node. Last in the module: the worker node stays lost."""
    worker = ray_cluster.node_id("worker_node")
    long_jobs = ["seed=0,1,2,3", "train.epochs.scratch=20", "train.patience=100"]
    no_retries = "+hydra.launcher.ray.remote.max_retries=0"
    command = ray_sweep(tracking_server, tmp_path / "sweep", "lost-node", *long_jobs, no_retries)
    sweep = subprocess.Popen(
        [*ray_cluster.namespace.prefix, *command], cwd=PROJECT_ROOT, env=sweep_env(ray_cluster),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_worker_job(tracking_server, "lost-node", worker)
        ray_cluster.raylet("worker_node").send_signal(signal.SIGKILL)
        stdout, stderr = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(timeout=30)
    output = stdout + stderr
    assert sweep.returncode == 1, output[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert f"Ray node {worker}" in errors[0] and "lost while it ran a job" in errors[0]
    print("the lost sweep's error line:", errors[0])
    jobs = job_runs(tracking_server, "lost-node")
    done_before = sorted(run.data.tags["seed"] for run in jobs if run.info.status == "FINISHED")
    assert 1 <= len(done_before) < 4, [(r.data.tags["seed"], r.info.status) for r in jobs]
    # The lost job's runs, and those of a job the driver's end stopped on the head node.
    stopped = {run.info.run_id for run in all_runs(tracking_server, "lost-node")}
    stopped -= {
        run.info.run_id
        for run in all_runs(tracking_server, "lost-node")
        if run.info.status == "FINISHED" or run.data.tags.get("stage") == "sweep"
    }
    again = run_sweep(command, ray_cluster)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    rerun = 4 - len(done_before)
    assert f": {rerun} finished, 0 failed, {len(done_before)} skipped" in output, output[-3000:]
    runs = all_runs(tracking_server, "lost-node")
    assert [run for run in runs if run.info.status == "RUNNING"] == []
    jobs = job_runs(tracking_server, "lost-node")
    finished = sorted(run.data.tags["seed"] for run in jobs if run.info.status == "FINISHED")
    assert finished == ["0", "1", "2", "3"], "each job finished once: none ran twice"
    ended = {run.info.run_id: run for run in runs if run.info.run_id in stopped}
    assert any(run.data.tags.get("ray_node_id") == worker for run in ended.values())
    assert all(
        run.info.status == "FAILED" and run.data.tags["error"].startswith("orphaned: process ")
        for run in ended.values()
    ), [(run.info.status, run.data.tags.get("error")) for run in ended.values()]
