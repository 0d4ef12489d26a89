"""Sweeps through Hydra's cluster launchers (the `cluster` extra): a store every host can reach,
real submitit jobs against a real `mlflow server`."""

from __future__ import annotations

import os
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli.preflight import check_composition
from pipeline.sweeps import stop as sweep_stop
from pipeline.tracking.heartbeat import HEARTBEAT_TAG, Heartbeat
from pipeline.tracking.query import StoreReader
from pipeline.tracking.runs import mark_orphans
from pipeline.tracking.store import prepare_store
from tests.conftest import run_cli
from tests.test_server import kill_server, start_server

SQLITE_REFUSED = "cannot share the SQLite store"

# .ci/run installs the extras, so in CI these never skip.
needs_submitit = pytest.mark.skipif(
    find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install -e '.[cluster]')",
)
needs_optuna = pytest.mark.skipif(
    find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')",
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


@pytest.fixture(scope="module")
def server(tmp_path_factory, migrated_store):
    """One real `mlflow server` on a free 127.0.0.1 port for this module's sweeps."""
    process, url = start_server(tmp_path_factory.mktemp("server"), migrated_store)
    yield url
    kill_server(process)


def smoke_sweep(launcher: list[str], url: str, experiment: str, sweep: Path) -> list[str]:
    """Two seconds-long jobs (seeds 0 and 1, scratch only: no backbone to pretrain)."""
    return [
        "-m", *launcher, "seed=0,1", "debug=smoke", "stages=[scratch]",
        f"tracking.uri={url}", f"tracking.experiment_name={experiment}",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip


def sweep_and_jobs(url: str, experiment: str) -> tuple[object, list]:
    """The sweep's run and its jobs' parent runs, read back through MLflow."""
    client = MlflowClient(url)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    (sweep,) = [run for run in runs if run.data.tags.get("stage") == "sweep"]
    parents = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert [run for run in runs if run.info.status == "RUNNING"] == []
    return sweep, sorted(parents, key=lambda run: run.data.tags["seed"])


def assert_two_finished_jobs(sweep, parents, sweep_dir: Path) -> None:
    assert sweep.info.status == "FINISHED"
    assert sweep.data.tags["sweep_id"] == str(sweep_dir)
    assert sweep.data.metrics["jobs_finished"] == 2 and sweep.data.metrics["jobs_failed"] == 0
    assert [run.data.tags["seed"] for run in parents] == ["0", "1"]
    assert all(run.info.status == "FINISHED" for run in parents)
    assert all(run.data.tags["sweep_id"] == str(sweep_dir) for run in parents)
    assert all(HEARTBEAT_TAG in run.data.tags for run in [sweep, *parents])
    pids = {run.data.tags["pid"] for run in parents}  # each job in a process of its own
    assert len(pids) == 2 and str(os.getpid()) not in pids


@needs_submitit
@pytest.mark.slow
def test_submitit_local_runs_a_sweep_as_submitit_jobs_against_a_tracking_server(tmp_path, server):
    sweep_dir = tmp_path / "sweep"
    args = smoke_sweep(["hydra/launcher=submitit_local"], server, "submitit", sweep_dir)
    done = run_cli(args, tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [path for path in (sweep_dir / ".submitit").iterdir() if path.name.isdigit()]
    assert len(jobs) == 2, "two submitit jobs, each with its own folder"
    assert all(list(job.glob("*_result.pkl")) for job in jobs)
    sweep, parents = sweep_and_jobs(server, "submitit")
    assert_two_finished_jobs(sweep, parents, sweep_dir)


@needs_optuna
@pytest.mark.slow
def test_optuna_sweeper_maximizes_the_objective_that_jobs_return(tmp_path, server):
    """Two trials (of the learning rate of a scratch-only smoke run, to stay cheap): each trial
    is a sweep job nested under the sweep run; Optuna's best value is the best job's objective."""
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=0",
        "lr.scratch=tag(log,interval(0.001,0.1))", "stages=[scratch]", "debug=smoke",
        f"tracking.uri={server}", "tracking.experiment_name=optuna", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    done = run_cli(args, tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep, trials = sweep_and_jobs(server, "optuna")
    assert len(trials) == 2 and all(run.info.status == "FINISHED" for run in trials)
    rates = {float(run.data.params["lr.scratch"]) for run in trials}
    assert len(rates) == 2 and all(0.001 <= rate <= 0.1 for rate in rates)
    results = (sweep_dir / "optimization_results.yaml").read_text()
    best = max(run.data.metrics["objective"] for run in trials)
    assert f"best_value: {best}" in results
    assert sweep.data.metrics["jobs_finished"] == 2


def test_a_job_on_another_host_runs_as_a_plain_job_without_the_sweeps_stop_folder(
    tmp_path, monkeypatch
):
    """submitit_slurm exports the sweep's environment to jobs on other hosts, where the stop
    folder (in the submitting host's /tmp) does not exist: the job runs, it is no worker."""
    monkeypatch.setenv(sweep_stop.STATE, str(tmp_path / "transfer-lab-sweep-1-elsewhere"))
    with sweep_stop.job_slot():
        assert not sweep_stop.in_worker()
    assert not (tmp_path / "transfer-lab-sweep-1-elsewhere").exists()


def test_only_a_descendant_of_the_sweeps_process_is_its_worker(tmp_path, monkeypatch):
    """A SLURM job on the sweep's host sees the stop folder too, but descends from slurmd, not
    from the sweep's process: it runs as a plain job (no one would end it after an interrupt)."""
    import subprocess
    import sys

    check = "from pipeline.sweeps import stop as sweep_stop; print(sweep_stop.in_worker())"
    mine = tmp_path / f"transfer-lab-sweep-{os.getpid()}-x"  # this test's process as the sweep
    mine.mkdir()
    monkeypatch.setenv(sweep_stop.STATE, str(mine))
    child = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert child.stdout.strip() == "True", child.stderr
    assert not sweep_stop.in_worker()  # the sweep's process itself
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        stranger = tmp_path / f"transfer-lab-sweep-{other.pid}-y"  # a sweep that is no ancestor
        stranger.mkdir()
        monkeypatch.setenv(sweep_stop.STATE, str(stranger))
        assert not sweep_stop.in_worker()
        other.kill()


def test_runs_of_a_silent_process_on_another_host_end_failed_at_the_next_orphan_sweep(store_uri):
    """A cluster job killed by its scheduler: its process on another host cannot be asked, but
    its heartbeat stops. Runs of a process whose newest heartbeat is older than orphan_after_s
    end FAILED; a process still beating, or one that never beat, is left alone."""
    client = prepare_store(store_uri, ["transfer-lab"])
    experiment = client.get_experiment_by_name("transfer-lab").experiment_id
    now = int(time.time())

    def running(host: str, pid: str, beat: int | None = None) -> str:
        tags = {"host": host, "pid": pid} | ({HEARTBEAT_TAG: str(beat)} if beat else {})
        return client.create_run(experiment, tags=tags).info.run_id

    killed = [running("node-7", "4242", now - 700), running("node-7", "4242")]  # parent, stage
    alive = [running("node-8", "4242", now - 30), running("node-8", "4242")]
    never_beat = running("node-9", "17")
    marked = mark_orphans(client, StoreReader(client, [experiment]), orphan_after_s=600)
    assert sorted(marked) == sorted(killed)
    for run_id in killed:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["error"].startswith("orphaned: process 4242 on node-7 silent since")
    assert {client.get_run(r).info.status for r in [*alive, never_beat]} == {"RUNNING"}


def test_a_heartbeat_tags_its_run_until_its_block_ends(store_uri):
    client = prepare_store(store_uri, ["transfer-lab"])
    experiment = client.get_experiment_by_name("transfer-lab").experiment_id
    run_id = client.create_run(experiment).info.run_id
    with Heartbeat(client, run_id, interval_s=0.05) as heartbeat:
        assert client.get_run(run_id).data.tags[HEARTBEAT_TAG].isdigit()  # at once
        client.set_tag(run_id, HEARTBEAT_TAG, "0")
        time.sleep(0.5)
        assert client.get_run(run_id).data.tags[HEARTBEAT_TAG] != "0"  # again
    heartbeat.thread.join(timeout=5)
    assert not heartbeat.thread.is_alive()


def test_orphan_after_s_below_three_heartbeats_is_one_line():
    problem = check_composition(["tracking.orphan_after_s=60"])
    assert problem is not None and problem.startswith(
        "tracking.orphan_after_s=60.0 is out of range"
    )


@needs_submitit
@needs_optuna
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0 is out"),
        (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=0"], "timeout_min=0 is"),
        (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=-1"], "timeout_min=-1 "),
        (["hydra/sweeper=optuna", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is"),
        (["hydra/sweeper=optuna", "hydra.sweeper.n_trials=-1"], "hydra.sweeper.n_trials=-1 "),
        (["hydra/sweeper=optuna", "lr.fine_tune=interval(0.1, 0.001)"], "low end above"),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=abc"], "n_jobs: Value 'abc'"),
        (["hydra/sweeper=optuna", "hydra.sweeper.n_trials=abc"], "n_trials: Value 'abc'"),
    ],
)
def test_launcher_and_sweeper_values_are_one_line_before_the_sweep(args, message):
    """Each failed at the first job: a traceback, exit 1, a FAILED sweep run (issue 26)."""
    problem = check_composition(["-m", "seed=0,1", *args])
    assert problem is not None and message in problem and "\n" not in problem
    assert "allowed" in problem or "could not be converted to Integer" in problem


def test_a_bad_launcher_value_exits_2_and_logs_no_sweep_run(tmp_path, store_uri):
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "debug=smoke", f"tracking.uri={store_uri}", "hydra/launcher=joblib"]
    for value in ("0", "abc"):
        done = run_cli([*args, f"hydra.launcher.n_jobs={value}", f"hydra.sweep.dir={sweep}"],
                       tmp_path, timeout=120)  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: hydra.launcher.n_jobs"), lines
    study = MlflowClient(store_uri).get_experiment_by_name("transfer-lab")
    assert study is None or MlflowClient(store_uri).search_runs([study.experiment_id]) == []
    assert not sweep.exists()


@needs_ray
def test_a_ray_node_lost_under_a_job_is_one_line_naming_it():
    """The line the sweep ends with (tests/test_ray_cluster.py loses a real node); the wrap of
    the Ray launcher's `launch` is made once."""
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
    from ray.exceptions import NodeDiedError

    from pipeline.sweeps.ray_nodes import lost_node_line, report_lost_nodes

    node = "4e998e27" * 7
    said = f"Task failed: the node is dead. Node IP: 127.0.0.1, node ID: {node}\nmore detail"
    line = lost_node_line(NodeDiedError(said))
    assert "\n" not in line
    assert line.startswith(f"error: Ray node {node} (?) was lost while it ran a job")
    assert "(NodeDiedError: Task failed: the node is dead); the sweep run ends FAILED" in line
    assert "the same command again runs only the jobs that did not finish" in line
    report_lost_nodes()
    wrapped = RayLauncher.launch
    report_lost_nodes()
    assert RayLauncher.launch is wrapped and wrapped.reports_lost_nodes
