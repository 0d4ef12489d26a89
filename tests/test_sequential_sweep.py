"""hydra/sweeper=sequential: seeds in batches until the comparisons are settled, through the basic
and joblib launchers, real `debug=smoke` jobs in a real store; resume after kill -9; its options
refused in one line before anything runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.cli.preflight import check_composition
from pipeline.report import sequential
from pipeline.sweeps import sequential_options
from pipeline.sweeps.sequential.study import VariantStudy, verdict_record
from pipeline.sweeps.sequential_options import SequentialOptions
from tests.conftest import run_cli, run_cli_watching_imports

SWEEPER = "hydra/sweeper=sequential"
COMPARISONS = ["feature_extraction-scratch", "fine_tune-scratch", "fine_tune-feature_extraction"]
# Settled at the first look, at 3 seeds, whatever smoke jobs give: alpha 0.4 makes the interval
# finite from 3 seeds on, and a margin of 0.9 holds any interval of a few seeds' accuracy gaps.
SETTLE_AT_3 = [
    "hydra.sweeper.min_seeds=3",
    "hydra.sweeper.batch_size=3",
    "hydra.sweeper.max_seeds=6",
    "hydra.sweeper.alpha=0.4",
    "hydra.sweeper.margin=0.9",
]
# Never settled: with alpha 0.01 the interval is infinite up to 4 seeds (q <= r in sequential.py).
OPEN_UP_TO_4 = [
    "hydra.sweeper.min_seeds=3",
    "hydra.sweeper.batch_size=1",
    "hydra.sweeper.max_seeds=4",
    "hydra.sweeper.alpha=0.01",
    "hydra.sweeper.margin=0",
]


def test_the_options_defaults_are_the_statistics_defaults_and_the_yamls():
    assert sequential_options.MIN_SEEDS == sequential.MIN_SEEDS
    assert [f"{a}-{b}" for a, b in sequential.DEFAULT_COMPARISONS] == COMPARISONS
    assert SequentialOptions().comparisons == COMPARISONS
    written = yaml.safe_load((PROJECT_ROOT / "conf/hydra/sweeper/sequential.yaml").read_text())
    assert written == {**SequentialOptions().__dict__, "_target_": SequentialOptions._target_}


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["hydra.sweeper.max_seeds=3"], "hydra.sweeper.max_seeds=3 but it must be >= min_seeds=5"),
        (["hydra.sweeper.alpha=0.7"], "hydra.sweeper.alpha=0.7 but it must lie in (0, 0.5)"),
        (["hydra.sweeper.batch_size=0"], "hydra.sweeper.batch_size=0 but it must be >= 1"),
        (["hydra.sweeper.comparisons=[fine_tune-pretrain]"], "'fine_tune-pretrain' is not a pair"),
        (["seed=0,1"], "seed=0,1: hydra/sweeper=sequential chooses the seeds itself"),
        (["tracking=off"], "tracking=off has none"),
        (["stages=[scratch,feature_extraction]"], "fine_tune-scratch needs stage fine_tune"),
        (["hydra.sweeper.max_seeds=many"], "hydra.sweeper.max_seeds: Value 'many' of type 'str'"),
        (["freeze=top1,top9"], "freeze=top9 is not an option"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(args, problem):
    found = check_composition(["-m", SWEEPER, *args])
    assert found is not None and problem in found, found


def test_good_options_pass_and_other_sweepers_are_not_checked():
    assert check_composition(["-m", SWEEPER, "freeze=top1,top2", *SETTLE_AT_3]) is None
    assert check_composition(["-m", "seed=0,1", "hydra.sweeper.max_batch_size=1"]) is None


def test_a_refused_sweep_exits_2_in_one_line_before_anything_loads_or_logs(tmp_path):
    db = tmp_path / "mlflow.db"
    args = ["-m", SWEEPER, f"tracking.uri=sqlite:///{db}", "hydra.sweeper.alpha=0.5"]
    done = run_cli_watching_imports([*args, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert done.stdout.split()[-3:] == ["2", "False", "False"]
    assert done.stderr.strip().splitlines() == [
        "error: hydra.sweeper.alpha=0.5 but it must lie in (0, 0.5)"
    ]
    assert not db.exists() and not (tmp_path / "sweep").exists()


def test_hydra_finds_the_sweeper_among_its_plugins():
    script = (
        "from pipeline.sweeps.sequential_options import expose_plugin\n"
        "expose_plugin()\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "print([f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Sweeper)])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert SequentialOptions._target_ in done.stdout, done.stderr


# --- real sweeps ---------------------------------------------------------------------------


def sweep_runs(client: MlflowClient) -> list:
    """The sweep runs of the store, oldest first."""
    experiment = client.get_experiment_by_name("transfer-lab").experiment_id
    return client.search_runs(
        [experiment], "tags.stage = 'sweep'", order_by=["attributes.start_time ASC"]
    )


def finished_seeds(client: MlflowClient) -> dict[str, list[int]]:
    """variant_hash -> seeds of the FINISHED experiment runs."""
    experiment = client.get_experiment_by_name("transfer-lab").experiment_id
    runs = client.search_runs([experiment], "attributes.status = 'FINISHED'")
    out: dict[str, list[int]] = {}
    for run in runs:
        tags = run.data.tags
        if "config_hash" in tags and "stage" not in tags:
            out.setdefault(tags["variant_hash"], []).append(int(tags["seed"]))
    return {key: sorted(seeds) for key, seeds in out.items()}


def assert_verdicts(run, variants: int, seeds: int, settled: bool) -> None:
    """The sweep run's verdict tags and metrics (the names replicate and the docs rely on)."""
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["sequential"] == "true"
    assert tags["verdicts_settled"] == str(settled).lower()
    for i in range(variants):
        assert metrics[f"seeds.{i}"] == seeds
        for name in COMPARISONS:
            kind = tags[f"verdict.{i}.{name}"]
            assert (kind != "open") == settled, (name, kind)
            if settled:
                low, high = metrics[f"verdict.{i}.{name}.low"], metrics[f"verdict.{i}.{name}.high"]
                assert low <= metrics[f"verdict.{i}.{name}.mean"] <= high
            else:  # no finite interval yet: no bounds logged
                assert f"verdict.{i}.{name}.low" not in metrics
    assert f"variant.{variants}" not in tags


@pytest.mark.slow
def test_a_sweep_stops_each_variant_when_settled_and_again_runs_nothing(tmp_path, store_uri):
    args = ["-m", SWEEPER, "debug=smoke", f"tracking.uri={store_uri}", "freeze=top1,top2"]
    first = run_cli([*args, *SETTLE_AT_3, f"hydra.sweep.dir={tmp_path / 'a'}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(store_uri)
    (run,) = sweep_runs(client)
    assert run.data.tags["variant.0"].endswith("freeze=top1")
    assert run.data.tags["variant.1"].endswith("freeze=top2")
    assert_verdicts(run, variants=2, seeds=3, settled=True)
    assert run.data.metrics["jobs_finished"] == 6  # 3 of max_seeds=6 per variant
    assert sorted(finished_seeds(client).values()) == [[0, 1, 2], [0, 1, 2]]
    output = first.stdout + first.stderr
    assert "look 1: variant 1 (" in output and "3 seeds, settled: feature_extraction" in output

    again = run_cli([*args, *SETTLE_AT_3, f"hydra.sweep.dir={tmp_path / 'b'}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    second = sweep_runs(client)[1]
    assert second.data.metrics["jobs_finished"] == 0  # the store already settles both
    assert_verdicts(second, variants=2, seeds=3, settled=True)


def wait_for_finished_runs(client: MlflowClient, count: int, process, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        ready = client.get_experiment_by_name("transfer-lab") is not None
        if ready and sum(len(s) for s in finished_seeds(client).values()) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"no {count} finished runs (sweep exited {process.poll()})")


@pytest.mark.slow
def test_after_kill_9_the_same_sweep_counts_the_finished_seeds_and_stops_at_max_seeds(
    tmp_path, store_uri
):
    args = ["-m", SWEEPER, "debug=smoke", f"tracking.uri={store_uri}", *OPEN_UP_TO_4]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "pipeline", *args, f"hydra.sweep.dir={tmp_path / 'a'}"]
    log = (tmp_path / "first.log").open("w")
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
    client = MlflowClient(store_uri)
    try:
        wait_for_finished_runs(client, 1, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    before = finished_seeds(client)
    (seeds,) = before.values()
    assert 1 <= len(seeds) < 4

    done = run_cli([*args, f"hydra.sweep.dir={tmp_path / 'b'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    second = sweep_runs(client)[-1]
    assert second.data.metrics["jobs_finished"] == 4 - len(seeds)  # only the missing seeds ran
    assert list(finished_seeds(client).values()) == [[0, 1, 2, 3]]  # no seed ran twice
    assert_verdicts(second, variants=1, seeds=4, settled=False)  # open at max_seeds


@pytest.mark.slow
def test_the_joblib_launcher_runs_the_batches_in_its_workers(tmp_path, store_uri):
    args = ["-m", SWEEPER, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=smoke"]
    done = run_cli(
        [*args, f"tracking.uri={store_uri}", *SETTLE_AT_3, f"hydra.sweep.dir={tmp_path}/a"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store_uri)
    (run,) = sweep_runs(client)
    assert_verdicts(run, variants=1, seeds=3, settled=True)
    assert run.data.metrics["jobs_finished"] == 3
    assert list(finished_seeds(client).values()) == [[0, 1, 2]]


def variant_study(seeds: int) -> VariantStudy:
    from pipeline.config import TrackingConfig

    hashes = {seed: f"hash{seed}" for seed in range(seeds)}
    return VariantStudy(0, ["freeze=top1"], TrackingConfig(), "variant", hashes)


def test_a_variant_decides_from_its_planned_seeds_only_and_names_its_verdicts():
    study = variant_study(seeds=8)
    gains = [0.10, 0.12, 0.11, 0.09, 0.13, 0.10, 0.12]  # seeds 0-6; "hash9" is not planned
    finished = {
        f"hash{seed}": {"scratch": 0.5, "feature_extraction": 0.5 + gain, "fine_tune": 0.5 + gain}
        for seed, gain in [*enumerate(gains), (9, -0.9)]
    }
    del finished["hash3"]  # seed 3 never finished: it is the next to run
    options = SequentialOptions(batch_size=2)
    study.update(finished, options)
    assert study.seeds_done == [0, 1, 2, 4, 5, 6]
    tags, metrics = verdict_record([study], options)
    assert tags["verdict.0.feature_extraction-scratch"] == "positive"
    assert tags["verdict.0.fine_tune-feature_extraction"] == "negligible"  # all 0, margin 0.01
    assert tags["verdicts_settled"] == "true" and tags["variant.0"] == "freeze=top1"
    assert tags["sequential.alpha"] == "0.05" and tags["sequential.batch_size"] == "2"
    assert tags["sequential.comparisons"] == " ".join(COMPARISONS)
    assert metrics["seeds.0"] == 6
    name = "verdict.0.fine_tune-scratch"
    assert 0 < metrics[f"{name}.low"] < metrics[f"{name}.mean"] < metrics[f"{name}.high"]
    assert study.next_seeds(2) == []  # settled: no more seeds

    early = variant_study(seeds=8)
    early.update(dict(list(finished.items())[:3]), options)
    tags, metrics = verdict_record([early], options)
    assert tags["verdict.0.fine_tune-scratch"] == "open" and tags["verdicts_settled"] == "false"
    assert "verdict.0.fine_tune-scratch.low" not in metrics  # infinite before min_seeds
    assert early.next_seeds(2) == [3, 4]
    early.launched.update([3, 4])
    assert early.next_seeds(5) == [5, 6, 7]  # never past the planned seeds
