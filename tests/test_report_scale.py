"""The read side in pages and in bulk returns what per-run reads return; a report of many variants
stays readable (summary first and sortable, sections folded, a forest plot of every variant)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.report import figures, statistics
from pipeline.report.render import write_report
from pipeline.report.statistics import batched_bca, bca_interval
from pipeline.report.study import build_study
from pipeline.tracking import query
from pipeline.tracking.query import ExperimentRun, RunRecord, StoreReader, record_of
from tests.conftest import headless

EXPERIMENT = "transfer-lab"
STAGES = ("scratch", "feature_extraction", "fine_tune")


def log_run(client, experiment_id, name, tags, params=None, metrics=(), parent=None) -> str:
    if parent is not None:
        tags = {**tags, "mlflow.parentRunId": parent}
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    rows = [Metric(key, value, 0, step) for key, value, step in metrics]
    params = [Param(k, str(v)) for k, v in (params or {}).items()]
    client.log_batch(run_id, metrics=rows, params=params)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, migrated_store: Path) -> str:
    """Two variants x three seeds in the pipeline's shape (a sweep run, experiment runs, three
    stage runs with five epochs each, one search with two trials): 28 runs."""
    db = tmp_path_factory.mktemp("scale") / "mlflow.db"
    db.write_bytes(migrated_store.read_bytes())
    uri = f"sqlite:///{db}"
    client, rng = MlflowClient(uri), random.Random(0)
    experiment_id = client.create_experiment(EXPERIMENT)
    sweep = log_run(client, experiment_id, "sweep", {"stage": "sweep"})
    for variant in range(2):
        for seed in range(3):
            tags = {"config_hash": f"c{variant}{seed}", "variant_hash": f"v{variant}"}
            tags |= {"seed": str(seed), "dataset": "digits", "backbone": "small_cnn"}
            parent = log_run(client, experiment_id, "run", tags, {"lr": variant}, parent=sweep)
            for stage in STAGES:
                epochs = [("val_accuracy", rng.random(), e) for e in range(1, 6)]
                finals = [("test_accuracy", rng.random(), 0), ("best_val_accuracy", 0.9, 0)]
                log_run(client, experiment_id, stage, {"stage": stage}, {}, epochs + finals, parent)
            if (variant, seed) == (1, 2):
                tags = {"stage": "search", "config_hash": "c12"}
                search = log_run(client, experiment_id, "search", tags, parent=parent)
                for trial in range(2):
                    score = [("best_val_accuracy", rng.random(), 0)]
                    tags = {"stage": "trial", "trial_id": str(trial)}
                    log_run(client, experiment_id, "trial", tags, {"t": trial}, score, search)
    return uri


def reader_of(uri: str) -> StoreReader:
    client = MlflowClient(uri)
    return StoreReader(client, [client.get_experiment_by_name(EXPERIMENT).experiment_id])


def test_paged_reads_return_every_run_once_as_one_request_does(small_study, monkeypatch):
    reader = reader_of(small_study)
    one_request = reader.client.search_runs(reader.experiment_ids, max_results=1000)
    assert len(one_request) == 28
    expected = sorted((record_of(run) for run in one_request), key=lambda r: r.run_id)
    monkeypatch.setattr(query, "PAGE", 4)  # seven pages
    paged = reader.runs()
    assert sorted(paged, key=lambda r: r.run_id) == expected
    assert len({r.run_id for r in paged}) == 28
    assert [r.run_id for r in reader.runs(limit=5)] == [r.run_id for r in paged[:5]]


def per_run_study(client: MlflowClient, experiment_id: str) -> dict[str, ExperimentRun]:
    """Each invocation read the slow way: its parent, then a search for its children each."""
    found = {}
    parents = client.search_runs([experiment_id], "tags.config_hash != ''", max_results=1000)
    for parent in parents:
        if "stage" in parent.data.tags:
            continue
        run = ExperimentRun(record_of(client.get_run(parent.info.run_id)))
        query_ = f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        for child in map(record_of, client.search_runs([experiment_id], query_)):
            if child.stage == "search":
                run.search = child
                trials = f"tags.mlflow.parentRunId = '{child.run_id}'"
                run.trials = [record_of(t) for t in client.search_runs([experiment_id], trials)]
            else:
                run.stages[child.stage] = child
        found[run.parent.run_id] = run
    return found


def canonical(run: ExperimentRun) -> tuple:
    trials = sorted(run.trials, key=lambda t: t.run_id)
    return run.parent, sorted(run.stages.items()), run.search, trials


def test_bulk_reads_equal_per_run_reads(small_study, monkeypatch):
    reader = reader_of(small_study)
    slow = per_run_study(reader.client, reader.experiment_ids[0])
    monkeypatch.setattr(query, "PAGE", 5)
    monkeypatch.setattr(query, "HISTORY_CHUNK", 4)  # five bulk queries for 18 stage runs
    bulk = {run.parent.run_id: run for run in reader.experiment_runs()}
    # the database read of every run (mlflow_internals.runs_bulk) is the paged search's
    assert reader.all_runs() == reader.runs(order_by=["attributes.start_time ASC"])
    assert len(bulk) == 6 and set(bulk) == set(slow)
    for run_id, run in bulk.items():
        assert canonical(run) == canonical(slow[run_id])
        assert canonical(reader.invocation(run.parent)) == canonical(slow[run_id])
    assert sum(len(run.trials) for run in bulk.values()) == 2

    stage_ids = [rec.run_id for run in bulk.values() for rec in run.stages.values()]
    histories = reader.metric_histories(stage_ids, "val_accuracy")
    one_by_one = {
        run_id: sorted((m.step, m.value) for m in reader.client.get_metric_history(run_id, key))
        for run_id in stage_ids
        for key in ["val_accuracy"]
    }
    assert histories == one_by_one
    assert all(len(points) == 5 for points in histories.values())
    # a chunk cut off at the store's limit is read again run by run, not silently shortened
    monkeypatch.setattr(query, "HISTORY_LIMIT", 12)
    assert reader.metric_histories(stage_ids, "val_accuracy") == one_by_one


def synthetic_study(variants: int, seeds: int = 3) -> list[ExperimentRun]:
    """Invocations as the read side returns them (RunRecords), without a store: the report's
    shape at scale in milliseconds."""
    rng, invocations = random.Random(1), []
    for v in range(variants):
        for seed in range(seeds):
            tags = {"config_hash": f"c{v}-{seed}", "variant_hash": f"v{v}", "seed": str(seed)}
            tags |= {"dataset": "digits", "backbone": "small_cnn", "command": f"run {v} {seed}"}
            params = {"lr.fine_tune": f"{0.0001 * (v + 1):.4f}", "seed": str(seed)}
            parent = RunRecord(f"p{v}-{seed}", "1", "run", "FINISHED", 0, 1, tags, params, {})
            run = ExperimentRun(parent)
            for index, stage in enumerate(STAGES):
                accuracy = 0.6 + 0.1 * index + 0.002 * v + rng.gauss(0, 0.01)
                metrics = {"test_accuracy": accuracy, "best_val_accuracy": accuracy}
                run.stages[stage] = RunRecord(
                    f"s{v}-{seed}-{stage}", "1", stage, "FINISHED", 0, 1,
                    {"stage": stage, "mlflow.parentRunId": parent.run_id}, {}, metrics,
                )  # fmt: skip
            invocations.append(run)
    return invocations


def test_a_study_of_sixty_variants_reads_as_a_summary_then_folded_sections(tmp_path, monkeypatch):
    histories = {}

    def read(run_ids):
        histories.update({run_id: [(e, 0.5 + e / 100) for e in range(1, 11)] for run_id in run_ids})
        return histories

    monkeypatch.setattr(figures, "ROWS_PER_PAGE", 40)  # two pictures of the forest
    study = build_study(synthetic_study(60), read, 2)
    assert len(histories) == 2 * 3 * 3  # the curves of the two drawn variants only
    study.experiment, study.generated = "scale", "now"
    files = write_report(study, tmp_path, variant_figures=2)
    names = sorted(p.name for p in files)
    assert {"gains_forest.png", "gains_forest_2.png", "variant1_curves.png"} <= set(names)
    assert not any(name.startswith("variant3_") for name in names)
    html = (tmp_path / "report.html").read_text()
    summary = html.index('<table class="sortable">')
    assert html.index('class="verdict"') < summary < html.index("gains_forest.png")
    assert html.index("<h2>Methods</h2>") > html.rindex("</details>")
    assert html.count("<details ") == 60 and " open>" not in html  # folded
    body = html[summary : html.index("</table>", summary)]
    assert body.count("<tr>") == 61 and 'data-v="' in body
    assert "variant_figures=60" in html and "<script>" in html
    assert "2 pictures of up to 40 rows" in html
    # the largest fine_tune - scratch gain leads the summary and the forest
    report = json.loads((tmp_path / "report.json").read_text())
    gains = [v["gains"][1]["mean"] for v in report["variants"]]
    first_row = body.split("<tr>")[2]
    assert f'href="#variant-{gains.index(max(gains)) + 1}"' in first_row
    assert [v["curves"] != {} for v in report["variants"]] == [True, True] + [False] * 58
    assert report["variants"][0]["gains"][0]["verdict"] is None
    markdown = (tmp_path / "report.md").read_text()
    assert (
        markdown.index("## Summary")
        < markdown.index("## Variant 1:")
        < markdown.index("## Methods")
    )


def test_the_sixty_variant_page_opens_in_chromium_without_errors(tmp_path):
    study = build_study(synthetic_study(60), lambda run_ids: {}, 0)
    study.experiment, study.generated = "scale", "now"
    write_report(study, tmp_path, variant_figures=0)
    browser = headless((tmp_path / "report.html").as_uri(), tmp_path / "profile", "--dump-dom")
    assert browser.returncode == 0, browser.stderr[-2000:]
    console = [line for line in browser.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    assert browser.stdout.count('<details id="variant-') == 60


def test_batched_bca_intervals_equal_one_scipy_call_each():
    rng = np.random.default_rng(3)
    rows = [rng.normal(0.1, 0.03, n) for n in (4, 4, 5, 3, 4)] + [np.array([0.1, 0.1, 0.1])]
    rows.append(np.array([0.2, 0.1]))  # too few seeds: no interval
    single = [bca_interval(row) for row in rows]
    assert single[-2:] == [None, None] and all(s is not None for s in single[:-2])
    with batched_bca(rows):
        assert len(statistics.batched) == 5  # computed in the batch, not one call each
        assert [bca_interval(row) for row in rows] == single
    assert statistics.batched == {}


def test_a_negative_variant_figures_is_one_line_before_the_store_is_read(tmp_path, capsys):
    from pipeline.report.__main__ import main

    db = tmp_path / "no-store" / "mlflow.db"
    assert main(["variant_figures=-1", f"tracking_uri=sqlite:///{db}"]) == 2
    assert capsys.readouterr().err == "error: variant_figures=-1 must be >= 0\n"
    assert not db.parent.exists()


def test_resume_lookup_in_one_query_returns_what_search_runs_returned(small_study, monkeypatch):
    """`finished_experiment_run` by the direct tag query equals MLflow's search for it: every
    configuration, a search run sharing a parent's hash, a hash never run, a run not FINISHED."""
    reader = reader_of(small_study)
    client = reader.client
    failed = client.search_runs(reader.experiment_ids, "tags.config_hash = 'c01'")[0]
    client.set_terminated(failed.info.run_id, "FAILED")
    hashes = [f"c{v}{s}" for v in range(2) for s in range(3)] + ["never-run"]
    direct = {digest: reader.finished_experiment_run(digest) for digest in hashes}
    monkeypatch.setattr(query, "runs_bulk", lambda *_args: None)  # MLflow's search_runs
    searched = {digest: reader.finished_experiment_run(digest) for digest in hashes}
    client.set_terminated(failed.info.run_id, "FINISHED")
    assert direct["never-run"] is None and direct["c01"] is None
    assert direct["c12"] is not None and direct["c12"].parent.stage is None  # not the search
    for digest in hashes:
        found, expected = direct[digest], searched[digest]
        assert (found is None) == (expected is None), digest
        if found is not None:
            assert canonical(found) == canonical(expected), digest


@pytest.mark.slow
def test_bulk_histories_through_a_server_equal_per_run_reads(small_study, tmp_path):
    """Through `mlflow server`: one request per 100 runs (its bulk endpoint), the same values
    as `get_metric_history` run by run."""
    from pipeline.tracking import server as tracking_server
    from pipeline.tracking.mlflow_internals import metric_history_bulk
    from tests.clusters import leftover

    backend = tmp_path / "server.db"
    backend.write_bytes(Path(small_study.removeprefix("sqlite:///")).read_bytes())
    process, url = tracking_server.start_server(
        f"sqlite:///{backend}", tmp_path / "artifacts", log=tmp_path / "server.log", timeout_s=120
    )
    try:
        reader = reader_of(url)
        stage_ids = [rec.run_id for run in reader.experiment_runs() for rec in run.stages.values()]
        found = metric_history_bulk(reader.client, stage_ids, "val_accuracy", 100_000)
        assert found is not None and len(found) == 5 * len(stage_ids)
        one_by_one = {run_id: reader.metric_history(run_id, "val_accuracy") for run_id in stage_ids}
        assert reader.metric_histories(stage_ids, "val_accuracy") == one_by_one
        # cut off at the limit: the chunk is read run by run, not silently shortened
        assert metric_history_bulk(reader.client, stage_ids, "val_accuracy", 12) is None
    finally:
        assert leftover(tracking_server.stop_server(process)) == []


def test_sign_flip_p_values_equal_scipys_permutation_test(monkeypatch):
    """Random differences and the ties where the order of summation could decide (equal,
    mirrored and zero differences, rounded values), 2 to 13 seeds: scipy's p-values exactly."""
    from scipy import stats

    scipy_test = stats.permutation_test

    def scipy_p(values):
        return scipy_test((values,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue

    rng, cases = np.random.default_rng(0), []
    for n in range(2, 14):
        cases += [rng.normal(rng.normal(0, 0.02), 0.02, n) for _ in range(10)]
        cases += [np.round(rng.normal(0.01, 0.02, n), 2) for _ in range(10)]
        cases += [np.full(n, 0.1), np.zeros(n), np.r_[np.full(n - 1, 0.03), -0.03]]
        cases.append(np.array([0.1, -0.1] * (n // 2) + [0.0] * (n % 2)))
    expected = [float(scipy_p(values)) for values in cases]
    calls = []
    monkeypatch.setattr(statistics.stats, "permutation_test", lambda *a, **k: calls.append(1) or
                        scipy_test(*a, **k))  # fmt: skip
    assert [statistics.sign_flip_p_value(values) for values in cases] == expected
    assert 0 < len(calls) < len(cases) / 3  # scipy only for the near-ties and beyond 12 seeds
