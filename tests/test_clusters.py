"""Sweeps on real clusters: a single-host SLURM cluster (`.ci/slurm-cluster`) submitting every job
with `sbatch`, against an `mlflow server` over a throw-away PostgreSQL database (tests/clusters.py);
SLURM's signals (preemption, scancel, kill) and the server and database stopped mid-sweep."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from tests.clusters import PgTrackingServer, SlurmCluster, listening
from tests.test_launchers import assert_two_finished_jobs, needs_submitit, sweep_and_jobs

pytestmark = [pytest.mark.slow, needs_submitit]

JOB_S = 600  # a sweep command of this module ends within this long (2-3 smoke jobs, 2 CPUs)
SHORT = 2  # scratch epochs of a short job: done in seconds; a job with more is long
# ... of a long job, acted on (signalled, its store stopped) seconds into its scratch stage:
# 30-60 s of training at 0.15-0.3 s an epoch on 2 busy CPUs, and run in full again after.
LONG = 200


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
    """The jobs' parent runs: those nested under any sweep run of the experiment."""
    return sweep_and_jobs_any(url, experiment)[1]


def is_long(run) -> bool:
    return int(run.data.params.get("train.epochs.scratch", 0)) > SHORT  # params are text


def running_long_jobs(url: str, experiment: str) -> dict[str, str]:
    """{parent run id: its process id} of the long jobs whose scratch run is RUNNING."""
    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
    by_id = {r.info.run_id: r for r in runs}
    training = {
        r.data.tags.get("mlflow.parentRunId") for r in runs if r.data.tags.get("stage") == "scratch"
    }
    return {
        run_id: by_id[run_id].data.tags["pid"]
        for run_id in training
        if run_id in by_id and is_long(by_id[run_id])
    }


def long_job_runs(url: str, experiment: str) -> list:
    """The parent runs of the long jobs, oldest first."""
    found = [run for run in parents(url, experiment) if is_long(run)]
    return sorted(found, key=lambda run: run.info.start_time)


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
    """The SLURM job whose step runs process `pid`, as scancel takes it: `<array job>_<task>`
    (scontrol listpids gives the task's own job id, which scancel refuses for array tasks)."""
    listed = cluster.command("scontrol", "listpids").stdout.splitlines()[1:]
    raw = next((line.split()[1] for line in listed if line.split()[:1] == [pid]), None)
    if raw is None:
        pytest.fail(f"process {pid} is in no SLURM job: {listed}")
    queued = dict(
        line.split() for line in cluster.command("squeue", "-h", "-o", "%A %i").stdout.splitlines()
    )
    return queued.get(raw, raw)


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


KILL_9 = "kill -9"  # not scancel: the job's process killed without notice (OOM, a lost node)


def signal_long_jobs(
    cluster: SlurmCluster, url: str, experiment: str, count: int, *actions: list[str] | str
) -> dict[str, str]:
    """Once `count` long jobs train, `scancel <flags> <job>` for each (or KILL_9 its process);
    {parent run id: job}."""
    training = wait_until(
        lambda: (found := running_long_jobs(url, experiment)) and len(found) >= count and found,
        f"{count} long job(s) training",
    )
    time.sleep(3)  # well inside the scratch stage's epochs
    jobs = {}
    for (run_id, pid), action in zip(sorted(training.items()), actions, strict=False):
        jobs[run_id] = slurm_job_of(cluster, pid)
        if action == KILL_9:
            os.kill(int(pid), signal.SIGKILL)
            continue
        cancelled = cluster.command("scancel", *action, jobs[run_id])
        assert cancelled.returncode == 0, cancelled.stderr
    return jobs


def test_usr2_ends_a_jobs_runs_killed_and_the_requeued_job_finishes_the_work(
    tmp_path, pg_server: PgTrackingServer, slurm_cluster: SlurmCluster
):
    """What SLURM sends before a time limit (or a preemption with a grace time): submitit
    checkpoints Hydra's launcher and requeues the job; the pipeline ends the runs KILLED. SLURM
    holds a requeued job (Reason=BeginTime) for AuthInfo's cred_expire, 20 s on the test cluster
    (.ci/slurm-cluster; SLURM's default 120 s), then starts it again by itself: nothing here
    releases it."""
    sweep_dir = tmp_path / "sweep"
    epochs = f"train.epochs.scratch={SHORT},{LONG}"
    args = slurm_sweep(pg_server.uri, "usr2", sweep_dir, epochs)
    sweep = start(args)
    try:
        (job,) = signal_long_jobs(
            slurm_cluster, pg_server.uri, "usr2", 1, ["--signal=USR2"]
        ).values()
        _, stderr = sweep.communicate(timeout=JOB_S)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    first, again = long_job_runs(pg_server.uri, "usr2")
    assert (first.info.status, again.info.status) == ("KILLED", "FINISHED")
    assert first.data.tags["pid"] != again.data.tags["pid"]
    client = MlflowClient(pg_server.uri)
    stages = client.search_runs(
        [first.info.experiment_id], f"tags.mlflow.parentRunId = '{first.info.run_id}'"
    )
    assert [run.info.status for run in stages] == ["KILLED"]
    log = slurm_cluster.folder / "log" / "slurmctld.log"
    assert "Requeuing JobId=" in log.read_text() or "requeue" in log.read_text().lower()
    sweep_run, _ = sweep_and_jobs(pg_server.uri, "usr2")
    assert sweep_run.info.status == "FINISHED"
    wait_until(lambda: slurm_cluster.queue() == [], "squeue empty after the sweep", timeout=60)
    shown = slurm_cluster.command("scontrol", "show", "job", job).stdout  # the same job, run twice
    assert "JobState=COMPLETED" in shown and "Restarts=1" in shown, shown


def test_scancel_ends_runs_killed_unrequeued_and_kill_leaves_an_orphan_ended_failed_by_the_rerun(
    tmp_path, pg_server: PgTrackingServer, slurm_cluster: SlurmCluster
):
    """`scancel` (SIGTERM): the job's runs end KILLED, the job ends at once and SLURM does not
    requeue it. A job's process killed without notice (kill -9: an out-of-memory kill; Slurm's
    `scancel --signal=KILL` is a cancel, SIGTERM first): its runs stay RUNNING until another
    process's orphan sweep (here the sweep's, as it stops) ends them FAILED. Without accounting
    (no slurmdbd) submitit cannot tell a cancelled job from a running one, so the sweep command
    waits: stopped (SIGTERM), it exits 130 in one line.
    The same command again skips the finished job and runs the two others. (The long jobs come
    first: both start at once, on the node's two CPUs.)"""
    sweep_dir = tmp_path / "sweep"
    args = slurm_sweep(
        pg_server.uri,
        "scancel",
        sweep_dir,
        f"train.epochs.scratch={LONG},{LONG + 1},{SHORT}",
    )
    sweep = start(args)
    try:
        jobs = signal_long_jobs(slurm_cluster, pg_server.uri, "scancel", 2, [], KILL_9)
        (terminated, term_job), (killed, _) = sorted(jobs.items())
        client = MlflowClient(pg_server.uri)
        wait_until(lambda: client.get_run(terminated).info.status == "KILLED", "runs KILLED")
        wait_until(lambda: slurm_cluster.queue() == [], "the cancelled jobs gone, the short done")
        sweep.terminate()
        _, stderr = sweep.communicate(timeout=180)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted (signal SIGTERM)")
    orphan = client.get_run(killed)  # ended by the sweep's process: the job's process is gone
    assert orphan.info.status == "FAILED"
    assert orphan.data.tags["error"].startswith(f"orphaned: process {orphan.data.tags['pid']}")
    shown = slurm_cluster.command("scontrol", "show", "job", term_job).stdout
    assert "JobState=CANCELLED" in shown and "Restarts=0" in shown, shown

    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 finished, 0 failed, 1 skipped" in again.stdout  # the skip's line is in job 2's log
    runs = long_job_runs(pg_server.uri, "scancel")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED", "KILLED"]
    short = [r for r in parents(pg_server.uri, "scancel") if not is_long(r)]
    assert [r.info.status for r in short] == ["FINISHED"], "the finished job ran once"
    wait_until(lambda: slurm_cluster.queue() == [], "squeue empty after the sweep", timeout=60)


def sweep_and_jobs_any(url: str, experiment: str) -> tuple[list, list]:
    """The sweep runs and the jobs' parent runs nested under any of them, whatever their status."""
    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    ids = {r.info.run_id for r in sweeps}
    return sweeps, [r for r in runs if r.data.tags.get("mlflow.parentRunId") in ids]


SAYS_WHERE = ("tracking_uri", "generated")  # the report's lines that name the store and the time


def report_command(uri: str, experiment: str, sweep_dir: Path, out: Path) -> list[str]:
    """`python -m pipeline.report` over the sweep's runs read from `uri`."""
    return [
        sys.executable, "-m", "pipeline.report", f"tracking_uri={uri}",
        f"experiment_name={experiment}", f"sweep_id={sweep_dir}", f"out={out}",
        "log_to_mlflow=false",
    ]  # fmt: skip


def report_jsons(reports: dict[str, Path], experiment: str, sweep_dir: Path) -> list[dict]:
    """The reports over the sweep read from each of `reports` ({store URI: out folder}), made
    side by side, as JSON (less the lines that name the store and the time)."""
    made = [(start(report_command(uri, experiment, sweep_dir, o)), o) for uri, o in reports.items()]
    found = []
    try:
        for process, out in made:
            _, stderr = process.communicate(timeout=JOB_S)
            assert process.returncode == 0, stderr[-3000:]
            report = json.loads((out / "report.json").read_text())
            found.append({k: v for k, v in report.items() if k not in SAYS_WHERE})
    finally:
        for process, _ in made:  # the other one, when one failed
            process.kill()
    return found


def test_the_server_and_the_database_restarted_mid_sweep_lose_nothing_logged(
    tmp_path, pg_server: PgTrackingServer, slurm_cluster: SlurmCluster
):
    """While two SLURM jobs train, the database stopped for 3 s, then the server stopped and
    started again on its port: the jobs retry (tracking.http_retries) or end in one line, and
    the same command again finishes the sweep. The report over the finished sweep equals the
    report over the same runs read straight from PostgreSQL. (The database first: its outage
    takes seconds, so it falls inside the jobs' stage for sure; the server's restart, tens of
    seconds on a busy machine, begins while they still train.) The jobs' retry budget, 8
    retries (about 4 minutes of waits), outlasts a restart, which the fixture fails beyond 120 s:
    the default 2 retries (seconds) end both jobs in one line while the server is down."""
    sweep_dir = tmp_path / "sweep"
    overrides = f"train.epochs.scratch={LONG},{LONG + 1}", "tracking.http_retries=8"
    args = slurm_sweep(pg_server.uri, "restart", sweep_dir, *overrides)
    sweep = start(args)
    try:
        wait_until(
            lambda: len(running_long_jobs(pg_server.uri, "restart")) == 2, "2 long jobs training"
        )
        pg_server.stop_database()
        time.sleep(3)
        pg_server.start_database()
        pg_server.stop_server()  # down until it answers again: seconds at the least
        pg_server.start_server()
        _, stderr = sweep.communicate(timeout=JOB_S)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]  # a failed job is the sweep's NaN, not its end
    database = pg_server.database_uri  # read straight from PostgreSQL
    _, jobs = sweep_and_jobs_any(database, "restart")
    if any(r.info.status != "FINISHED" for r in jobs):
        # a job that lost the store beyond its retries ended in one line: run it again
        for job in submitted(sweep_dir):
            errors = (sweep_dir / ".submitit" / job / f"{job}_0_log.err").read_text()
            assert len([line for line in errors.splitlines() if line.startswith("error: ")]) <= 1
        again = run(args)
        assert again.returncode == 0, again.stderr[-3000:]
    client = MlflowClient(database)
    runs = client.search_runs([client.get_experiment_by_name("restart").experiment_id])
    everything = [(r.info.status, r.data.tags.get("stage"), r.data.tags.get("seed")) for r in runs]
    assert [r for r in runs if r.info.status == "RUNNING"] == [], everything
    finished = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("stage") is None]
    assert len(finished) == 2, everything
    reports = {pg_server.uri: tmp_path / "a", pg_server.database_uri: tmp_path / "b"}
    through_server, from_database = report_jsons(reports, "restart", sweep_dir)
    assert through_server == from_database
    assert slurm_cluster.queue() == []


def test_two_processes_ending_the_same_orphans_at_once_both_succeed(pg_server: PgTrackingServer):
    """Two jobs of a rerun sweep start together and both find the same orphans: each sets the
    `error` tag, and on PostgreSQL the second insert of that tag used to fail the job with a
    UniqueViolation on `tag_pk`. Both must end without error, every orphan FAILED once."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.tracking.query import StoreReader
    from pipeline.tracking.runs import mark_orphans

    client = MlflowClient(pg_server.uri)
    experiment_id = client.create_experiment(f"orphans-{time.monotonic_ns()}")
    ended = subprocess.Popen(["true"])
    ended.wait()  # its pid now names no process: the runs' owner died (kill -9)
    dead = {"host": socket.gethostname(), "pid": str(ended.pid)}
    orphans = [client.create_run(experiment_id, tags=dead).info.run_id for _ in range(24)]

    def sweep_start() -> list[str]:
        own = MlflowClient(pg_server.uri)
        return mark_orphans(own, StoreReader(own, [experiment_id]), orphan_after_s=60)

    with ThreadPoolExecutor(2) as pool:
        found = [future.result() for future in [pool.submit(sweep_start) for _ in range(2)]]
    assert set(found[0]) | set(found[1]) == set(orphans)
    for run_id in orphans:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["error"].startswith("orphaned: process ")


def test_the_database_and_its_tracking_server_listen_on_the_loopback_only(
    pg_server: PgTrackingServer,
):
    """PostgreSQL (`listen_addresses=127.0.0.1`, its Unix socket in the cluster's folder) and the
    `mlflow server` in front of it (`--host 127.0.0.1`, with its uvicorn workers): every socket
    they listen on is on the loopback. Without `listen_addresses` PostgreSQL listens on
    localhost's every address; without `--host`, uvicorn on what MLflow's default says."""
    postmaster = int((pg_server.folder / "data" / "postmaster.pid").read_text().split()[0])
    database = {postmaster, *(c.pid for c in psutil.Process(postmaster).children(recursive=True))}
    server = psutil.Process(pg_server.server.pid)
    front = {server.pid, *(c.pid for c in server.children(recursive=True))}
    found = {pid: listening(pid) for pid in database | front}
    assert listening(postmaster), "PostgreSQL listens on TCP (127.0.0.1)"
    assert any(found[pid] for pid in front), "the mlflow server listens"
    beyond = {
        pid: addresses
        for pid, addresses in found.items()
        if not all(ipaddress.ip_address(a).is_loopback for a in addresses)
    }
    assert beyond == {}, f"listening beyond the loopback: {beyond}"
    assert (pg_server.folder / f".s.PGSQL.{pg_server.pg_port}").is_socket()
