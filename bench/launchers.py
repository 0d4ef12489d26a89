"""Launchers: jobs per minute, launcher overhead and tracking overhead per job, side by side.

Run from the project root with the project's virtual environment active, as root (the SLURM
cluster's daemons; .ci/install-packages installs SLURM, munge and PostgreSQL; Ray is in the
`cluster` extra):

    python bench/launchers.py                          # 32 jobs: basic/off/joblib/slurm/ray
    python bench/launchers.py --jobs 8 --repeats 2 --launchers basic,joblib

Every daemon it starts listens on the loopback or a Unix socket. Ray's daemons listen on 0.0.0.0
unless they run in a network namespace whose only interface is `lo`, so the Ray cluster, a second
`mlflow server` in front of the same PostgreSQL database (reached through its Unix socket) and the
Ray sweeps run in one (`unshare --net`, as tests/test_ray_cluster.py does); SLURM cannot run
there (with `lo` alone glibc resolves no IPv4 name under AI_ADDRCONFIG) and stays on the host's
loopback. Where the machine refuses a namespace, Ray runs on the host's network, and the JSON
says so. SIGTERM or Ctrl-C stops the sweep in progress (its process group) and every daemon.

One sweep per launcher and repeat: `python -m pipeline -m seed=range(0,N) debug=smoke
stages=[scratch]` (N seconds-long jobs that need no pretrained backbone), every job logging to an
`mlflow server` over a throw-away PostgreSQL database (tests/clusters.py), each sweep in an
experiment of its own (so `sweep.skip_finished` skips nothing). The variants run alternately
(basic, off, joblib, slurm, basic, ...) so that drifts in the machine's load hit them alike:

- basic: Hydra's basic launcher, every job in the command's own process: the baseline;
- off: the same with tracking=off: the tracking overhead is (basic - off) / jobs;
- joblib: `hydra/launcher=joblib hydra.launcher.n_jobs=<CPUs>`, worker processes on this host;
- submitit_slurm: every job an sbatch array task on a single-host SLURM cluster
  (.ci/slurm-cluster, started here unless SLURM_CONF names one), one CPU each;
- ray: `hydra/launcher=ray hydra.launcher.ray.init.address=auto` on the two-node cluster of
  `.ci/ray-cluster` (two `ray start` processes on this host, one CPU each), started here, its
  jobs logging to the namespace's server (the same database).

Figures per variant (medians over the repeats): wall time of the sweep command; jobs per minute;
the jobs' own run time (sum of their parent runs' end - start, from MLflow); launcher overhead per
job = (wall x slots - sum of run times) / jobs, the time a slot spent outside a job's run (process
start, imports, scheduling, results), where slots is how many jobs run at once (1 for basic);
each against basic's as a ratio. Written to bench/results/launchers.json with the machine, CPU
count, load, date, repeats and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from pipeline.tracking import server as tracking_server  # noqa: E402
from tests.clusters import PG_BIN, PG_USER, PgTrackingServer  # noqa: E402  (the tests' own server)
from tests.netns import HEALTHY, Namespace, open_namespace  # noqa: E402

RESULTS = PROJECT_ROOT / "bench" / "results" / "launchers.json"
SWEEP_TIMEOUT_S = 3600  # one sweep command, whatever the launcher
RAY_CLUSTER = PROJECT_ROOT / ".ci" / "ray-cluster"

# name -> (overrides, slots): how each launcher is asked for, and how many jobs it runs at once.
Launcher = Callable[[argparse.Namespace], tuple[list[str], int]]
LAUNCHERS: dict[str, Launcher] = {
    "basic": lambda args: ([], 1),
    "off": lambda args: (["tracking=off"], 1),
    "joblib": lambda args: (
        ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={os.cpu_count()}"],
        os.cpu_count() or 1,
    ),
    "submitit_slurm": lambda args: (
        [
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=60",
        ],
        os.cpu_count() or 1,
    ),
    # Two nodes of one CPU each, one CPU a job (.ci/ray-cluster; the tests' own overrides).
    "ray": lambda args: (
        [
            "hydra/launcher=ray",
            "hydra.launcher.ray.init.address=auto",
            "+hydra.launcher.ray.init.object_store_memory=null",
            "+hydra.launcher.ray.remote.num_cpus=1",
        ],
        2,
    ),
    # Another launcher plugs in here: its overrides and how many jobs run at once.
}


@dataclass
class Place:
    """Where a launcher's sweeps run: a command prefix (nsenter into a namespace, or none), what
    its cluster asks of the environment (Ray's address and token), the tracking server's URI."""

    uri: str = ""
    prefix: list[str] = dc_field(default_factory=list)
    env: dict[str, str] = dc_field(default_factory=dict)
    network: str = "host (loopback)"


PLACES: dict[str, Place] = {}  # launcher -> its place; the host's server by default


def sweep_seconds(name: str, args: argparse.Namespace, experiment: str) -> float:
    """Run one sweep of `args.jobs` smoke jobs through launcher `name`; its wall time."""
    overrides, _ = LAUNCHERS[name](args)
    place = PLACES.get(name, PLACES["host"])
    uri = place.uri
    folder = Path(tempfile.mkdtemp(prefix="bench-launchers-"))
    command = [
        *place.prefix, sys.executable, "-m", "pipeline", "-m", f"seed=range(0,{args.jobs})",
        "debug=smoke",
        "stages=[scratch]", f"tracking.uri={uri}", f"tracking.experiment_name={experiment}",
        f"hydra.sweep.dir={folder / 'sweep'}", *overrides,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env |= place.env
    started = time.perf_counter()
    with (folder / "stderr.log").open("w") as log:
        returncode = run_in_group(command, env, log)
    seconds = time.perf_counter() - started
    if returncode != 0:
        sys.exit(f"{name}: the sweep failed ({returncode}); log in {folder}/stderr.log")
    shutil.rmtree(folder, ignore_errors=True)
    return seconds


def run_in_group(command: list[str], env: dict[str, str], log) -> int:
    """`command` in a process group of its own, its output to `log`; the whole group killed if
    this process is stopped (SIGTERM, Ctrl-C) or the sweep runs past SWEEP_TIMEOUT_S."""
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        return process.wait(timeout=SWEEP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def run_seconds(uri: str, experiment: str) -> float:
    """The sum of the experiment's job runs' own time (parent runs: end - start), from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=10_000)
    jobs = [r for r in runs if r.data.tags.get("stage") is None and r.info.end_time]
    return sum(r.info.end_time - r.info.start_time for r in jobs) / 1000


def measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every variant `args.repeats` times, alternately; per variant its measurements."""
    measured: dict[str, list[dict]] = {name: [] for name in args.launchers}
    for repeat in range(args.repeats):
        for name in args.launchers:
            experiment = f"bench-{name}-{repeat}-{int(time.time())}"
            wall = sweep_seconds(name, args, experiment)
            runs = run_seconds(PLACES["host"].uri, experiment) if name != "off" else None
            measured[name].append({"wall_s": wall, "runs_s": runs})
            print(f"{name:>15} repeat {repeat}: {wall:7.1f} s", flush=True)
    return measured


def figures(args: argparse.Namespace, measured: dict[str, list[dict]]) -> dict[str, dict]:
    """Medians, per-job figures and ratios against basic."""
    out: dict[str, dict] = {}
    for name, rows in measured.items():
        wall = statistics.median(row["wall_s"] for row in rows)
        slots = LAUNCHERS[name](args)[1]
        entry = {"wall_s": wall, "jobs_per_min": args.jobs / wall * 60, "slots": slots,
                 "wall_s_all": [row["wall_s"] for row in rows]}  # fmt: skip
        if rows[0]["runs_s"] is not None:
            runs = statistics.median(row["runs_s"] for row in rows)
            entry["runs_s"] = runs
            entry["launcher_overhead_s_per_job"] = (wall * slots - runs) / args.jobs
        out[name] = entry
    basic = out.get("basic")
    if basic:
        for entry in out.values():
            entry["jobs_per_min_vs_basic"] = entry["jobs_per_min"] / basic["jobs_per_min"]
        if "off" in out:
            tracking = (basic["wall_s"] - out["off"]["wall_s"]) / args.jobs
            basic["tracking_overhead_s_per_job"] = tracking
    return out


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("mlflow", "hydra-core", "submitit", "hydra-submitit-launcher", "joblib",
                    "psycopg2-binary", "tensorflow", "ray"):  # fmt: skip
        try:
            found[package] = version(package)
        except Exception:
            found[package] = "not installed"
    for tool in (["sbatch", "--version"], [str(PG_BIN / "postgres"), "-V"]):
        try:
            found[Path(tool[0]).name] = subprocess.run(
                tool, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except OSError:
            found[Path(tool[0]).name] = "not installed"
    return found


def start_slurm(stack: list[Callable[[], None]]) -> None:
    """A single-host SLURM cluster for the sweeps, unless SLURM_CONF names one already."""
    if os.environ.get("SLURM_CONF"):
        return
    folder = tempfile.mkdtemp(prefix="tl-slurm-")
    script = str(PROJECT_ROOT / ".ci" / "slurm-cluster")
    stack.append(lambda: subprocess.run([script, "down", folder], timeout=120))  # a half-up one too
    subprocess.run([script, "up", folder], check=True, timeout=300)
    os.environ["SLURM_CONF"] = f"{folder}/slurm.conf"


def start_ray(stack: list[Callable[[], None]], server: PgTrackingServer) -> None:
    """The two-node cluster of .ci/ray-cluster and an `mlflow server` over the same database
    (its Unix socket), both in a namespace with only `lo` where the machine allows one."""
    namespace = open_namespace()
    stack.append(namespace.close)
    if namespace.refused:
        print(f"{namespace.refused}: Ray on the host's network", flush=True)
    place = Place(prefix=namespace.prefix, network=namespace.refused or "namespace, lo only")
    state = tempfile.mkdtemp(prefix="tl-ray-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "TL_RAY_STATE": state}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # this venv's `ray`
    cluster = [*place.prefix, str(RAY_CLUSTER)]
    stack.append(lambda: subprocess.run([*cluster, "stop"], env=env, timeout=300, check=False))
    started = subprocess.run([*cluster, "start"], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    if started.returncode != 0:
        sys.exit(f"error: .ci/ray-cluster start failed: {started.stderr.strip()[-500:]}")
    place.env = dict(line.split("=", 1) for line in started.stdout.split())
    place.env["RAY_USAGE_STATS_ENABLED"] = "0"
    place.uri = serve_in(namespace, stack, server)
    PLACES["ray"] = place


def serve_in(namespace: Namespace, stack: list[Callable[[], None]], pg: PgTrackingServer) -> str:
    """An `mlflow server` in `namespace` on 127.0.0.1, over `pg`'s database through its Unix
    socket; its URL once /health answers there (bounded: 180 s)."""
    port = tracking_server.free_port()
    database = f"postgresql+psycopg2://mlflow@/mlflow?host={pg.folder}&port={pg.pg_port}"
    command = [
        *namespace.prefix, sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--backend-store-uri", database,
        "--artifacts-destination", str(pg.folder / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, tracking_server.JOB_EXECUTION: "false"}
    with (pg.folder / "namespace-server.log").open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=log, start_new_session=True, cwd=pg.folder
        )
    stack.append(lambda: tracking_server.stop_server(process))
    url = f"http://127.0.0.1:{port}"
    healthy = subprocess.run([*namespace.prefix, sys.executable, "-c", HEALTHY, url], timeout=200)
    if healthy.returncode != 0:
        sys.exit(f"error: the namespace's mlflow server did not answer (log: {log.name})")
    return url


def stop_on_signals() -> None:
    """SIGTERM ends like Ctrl-C: the `finally` that stops the daemons runs."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))


def start_server(stack: list[Callable[[], None]]) -> PgTrackingServer:
    """The tests' PostgreSQL-backed `mlflow server` on the host's loopback."""
    folder = Path(tempfile.mkdtemp(prefix="tl-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, PG_USER, PG_USER)
    server = PgTrackingServer(folder)
    stack.append(lambda: (server.close(), shutil.rmtree(folder, ignore_errors=True)))
    server.init_database()
    server.start_server()
    PLACES["host"] = Place(uri=server.uri)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--launchers", default="basic,off,joblib,submitit_slurm,ray")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.launchers = args.launchers.split(",")
    unknown = [name for name in args.launchers if name not in LAUNCHERS]
    if unknown:
        parser.error(f"--launchers: {unknown} unknown; allowed: {sorted(LAUNCHERS)}")
    stop_on_signals()
    stack: list[Callable[[], None]] = []
    load = os.getloadavg()
    started = datetime.now(timezone.utc)
    try:
        if "submitit_slurm" in args.launchers:
            start_slurm(stack)
        server = start_server(stack)
        if "ray" in args.launchers:
            start_ray(stack, server)
        measured = measure(args)
    finally:
        for stop in reversed(stack):
            stop()
    result = {
        "bench": "launchers", "date": started.isoformat(timespec="seconds"),
        "machine": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "load_average_at_start": load, "load_average_at_end": os.getloadavg(),
        "network": {name: PLACES.get(name, PLACES["host"]).network for name in args.launchers},
        "jobs": args.jobs, "repeats": args.repeats,
        "command": " ".join(sys.argv), "versions": versions(),
        "figures": figures(args, measured), "measurements": measured,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, entry in result["figures"].items():
        overhead = entry.get("launcher_overhead_s_per_job")
        ratio = entry.get("jobs_per_min_vs_basic")
        print(
            f"{name:>15}: {entry['jobs_per_min']:6.1f} jobs/min"
            + (f" ({ratio:.2f}x basic)" if ratio is not None else "")
            + (f", launcher overhead {overhead:.1f} s/job" if overhead is not None else "")
        )
    tracking = result["figures"].get("basic", {}).get("tracking_overhead_s_per_job")
    if tracking is not None:
        print(f"tracking overhead (basic vs off): {tracking:.2f} s/job")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
