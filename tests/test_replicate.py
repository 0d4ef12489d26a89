"""`python -m pipeline.replicate`: a finished study re-run as a new multirun and its claims checked.

Fast tier: bad input is one line and exit 2 before anything runs (real MLflow store, runs made by
the client: no training), and the pure parts (a study's variants, grid and seeds). Slow tier: one
real `debug=smoke` study (run once per file, a copy of its store per test) replicated by real
subprocesses: exit 0 and 1 with the same seeds, a sequential replication with new seeds that stops
before its cap, SIGTERM's 130.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError
from pipeline.replicate import main as replicate_main
from pipeline.report.replication import (
    compare_studies,
    grid,
    matched,
    seeds_to_run,
    settings_of,
    study_variants,
)
from pipeline.tracking.query import ExperimentRun, RunRecord
from tests.conftest import copy_store, run_cli


def record(run_id: str, tags: dict, metrics: dict | None = None) -> RunRecord:
    return RunRecord(run_id, "1", run_id, "FINISHED", 0, 0, tags, {}, metrics or {})


def invocation(seed: int, overrides: str, variant: str, accuracies: dict) -> ExperimentRun:
    """An experiment run as the store gives it back: its command, seed, variant and stages."""
    command = f"python -m pipeline seed={seed} {overrides} tracking.uri=sqlite:///x.db"
    tags = {"command": command, "seed": str(seed), "variant_hash": variant, "config_hash": "c"}
    run = ExperimentRun(record(f"{variant}-{seed}", tags))
    for stage, value in accuracies.items():
        run.stages[stage] = record(f"{variant}-{seed}-{stage}", {}, {"test_accuracy": value})
    return run


def test_a_variant_is_its_runs_overrides_without_seed_and_where_they_went():
    run = invocation(3, "freeze=top2 +x=1 sweep.skip_finished=false debug=smoke", "v", {})
    assert settings_of(run) == ("freeze=top2", "+x=1", "debug=smoke")
    assert settings_of(run, {"freeze"}) == ("+x=1", "debug=smoke")


def test_variants_form_a_grid_and_seeds_same_or_new():
    runs = [
        invocation(seed, f"freeze={freeze} debug=smoke", freeze, {"scratch": 0.1 * seed})
        for freeze in ("top1", "top2")
        for seed in (0, 1, 4)
    ]
    found = study_variants(runs)
    assert [v.overrides for v in found] == [
        ("freeze=top1", "debug=smoke"),
        ("freeze=top2", "debug=smoke"),
    ]
    assert found[1].values == {"scratch": {0: 0.0, 1: 0.1, 4: 0.4}}
    assert grid(found, set()) == ["freeze=top1,top2", "debug=smoke"]
    assert grid(found, {"debug"}) == ["freeze=top1,top2"]  # a key the caller overrides is its own
    with pytest.raises(ConfigError, match="overrides what tells the variants apart"):
        grid(found, {"freeze"})
    assert seeds_to_run(found, "same", max_seeds=30) == [0, 1, 4]
    assert seeds_to_run(found, "new", max_seeds=4) == [5, 6, 7, 8]  # the sequential sweep's range


def test_a_replications_runs_are_matched_to_variants_by_settings_and_seeds():
    """With seeds=same a variant counts only its own seeds; a replication override's key is
    left out of the match; the rows say what replicated."""
    gain = {0: 0.05, 1: 0.0, 2: 0.05, 3: 0.05, 4: 0.05, 5: 0.05}
    original = study_variants(
        [invocation(s, "freeze=top1", "a", {"scratch": 0.1, "feature_extraction": 0.1 + gain[s]})
         for s in range(5)]
        + [invocation(s, "freeze=top2", "b", {"scratch": 0.1, "feature_extraction": 0.1})
           for s in range(1, 6)]
    )  # fmt: skip
    worse = {"scratch": 0.3, "feature_extraction": 0.1}
    again = [
        invocation(s, f"freeze={f} lr.scratch=0.5", f"n{f}", worse)
        for f in ("top1", "top2")
        for s in range(6)
    ]
    copies = matched(original, again, {"lr.scratch"}, list(range(6)), own_seeds=True)
    assert [c.seeds for c in copies] == [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]]
    assert matched(original, again, set(), list(range(6)))[0].seeds == []  # settings differ
    rows = compare_studies(original, copies, alpha=0.3, margin=0.1, min_seeds=5)
    statuses = {(r.variant.index, r.comparison): r.result.status for r in rows}
    assert statuses == {
        (0, ("feature_extraction", "scratch")): "opposite",
        (1, ("feature_extraction", "scratch")): "different",
    }


def test_variants_that_are_not_a_grid_are_refused_naming_them():
    runs = [
        invocation(0, "freeze=top1 lr=default", "a", {}),
        invocation(0, "freeze=top2 lr=default", "b", {}),
        invocation(0, "freeze=top2 lr=low", "c", {}),
    ]
    with pytest.raises(ConfigError, match="not a full grid"):
        grid(study_variants(runs), set())
    with pytest.raises(ConfigError, match="set different keys"):
        grid(study_variants([runs[0], invocation(0, "freeze=top2", "d", {})]), set())


@pytest.fixture
def made_runs(store_uri: str) -> dict[str, str]:
    """Runs written by the client: a sweep run with no job, a job's experiment run nested in
    another sweep run, and one of its stage runs."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("transfer-lab")
    empty = client.create_run(experiment, tags={"stage": "sweep"}).info.run_id
    client.set_terminated(empty)
    sweep = client.create_run(experiment, tags={"stage": "sweep"}).info.run_id
    tags = {"config_hash": "abc", "seed": "0", "mlflow.parentRunId": sweep}
    job = client.create_run(experiment, tags=tags).info.run_id
    stage = client.create_run(experiment, tags={"stage": "scratch", "mlflow.parentRunId": job})
    for run_id in (stage.info.run_id, job, sweep):
        client.set_terminated(run_id, "FAILED")
    return {"empty": empty, "job": job, "stage": stage.info.run_id, "failed": sweep}


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("unknown", "run_id='0123abcd' is not a run of sqlite:///"),
        ("stage", "is a scratch run, not a study's sweep run (tag stage=sweep)"),
        ("job", "is an experiment run (one job), not a study's sweep run"),
        ("empty", "has no FINISHED experiment run"),
        ("failed", "has no FINISHED experiment run"),
    ],
)
@pytest.mark.empty_store
def test_a_run_that_is_not_a_finished_study_is_one_line_and_exit_2(
    made_runs, store_uri, capsys, which, message
):
    run_id = made_runs.get(which, "0123abcd")
    assert replicate_main([run_id, f"tracking_uri={store_uri}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["abc", "seeds=maybe"], "seeds=maybe but it must be one of: same, new"),
        (["abc", "margin=-1"], "margin=-1.0 but it must be a finite number >= 0"),
        (["abc", "alpha=0.7"], "alpha=0.7 but the equivalence test needs alpha < 0.5"),
        (["abc", "alpha=x"], "alpha: Value 'x' of type 'str' could not be converted to Float"),
        (["abc", "min_seeds=1"], "min_seeds=1 but it must be >= 2"),
        (["abc", "max_seeds=3"], "max_seeds=3 but it must be >= min_seeds=5"),
        ([], "no study given: usage: python -m pipeline.replicate"),
        (["abc", "def"], "abc def: usage:"),
        (["abc", "sweep_id=x"], "abc: usage:"),
        (["sweep_id=nothing"], "no FINISHED experiment run matches \"tags.sweep_id = 'nothing'\""),
        (["tags.dataset=mnist", "experiment_name=nope"], "experiment_name='nope' is not in"),
    ],
)
@pytest.mark.empty_store
def test_bad_options_are_one_line_and_exit_2(made_runs, store_uri, capsys, arguments, message):
    assert replicate_main([*arguments, f"tracking_uri={store_uri}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error


def test_a_tracking_uri_that_is_not_a_store_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "notes.db").write_text("not a database\n" * 50)
    assert replicate_main(["0123abcd", f"tracking_uri=sqlite:///{tmp_path / 'notes.db'}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert replicate_main(["0123abcd", f"tracking_uri=sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err


def replication_runs(client: MlflowClient, replicates: str) -> list:
    experiment = client.get_experiment_by_name("transfer-lab").experiment_id
    return client.search_runs([experiment], f"tags.replicates = '{replicates}'")


@pytest.fixture(scope="module")
def smoke_study_db(tmp_path_factory, smoke_backbone_store: Path) -> Path:
    """A five-seed `debug=smoke` study (a plain multirun), run once for this file's slow tests;
    each replicates its own copy of the store. At 28x28 (the default is 8x8 since 2026-12-03):
    there a smoke backbone gives feature extraction the clear gain over scratch that these tests'
    claims rest on; at 8x8 smoke's one pretraining epoch on 200 digits leaves it open."""
    folder = tmp_path_factory.mktemp("smoke-study")
    db = folder / "mlruns" / "mlflow.db"
    uri = copy_store(smoke_backbone_store, db)
    study = run_cli(
        ["-m", "seed=0,1,2,3,4", "debug=smoke", "dataset.image_size=28", f"tracking.uri={uri}",
         f"hydra.sweep.dir={folder / 'original'}"],
        folder,
        timeout=900,  # five jobs in one process: minutes on a loaded 2-core machine
    )  # fmt: skip
    assert study.returncode == 0, study.stderr[-3000:]
    return db


@pytest.fixture
def study(tmp_path: Path, smoke_study_db: Path) -> tuple[MlflowClient, str, str]:
    """(client, store URI, the study's sweep run id) of a copy of the smoke study's store."""
    uri = copy_store(smoke_study_db, tmp_path / "mlruns" / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("transfer-lab").experiment_id
    [sweep] = client.search_runs([experiment], "tags.stage = 'sweep'")
    return client, uri, sweep.info.run_id


def jobs_of(client: MlflowClient, sweep_run_id: str) -> list[int]:
    """The seeds of the experiment runs nested under a sweep run."""
    experiment = client.get_experiment_by_name("transfer-lab").experiment_id
    jobs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{sweep_run_id}'")
    return sorted(int(job.data.tags["seed"]) for job in jobs)


@pytest.mark.slow
def test_a_study_replicates_with_its_seeds_and_not_with_a_changed_config(tmp_path, study, capfd):
    """Five `debug=smoke` seeds, alpha 0.3, margin 0.1: feature extraction beats scratch (+0.04,
    settled positive) and fine-tuning equals feature extraction (settled negligible). Re-run with
    the same seeds: the same numbers, every claim replicated, exit 0. A bad override: exit 2 and no
    new sweep run. Re-run with scratch trained 30 epochs and the head hardly trained (lr 1e-9):
    feature extraction - scratch does not replicate, exit 1 naming it. Each replication is a sweep
    run tagged replicates=<the study's sweep run>, with its jobs nested and its verdicts as tags
    and artifacts."""
    client, store_uri, sweep_id = study
    options = ["alpha=0.3", "margin=0.1", f"tracking_uri={store_uri}"]

    same = [sweep_id, *options, f"hydra.sweep.dir={tmp_path / 'same'}"]
    assert replicate_main(same) == 0, capfd.readouterr().err[-3000:]
    out = capfd.readouterr().out
    assert "replicated: 3 settled claim(s) of 3 comparison(s) hold here" in out, out
    [again] = replication_runs(client, sweep_id)
    tags = again.data.tags
    assert tags["replicated"] == "true" and again.info.status == "FINISHED"
    assert tags["replication.0.feature_extraction-scratch"] == "replicated"
    assert tags["replication.0.fine_tune-feature_extraction"] == "replicated"
    assert again.data.metrics["replication.0.feature_extraction-scratch.difference"] == 0
    assert jobs_of(client, again.info.run_id) == [0, 1, 2, 3, 4]
    folder = Path(client.download_artifacts(again.info.run_id, "replication", str(tmp_path)))
    rows = json.loads((folder / "replication.json").read_text())["rows"]
    original = {row["comparison"]: row["original"]["kind"] for row in rows}
    assert original == {
        "feature_extraction - scratch": "positive",
        "fine_tune - scratch": "positive",
        "fine_tune - feature_extraction": "negligible",
    }, "the premise: smoke numbers on this machine settle these claims"
    assert all(row["equivalent"] for row in rows)  # identical numbers: within any margin

    bad = [sweep_id, *options, "lr.feature_extraction=0"]
    assert replicate_main(bad) == 2  # the multirun refuses it before anything runs
    error = capfd.readouterr().err.strip().splitlines()
    assert error[-1] == "error: lr.feature_extraction=0.0 must be > 0", error[-3:]
    assert len(replication_runs(client, sweep_id)) == 1

    changed = ["train.epochs.scratch=30", "train.patience=30", "lr.feature_extraction=1e-9"]
    changed += [f"hydra.sweep.dir={tmp_path / 'changed'}"]
    assert replicate_main([sweep_id, *options, *changed]) == 1
    error = capfd.readouterr().err.strip().splitlines()[-1]
    variant = "variant 0 (debug=smoke dataset.image_size=28) "
    assert error.startswith(f"error: not replicated: {variant}"), error
    assert "feature_extraction - scratch: original positive +0.040" in error, error
    latest = max(replication_runs(client, sweep_id), key=lambda r: r.info.start_time)
    assert latest.data.tags["replicated"] == "false"
    assert latest.data.tags["replication.0.feature_extraction-scratch"] != "replicated"


@pytest.mark.slow
def test_new_seeds_run_in_batches_until_the_claims_settle_here_and_count_when_run_again(
    tmp_path, study, capfd
):
    """seeds=new with alpha 0.4 and margin 0.9, where any three seeds settle every comparison
    (positive, negative or negligible: the interval is finite from 3 seeds on and narrower than
    the margin): the replication is a sequential sweep from seed 5 in batches of 3 that stops at
    its first look with seeds, before max_seeds=6, every claim of the original settled here one
    way or another (none 'not confirmed'), exit 0 or 1 as they agree. The same command again runs
    no job: the store's FINISHED seeds 5-7 count, named on its sweep run as skipped jobs, and give
    the same verdicts."""
    client, store_uri, sweep_id = study
    options = ["seeds=new", "alpha=0.4", "margin=0.9", "min_seeds=3", "max_seeds=6"]
    options += [f"tracking_uri={store_uri}", "hydra.sweeper.batch_size=3"]
    code = replicate_main([sweep_id, *options, f"hydra.sweep.dir={tmp_path / 'first'}"])
    out, err = capfd.readouterr()
    assert code in (0, 1), err[-3000:]
    output = out + err  # Hydra's log lines and the table
    assert "look 1: variant 0 (" in output and "3 seeds, settled: " in output, output[-3000:]
    assert "look 2" not in output  # stopped at the first look that settled, under the cap
    [again] = replication_runs(client, sweep_id)
    tags = again.data.tags
    assert tags["sequential"] == "true" and tags["sequential.first_seed"] == "5"
    assert tags["sequential.max_seeds"] == "6" and tags["verdicts_settled"] == "true"
    assert tags["sequential.comparisons"] == " ".join(
        ["feature_extraction-scratch", "fine_tune-scratch", "fine_tune-feature_extraction"]
    ), "the premise: the original settled all three (as in the test above)"
    assert jobs_of(client, again.info.run_id) == [5, 6, 7]
    statuses = {k: v for k, v in tags.items() if k.startswith("replication.")}
    assert len(statuses) == 3 and "not confirmed" not in statuses.values(), statuses
    assert tags["replicated"] == ("true" if code == 0 else "false")
    assert ("replicated: 3 settled claim(s)" in out) == (code == 0), out
    assert again.info.status == "FINISHED"

    second = [sweep_id, *options, f"hydra.sweep.dir={tmp_path / 'second'}"]
    assert replicate_main(second) == code
    out = capfd.readouterr().out
    assert out.count(" n=3 ") == 3, out  # each row's replication: the three seeds counted
    latest = max(replication_runs(client, sweep_id), key=lambda r: r.info.start_time)
    assert jobs_of(client, latest.info.run_id) == []  # nothing ran again
    skipped = {k: v for k, v in latest.data.tags.items() if k.startswith("skipped_job.")}
    assert sorted(skipped) == ["skipped_job.0.seed5", "skipped_job.0.seed6", "skipped_job.0.seed7"]
    assert latest.data.metrics["jobs_skipped"] == 3
    assert {k: v for k, v in latest.data.tags.items() if k.startswith("replication.")} == statuses


@pytest.mark.slow
def test_sigterm_stops_a_replication_with_130_and_leaves_nothing_running(tmp_path, study):
    """The smoke study replicated in a real process with seeds=new; SIGTERM once the
    replication's sweep run exists: exit 130, one line, its runs not left RUNNING."""
    client, store_uri, sweep_id = study
    experiment = client.get_experiment_by_name("transfer-lab").experiment_id
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "pipeline.replicate", sweep_id, "seeds=new",
               f"tracking_uri={store_uri}", f"hydra.sweep.dir={tmp_path / 'again'}"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        for _ in range(600):  # up to 60 s for the new sweep run to appear
            if replication_runs(client, sweep_id) or process.poll() is not None:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-3000:]
    assert err.decode().strip().splitlines()[-1] == (
        "error: interrupted; the replication's runs are marked KILLED"
    )
    running = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert running == [], [r.data.tags for r in running]
