"""A sweep of 32 `debug=smoke` jobs through a two-node Ray cluster against the same jobs run by
the basic launcher in one process: throughput, launcher overhead and tracking overhead.

Run from the project root with the project's virtual environment active (the `cluster` extra):

    python bench/launchers_ray.py                 # 1 run of each variant, 32 jobs each
    python bench/launchers_ray.py --repeats 3 --jobs 16

It starts what it measures and stops it after: an `mlflow server` on SQLite on 127.0.0.1 (a
tracking server, as a multi-host launcher needs) and the two-node cluster of `.ci/ray-cluster`
(one CPU a node). Every job is `seed=N debug=smoke stages=[scratch]` (scratch only: no backbone
to pretrain, so no job waits on another). Three variants run alternately, so that drifts in the
machine's load hit them alike, each a whole `python -m pipeline -m ...` command:

- basic: `hydra/launcher=basic`, the jobs one after another in the command's own process;
- basic, tracking off: the same with `tracking=off` (the tracking overhead's baseline);
- ray: `hydra/launcher=ray hydra.launcher.ray.init.address=auto`, one CPU a job, two nodes.

Figures, per variant (median over repeats): wall time of the command; jobs per minute; the jobs'
own run time (each job's parent run, end minus start, from MLflow); launcher overhead per job =
(wall x job slots - the jobs' summed run time) / jobs, job slots being 1 for basic and 2 for Ray
(the seconds of a slot not spent inside a job: start-up, scheduling, Ray's workers, result
collection); tracking overhead per job = (wall(basic) - wall(basic, tracking off)) / jobs.
Ratios against basic are printed and written, with the machine, CPU count, load, date, repeats
and versions, to bench/results/launchers_ray.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from pipeline.tracking import server as tracking_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = PROJECT_ROOT / ".ci" / "ray-cluster"
RESULTS = PROJECT_ROOT / "bench" / "results" / "launchers_ray.json"
BASIC, OFF, RAY = "basic", "basic, tracking off", "ray (2 nodes)"
SLOTS = {BASIC: 1, OFF: 1, RAY: 2}
SHORT = {BASIC: "basic", OFF: "off", RAY: "ray"}  # experiment and sweep folder names
RAY_ARGS = [
    "hydra/launcher=ray",
    "hydra.launcher.ray.init.address=auto",
    "+hydra.launcher.ray.init.object_store_memory=null",
    "+hydra.launcher.ray.remote.num_cpus=1",
]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on SQLite, 127.0.0.1, a free port; waits (90 s at most) until healthy."""
    try:
        return tracking_server.start_server(
            f"sqlite:///{folder / 'server.db'}", folder / "artifacts", timeout_s=90
        )
    except tracking_server.ServerDidNotStart as error:
        raise SystemExit(f"error: {error}") from None


def cluster(command: str, state: Path) -> str:
    env = {**os.environ, "TL_RAY_STATE": str(state)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run([str(CLUSTER_SCRIPT), command], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"error: .ci/ray-cluster {command} failed: {done.stderr[-500:]}")
    return done.stdout.strip().rpartition("RAY_ADDRESS=")[2]


def sweep(variant: str, jobs: int, url: str, experiment: str, work: Path, address: str) -> float:
    """One sweep command; its wall time in seconds."""
    seeds = ",".join(str(seed) for seed in range(jobs))
    args = ["-m", f"seed={seeds}", "debug=smoke", "stages=[scratch]", "sweep.skip_finished=false"]
    args += RAY_ARGS if variant == RAY else []
    args += ["tracking=off"] if variant == OFF else []
    args += [f"tracking.uri={url}", f"tracking.experiment_name={experiment}"]
    args += [f"hydra.sweep.dir={work / experiment}", f"hydra.run.dir={work / 'out'}"]
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env |= {"RAY_ADDRESS": address, "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"error: the {variant} sweep failed: {done.stderr[-1500:]}")
    return wall


def job_seconds(url: str, experiment: str) -> list[float]:
    """Each job's own run time: its parent run's end minus start, from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [run for run in runs if "stage" not in run.data.tags]
    assert all(run.info.status == "FINISHED" for run in parents), experiment
    return [(run.info.end_time - run.info.start_time) / 1000 for run in parents]


def measure(repeats: int, jobs: int, url: str, work: Path, address: str) -> dict[str, list]:
    """Per variant, per repeat: wall and the jobs' summed run time (None with tracking off)."""
    samples: dict[str, list] = {BASIC: [], OFF: [], RAY: []}
    for repeat in range(repeats):
        for variant in (BASIC, OFF, RAY):
            experiment = f"{SHORT[variant]}-{repeat}"
            wall = sweep(variant, jobs, url, experiment, work, address)
            own = None if variant == OFF else job_seconds(url, experiment)
            if own is not None and len(own) != jobs:
                raise SystemExit(f"error: {variant}: {len(own)} job runs, expected {jobs}")
            samples[variant].append({"wall_s": wall, "jobs_s": None if own is None else sum(own)})
            print(f"repeat {repeat}: {variant}: {wall:.1f} s", flush=True)
    return samples


def figures(samples: dict[str, list], jobs: int) -> dict[str, dict]:
    walls = {
        variant: statistics.median(s["wall_s"] for s in runs) for variant, runs in samples.items()
    }
    out = {}
    for variant, runs in samples.items():
        wall = walls[variant]
        row = {"wall_s": round(wall, 2), "jobs_per_minute": round(jobs / wall * 60, 2)}
        if variant != OFF:
            own = statistics.median(s["jobs_s"] for s in runs)
            row["job_run_s_mean"] = round(own / jobs, 3)
            row["launcher_overhead_per_job_s"] = round((wall * SLOTS[variant] - own) / jobs, 3)
        row["job_slots"] = SLOTS[variant]
        row["samples"] = runs
        out[variant] = row
    out[BASIC]["tracking_overhead_per_job_s"] = round((walls[BASIC] - walls[OFF]) / jobs, 3)
    return out


def report(results: dict[str, dict], jobs: int) -> dict[str, float]:
    basic, ray = results[BASIC], results[RAY]
    ratios = {
        "ray_vs_basic_jobs_per_minute": round(ray["jobs_per_minute"] / basic["jobs_per_minute"], 3),
        "ray_vs_basic_wall": round(ray["wall_s"] / basic["wall_s"], 3),
        "ray_minus_basic_launcher_overhead_per_job_s": round(
            ray["launcher_overhead_per_job_s"] - basic["launcher_overhead_per_job_s"], 3
        ),
    }
    for variant, row in results.items():
        extra = "".join(
            f", {key} {row[key]}"
            for key in ("launcher_overhead_per_job_s", "tracking_overhead_per_job_s")
            if key in row
        )
        print(f"{variant}: {row['wall_s']} s for {jobs} jobs, {row['jobs_per_minute']}/min{extra}")
    print(f"ray / basic: jobs per minute x{ratios['ray_vs_basic_jobs_per_minute']}, "
          f"wall x{ratios['ray_vs_basic_wall']}")  # fmt: skip
    return ratios


def versions() -> dict[str, str]:
    names = ("ray", "hydra-core", "hydra-ray-launcher", "mlflow", "tensorflow", "keras")
    return {"python": platform.python_version(), **{name: version(name) for name in names}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, choices=range(1, 11), metavar="1..10")
    parser.add_argument("--jobs", type=int, default=32, choices=range(2, 129), metavar="2..128")
    options = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as folder:
        work = Path(folder)
        state = Path(tempfile.mkdtemp(prefix="tl-ray-", dir="/tmp"))  # short: Ray's sockets
        server, url = start_server(work)
        try:
            address = cluster("start", state)
            samples = measure(options.repeats, options.jobs, url, work, address)
        finally:
            cluster("stop", state)
            tracking_server.stop_server(server)
    results = figures(samples, options.jobs)
    ratios = report(results, options.jobs)
    record = {
        "bench": "launchers_ray",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(load, 2) for load in load_before],
        "load_average_after": [round(load, 2) for load in os.getloadavg()],
        "repeats": options.repeats,
        "jobs": options.jobs,
        "job": "debug=smoke stages=[scratch], seeds 0..jobs-1, sweep.skip_finished=false",
        "store": "mlflow server on SQLite, 127.0.0.1",
        "ray_cluster": ".ci/ray-cluster: 2 nodes on this host, 1 CPU each",
        "versions": versions(),
        "results": results,
        "ratios": ratios,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {RESULTS.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
