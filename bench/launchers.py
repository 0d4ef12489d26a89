"""Launchers: jobs per minute, launcher overhead and tracking overhead per job, side by side.

Run from the project root with the project's virtual environment active, as root (the SLURM
cluster's daemons; .ci/install-packages installs SLURM, munge and PostgreSQL):

    python bench/launchers.py                          # 32 jobs, basic/off/joblib/submitit_slurm
    python bench/launchers.py --jobs 8 --repeats 2 --launchers basic,joblib
    python bench/launchers.py --ray-address 127.0.0.1:6379   # adds `ray` on a running cluster

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
- ray (with --ray-address): `hydra/launcher=ray hydra.launcher.ray.init.address=<address>`.

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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from tests.clusters import PG_BIN, PG_USER, PgTrackingServer  # noqa: E402  (the tests' own server)

RESULTS = PROJECT_ROOT / "bench" / "results" / "launchers.json"
SWEEP_TIMEOUT_S = 3600  # one sweep command, whatever the launcher

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
    # Another launcher plugs in here: its overrides and how many jobs run at once.
    "ray": lambda args: (
        ["hydra/launcher=ray", f"hydra.launcher.ray.init.address={args.ray_address}"],
        args.ray_slots or os.cpu_count() or 1,
    ),
}


def sweep_seconds(name: str, args: argparse.Namespace, uri: str, experiment: str) -> float:
    """Run one sweep of `args.jobs` smoke jobs through launcher `name`; its wall time."""
    overrides, _ = LAUNCHERS[name](args)
    folder = Path(tempfile.mkdtemp(prefix="bench-launchers-"))
    command = [
        sys.executable, "-m", "pipeline", "-m", f"seed=range(0,{args.jobs})", "debug=smoke",
        "stages=[scratch]", f"tracking.uri={uri}", f"tracking.experiment_name={experiment}",
        f"hydra.sweep.dir={folder / 'sweep'}", *overrides,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
        timeout=SWEEP_TIMEOUT_S,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    (folder / "stderr.log").write_text(done.stderr)
    if done.returncode != 0:
        sys.exit(f"{name}: the sweep failed ({done.returncode}); log in {folder}/stderr.log")
    shutil.rmtree(folder, ignore_errors=True)
    return seconds


def run_seconds(uri: str, experiment: str) -> float:
    """The sum of the experiment's job runs' own time (parent runs: end - start), from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=10_000)
    jobs = [r for r in runs if r.data.tags.get("stage") is None and r.info.end_time]
    return sum(r.info.end_time - r.info.start_time for r in jobs) / 1000


def measure(args: argparse.Namespace, uri: str) -> dict[str, list[dict]]:
    """Every variant `args.repeats` times, alternately; per variant its measurements."""
    measured: dict[str, list[dict]] = {name: [] for name in args.launchers}
    for repeat in range(args.repeats):
        for name in args.launchers:
            experiment = f"bench-{name}-{repeat}-{int(time.time())}"
            wall = sweep_seconds(name, args, uri, experiment)
            runs = run_seconds(uri, experiment) if name != "off" else None
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
    subprocess.run([script, "up", folder], check=True, timeout=120)
    os.environ["SLURM_CONF"] = f"{folder}/slurm.conf"
    stack.append(lambda: subprocess.run([script, "down", folder], timeout=120))


def start_server(stack: list[Callable[[], None]]) -> str:
    """The tests' PostgreSQL-backed `mlflow server`; its URI."""
    folder = Path(tempfile.mkdtemp(prefix="tl-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, PG_USER, PG_USER)
    server = PgTrackingServer(folder)
    stack.append(lambda: (server.close(), shutil.rmtree(folder, ignore_errors=True)))
    server.init_database()
    server.start_server()
    return server.uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--launchers", default="basic,off,joblib,submitit_slurm")
    parser.add_argument("--ray-address", help="a running Ray cluster's address: adds `ray`")
    parser.add_argument("--ray-slots", type=int, help="jobs Ray runs at once (default: CPUs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.launchers = args.launchers.split(",") + (["ray"] if args.ray_address else [])
    unknown = [name for name in args.launchers if name not in LAUNCHERS]
    if unknown:
        parser.error(f"--launchers: {unknown} unknown; allowed: {sorted(LAUNCHERS)}")
    stack: list[Callable[[], None]] = []
    load = os.getloadavg()
    started = datetime.now(timezone.utc)
    try:
        if "submitit_slurm" in args.launchers:
            start_slurm(stack)
        uri = start_server(stack)
        measured = measure(args, uri)
    finally:
        for stop in reversed(stack):
            stop()
    result = {
        "bench": "launchers", "date": started.isoformat(timespec="seconds"),
        "machine": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "load_average_at_start": load, "jobs": args.jobs, "repeats": args.repeats,
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
