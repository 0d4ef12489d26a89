"""Sweeps: the same sweep command again runs only what is missing; a sweep is one run in MLflow."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict

from pipeline import PROJECT_ROOT
from pipeline.cli.preflight import check_composition
from pipeline.config import BACKBONE_WEIGHTS_FILE
from pipeline.provenance import config_hash, variant_hash
from pipeline.sweeps.job import SWEEP_RUN_FILE
from pipeline.sweeps.resume import finished_objective
from pipeline.tracking import open_tracker
from pipeline.tracking.query import ExperimentRun, RunRecord
from pipeline.tracking.store import prepare_store
from tests.conftest import CONF_DIR, compose_config, run_cli

EXPERIMENTS = ["transfer-lab", "transfer-lab-backbones"]


class RecordReturns(Callback):
    """Hydra callback (added with +hydra.callbacks...): every job's return value, a JSON line each,
    as a sweeper gets it."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        line = {"job": int(config.hydra.job.num), "value": float(job_return.return_value)}
        with self.path.open("a") as out:
            out.write(json.dumps(line) + "\n")


def resolved(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose_config(overrides), resolve=True, enum_to_str=True)


def test_sweep_keys_change_neither_config_hash_nor_variant_hash():
    base, other = resolved([]), resolved(["sweep.skip_finished=false"])
    assert base["sweep"] != other["sweep"]
    assert config_hash(base) == config_hash(other)
    assert variant_hash(base) == variant_hash(other)
    assert config_hash(resolved(["seed=1"])) != config_hash(base)


def test_a_wrong_sweep_value_is_one_line_naming_it():
    problem = check_composition(["-m", "seed=0,1", "sweep.skip_finished=maybe"])
    assert problem == "sweep.skip_finished: Value 'maybe' is not a valid bool (type str)"
    assert check_composition(["-m", "sweep.skip=1"]).startswith("sweep.skip is not a config key")


@pytest.fixture
def in_sweep_job(tmp_path):
    """Hydra's own state as in job 0 of a multirun (what a job reads of its sweep), then none."""

    def enter(overrides: list[str]) -> None:
        sweep = [*overrides, "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=sweep, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)

    yield enter
    HydraConfig.instance().cfg = None


def test_a_sweep_job_skips_on_a_finished_run_of_its_config_and_returns_its_objective(
    fresh_store_uri, in_sweep_job, capsys
):
    overrides = ["debug=smoke", f"tracking.uri={fresh_store_uri}"]
    job = compose_config(overrides)
    assert finished_objective(job) is None  # a single run always runs: the store is not read
    assert not Path(fresh_store_uri.removeprefix("sqlite:///")).exists()
    digest = config_hash(OmegaConf.to_container(job, resolve=True, enum_to_str=True))
    with open_tracker(OmegaConf.to_object(job).tracking) as tracker:
        with pytest.raises(RuntimeError), tracker.experiment_run("failed", {"config_hash": digest}):
            tracker.log_metrics({"objective": 0.9})
            raise RuntimeError("a failed run of the same config does not count")
        with tracker.experiment_run("done", {"config_hash": digest}) as finished:
            tracker.log_metrics({"objective": 0.75})

    in_sweep_job(overrides)
    assert finished_objective(job) == 0.75
    line = f"skipped job 0: config_hash {digest} already FINISHED as run {finished} "
    assert capsys.readouterr().out == f"{line}(sweep.skip_finished=false runs it again)\n"
    assert finished_objective(compose_config([*overrides, "sweep.skip_finished=false"])) is None
    assert finished_objective(compose_config([*overrides, "seed=1"])) is None  # another config


def test_a_run_logged_before_the_objective_was_gives_its_last_stage_best_val_accuracy():
    def record(tags: dict, metrics: dict) -> RunRecord:
        return RunRecord("id", "1", "run", "FINISHED", 0, 1, tags, {}, metrics)

    old = ExperimentRun(record({"config_hash": "abc"}, {"fine_tune_test_accuracy": 0.5}))
    assert old.objective is None  # no stage read
    old.stages["feature_extraction"] = record({"stage": "x"}, {"best_val_accuracy": 0.6})
    old.stages["scratch"] = record({"stage": "scratch"}, {"best_val_accuracy": 0.4})
    assert old.objective == 0.6
    assert ExperimentRun(record({}, {"objective": 0.7})).objective == 0.7


def test_with_tracking_off_a_sweep_makes_no_run_skips_nothing_and_never_imports_mlflow(tmp_path):
    script = f"""
import sys
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from pipeline.config import register_configs
from pipeline.sweeps.resume import finished_objective
from pipeline.sweeps.callbacks import PrepareStoreBeforeSweep, SweepRun
from pipeline.sweeps.job import sweep_run_id
register_configs()
overrides = ["tracking=off", "hydra.mode=MULTIRUN", "hydra.sweep.dir={tmp_path / "sweep"}"]
with initialize_config_dir(config_dir="{CONF_DIR}", version_base="1.3"):
    cfg = compose("config", overrides=overrides, return_hydra_config=True)
    job = compose("config", overrides=["tracking=off"])
with open_dict(cfg):
    cfg.hydra.job.num = 0
HydraConfig.instance().set_config(cfg)
callbacks = [PrepareStoreBeforeSweep(), SweepRun()]
for callback in callbacks:
    callback.on_multirun_start(cfg)
assert finished_objective(job) is None and sweep_run_id(job.tracking) is None
for callback in callbacks:
    callback.on_multirun_end(cfg)
print(sorted(m for m in ("mlflow", "tensorflow") if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    assert not (tmp_path / "sweep" / SWEEP_RUN_FILE).exists()


def plant_broken_backbone(store_uri: str, overrides: list[str], folder: Path) -> str:
    """A FINISHED pretraining run whose weights file is garbage, for the recipe of `overrides`:
    the job that reuses it fails at training time, until the run is deleted."""
    from pipeline.pretrain import recipe_of  # Keras: only this test needs it

    cfg = OmegaConf.to_object(compose_config(overrides))
    shape = (cfg.dataset.image_size, cfg.dataset.image_size, cfg.dataset.channels)
    recipe = recipe_of(cfg.backbone, shape)
    client = prepare_store(store_uri, EXPERIMENTS)
    backbones = client.get_experiment_by_name(EXPERIMENTS[1]).experiment_id
    tags = {"stage": "pretrain", "recipe_hash": recipe["hash"]}
    run_id = client.create_run(backbones, run_name="corrupted", tags=tags).info.run_id
    garbage = folder / BACKBONE_WEIGHTS_FILE
    garbage.write_bytes(b"not an HDF5 file")
    client.log_artifact(run_id, str(garbage))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def start_sweep(args: list[str], output: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with output.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill_when_running(process: subprocess.Popen, client: MlflowClient, seed: str) -> None:
    """SIGKILL the sweep as soon as the job of `seed` has opened its run: nobody ends that run."""
    query = f"tags.seed = '{seed}' and attributes.status = 'RUNNING'"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        experiment = client.get_experiment_by_name(EXPERIMENTS[0])
        if experiment is not None and client.search_runs([experiment.experiment_id], query):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return
        time.sleep(0.1)
    raise AssertionError(f"the job of seed {seed} never ran (exit {process.poll()})")


def all_runs(client: MlflowClient) -> list:
    ids = [client.get_experiment_by_name(name).experiment_id for name in EXPERIMENTS]
    return client.search_runs(ids, order_by=["attributes.start_time ASC"])


def experiment_runs(client: MlflowClient) -> list:
    """Parent runs of invocations (tagged with a config hash, no stage), oldest first."""
    tags = [(run, run.data.tags) for run in all_runs(client)]
    return [run for run, tag in tags if "config_hash" in tag and "stage" not in tag]


def sweep_runs(client: MlflowClient) -> list:
    return [run for run in all_runs(client) if run.data.tags.get("stage") == "sweep"]


def returns(path: Path) -> dict[int, float]:
    return {row["job"]: row["value"] for row in map(json.loads, path.read_text().splitlines())}


SWEEP = [
    "seed=0,1,2,3",
    "debug=smoke",
    "stages=[feature_extraction]",
    "backbone.source.seed=${seed}",  # a pretrained backbone per seed: one can be corrupted
]


def sweep_command(store_uri: str, tmp_path: Path, returns_file: str) -> list[str]:
    """The same command twice but for where the test records what the jobs returned."""
    return [
        "-m",
        *SWEEP,
        f"tracking.uri={store_uri}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}/${{now:%H-%M-%S-%f}}",  # as the default's
        "+hydra.callbacks.returns._target_=tests.test_sweeps.RecordReturns",
        f"+hydra.callbacks.returns.path={tmp_path / returns_file}",
    ]


@pytest.mark.slow
def test_a_sweep_run_again_runs_only_its_failed_and_killed_jobs(tmp_path, store_uri, client):
    """Seeds 0-3: seed 1 reuses a corrupted pretrained backbone and fails; the sweep is killed
    (SIGKILL) during seed 3. Once the corrupted run is deleted, the same command again runs
    seeds 1 and 3 and skips 0 and 2, one line each; every job returns its objective; the sweep
    is a run, its jobs nested under it; nothing is left RUNNING."""
    corrupted = plant_broken_backbone(store_uri, ["debug=smoke", "seed=1", SWEEP[3]], tmp_path)
    first = start_sweep(sweep_command(store_uri, tmp_path, "1.jsonl"), tmp_path / "1.out")
    kill_when_running(first, client, "3")
    before = {run.data.tags["seed"]: run for run in experiment_runs(client)}
    statuses = {seed: run.info.status for seed, run in before.items()}
    log = (tmp_path / "1.out").read_text()[-3000:]
    assert statuses == {"0": "FINISHED", "1": "FAILED", "2": "FINISHED", "3": "RUNNING"}, log
    assert "OSError" in before["1"].data.tags["error"]
    client.delete_run(corrupted)  # the user removes the corrupted backbone

    done = run_cli(sweep_command(store_uri, tmp_path, "2.jsonl"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = [line for line in done.stdout.splitlines() if line.startswith("skipped")]
    assert skipped == [
        f"skipped job {job}: config_hash {before[seed].data.tags['config_hash']} already "
        f"FINISHED as run {before[seed].info.run_id} (sweep.skip_finished=false runs it again)"
        for job, seed in ((0, "0"), (2, "2"))
    ]

    runs = all_runs(client)
    assert [run for run in runs if run.info.status == "RUNNING"] == []
    parents = experiment_runs(client)
    assert len(parents) == 6  # seeds 1 and 3 ran again, 0 and 2 did not
    finished = {r.data.tags["config_hash"]: r for r in parents if r.info.status == "FINISHED"}
    assert sorted(r.data.tags["seed"] for r in finished.values()) == ["0", "1", "2", "3"]
    assert before["3"].data.tags["pid"] == str(first.pid)
    killed = client.get_run(before["3"].info.run_id)
    assert killed.data.tags["error"] == f"orphaned: process {first.pid} died"

    objectives = {int(r.data.tags["seed"]): r.data.metrics["objective"] for r in finished.values()}
    assert returns(tmp_path / "2.jsonl") == objectives  # job number = seed here
    first_returns = returns(tmp_path / "1.jsonl")
    assert math.isnan(first_returns.pop(1)) and 3 not in first_returns
    assert first_returns == {0: objectives[0], 2: objectives[2]}

    old_sweep, new_sweep = sweep_runs(client)
    assert old_sweep.info.status == "FAILED"  # killed with its process: the orphan sweep
    assert new_sweep.info.status == "FINISHED"
    for run in before.values():  # first-command jobs stay where they were, skipped ones too
        assert run.data.tags["mlflow.parentRunId"] == old_sweep.info.run_id
    again = [r for r in parents if r.info.run_id not in {b.info.run_id for b in before.values()}]
    assert {r.data.tags["seed"] for r in again} == {"1", "3"}
    assert {r.data.tags["mlflow.parentRunId"] for r in again} == {new_sweep.info.run_id}
    tags, metrics = new_sweep.data.tags, new_sweep.data.metrics
    assert int(tags["heartbeat"]) >= new_sweep.info.start_time // 1000, "the sweep run beats"
    assert {r.data.tags["sweep_id"] for r in again} == {tags["sweep_id"]}
    assert (Path(tags["sweep_dir"]) / "multirun.yaml").is_file()
    assert new_sweep.data.params["seed"] == "0,1,2,3"
    assert new_sweep.data.params["stages"] == "[feature_extraction]"
    assert metrics["jobs_finished"] == 2 and metrics["jobs_failed"] == 0
    assert metrics["jobs_skipped"] == 2
    assert tags["skipped_job.0"] == before["0"].info.run_id
    assert tags["skipped_job.2"] == before["2"].info.run_id
    assert metrics["best_objective"] == max(objectives.values())
    best = {r.info.run_id: r for r in finished.values()}[tags["best_run_id"]]  # ties: any of them
    assert best.data.metrics["objective"] == metrics["best_objective"]
    assert tags["best_job"] == best.data.tags["seed"]
