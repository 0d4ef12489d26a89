"""Report over a 50-invocation study: `python -m pipeline.report`'s work vs. one request per run.

Run from the project root with the project's virtual environment active:

    python bench/report.py                 # 50 parent runs x 3 stages, 3 timed repeats
    python bench/report.py --parents 100 --epochs 30 --repeats 5
    python bench/report.py --server        # the same, read through a real `mlflow server`

A throwaway SQLite store is filled with a synthetic study: `--parents` finished parent runs (five
variants that differ in `lr.fine_tune`, seeds 0, 1, ... within each), each with scratch,
feature-extraction and fine-tuning runs carrying final metrics and `--epochs` per-epoch
`val_accuracy` values, tagged as the pipeline tags them. Both sides then write the same report
(the same statistics, plots and files, nothing logged back to the store):

- pipeline: `make_report`, which reads the store in bulk (one paged search, bulk metric histories);
- baseline: the plain MlflowClient way, one request per run: the parents, then per parent a
  search for its children, then per stage run its metric history.

With `--server` both sides read through an `mlflow server` started on 127.0.0.1 over the same
SQLite file, where every request is an HTTP round trip. Each side runs once untimed (imports,
matplotlib's font cache), then `--repeats` times alternately. Printed: median, min and max
seconds per side, the reading part of each, and the ratio median(pipeline) / median(baseline);
the goal is a report under 10 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from record import write_result  # bench/record.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.report.__main__ import ReportConfig, make_report
from pipeline.report.render import write_report
from pipeline.report.study import build_study
from pipeline.tracking.query import ExperimentRun, record_of
from pipeline.tracking.server import start_server, stop_server

EXPERIMENT = "bench-report"
STAGES = {"scratch": 0.70, "feature_extraction": 0.85, "fine_tune": 0.90}
VARIANTS = ("0.0001", "0.0003", "0.001", "0.003", "0.01")
GOAL_S = 10.0


def log_run(client, experiment_id, name, tags, params, metrics, parent_id=None) -> str:
    if parent_id is not None:
        tags = {**tags, "mlflow.parentRunId": parent_id}
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, step) for key, value, step in metrics],
        params=[Param(key, str(value)) for key, value in params.items()],
    )
    client.set_terminated(run_id, "FINISHED")
    return run_id


def stage_metrics(rng, base: float, epochs: int) -> list[tuple[str, float, int]]:
    curve = [base * (1 - 0.5 ** (e + 1)) + rng.gauss(0, 0.01) for e in range(epochs)]
    test = base + rng.gauss(0, 0.02)
    finals = {"test_accuracy": test, "test_loss": 1 - test, "best_val_accuracy": max(curve)}
    finals |= {"best_epoch": curve.index(max(curve)), "epochs_run": epochs}
    return [("val_accuracy", v, e) for e, v in enumerate(curve)] + [
        (k, v, 0) for k, v in finals.items()
    ]


def populate(uri: str, parents: int, epochs: int) -> None:
    """The synthetic study, written the way the pipeline tags its runs."""
    import random

    rng = random.Random(0)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    for index in range(parents):
        variant, seed = VARIANTS[index % len(VARIANTS)], index // len(VARIANTS)
        params = {"seed": seed, "lr.fine_tune": variant, "dataset.name": "digits"}
        tags = {
            "config_hash": f"c{index}",
            "variant_hash": f"v{variant}",
            "seed": str(seed),
            "dataset": "digits",
            "backbone": "small_cnn",
            "git_commit": "0" * 40,
            "command": f"python -m pipeline seed={seed} lr.fine_tune={variant}",
        }
        parent_id = log_run(client, experiment_id, f"run{index}", tags, params, [])
        for stage, base in STAGES.items():
            metrics = stage_metrics(rng, base + 5 * float(variant), epochs)
            log_run(client, experiment_id, stage, {"stage": stage}, params, metrics, parent_id)


def baseline_read(client: MlflowClient) -> tuple[list[ExperimentRun], dict[str, list]]:
    """The study, read one request per run."""
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parents = client.search_runs(
        [experiment_id],
        "attributes.status = 'FINISHED' and tags.config_hash != ''",
        max_results=1000,
        order_by=["attributes.start_time ASC"],
    )
    invocations, histories = [], {}
    for parent in parents:
        if "mlflow.parentRunId" in parent.data.tags:
            continue
        run = ExperimentRun(record_of(client.get_run(parent.info.run_id)))
        query = f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        for child in client.search_runs([experiment_id], query):
            record = record_of(child)
            run.stages[record.stage] = record
            history = client.get_metric_history(record.run_id, "val_accuracy")
            histories[record.run_id] = sorted((m.step, m.value) for m in history)
        invocations.append(run)
    return invocations, histories


def baseline(uri: str, out: Path) -> float:
    """Seconds spent reading; the report is written like the pipeline's."""
    start = time.perf_counter()
    invocations, histories = baseline_read(MlflowClient(uri))
    reading = time.perf_counter() - start
    report = build_study(invocations, lambda run_ids: histories, 12)
    report.experiment, report.tracking_uri, report.generated = EXPERIMENT, uri, "bench"
    write_report(report, out)
    return reading


def pipeline(uri: str, out: Path) -> float:
    """Seconds spent reading (the bulk read, timed by wrapping the reader's two calls)."""
    from pipeline.tracking.query import StoreReader

    spent = [0.0]
    originals = {name: getattr(StoreReader, name) for name in ("runs", "metric_histories")}

    def timed(original):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        return call

    try:
        for name, original in originals.items():
            setattr(StoreReader, name, timed(original))
        cfg = ReportConfig(experiment_name=EXPERIMENT, tracking_uri=uri, out=str(out))
        cfg.log_to_mlflow = False
        make_report(cfg)
    finally:
        for name, original in originals.items():
            setattr(StoreReader, name, original)
    return spent[0]


def measure(side, uri: str, out: Path) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    reading = side(uri, out)
    return time.perf_counter() - start, reading


@contextmanager
def mlflow_server(db_uri: str, workdir: Path) -> Iterator[str]:
    """`mlflow server` on a free port of 127.0.0.1 over `db_uri`; its URL once it answers."""
    # a busy 2-core machine can take minutes
    process, url = start_server(db_uri, workdir / "server-artifacts", timeout_s=300)
    try:
        yield url
    finally:
        stop_server(process)


def bench(parents: int, epochs: int, repeats: int, workdir: Path, server: bool) -> None:
    db_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    start = time.perf_counter()
    populate(db_uri, parents, epochs)
    print(
        f"study: {parents} parent runs x {len(STAGES)} stages, {epochs} epochs of val_accuracy "
        f"each, written in {time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs",
        flush=True,
    )
    if not server:
        figures = compare(db_uri, repeats, workdir)
    else:
        with mlflow_server(db_uri, workdir) as url:
            print(f"reading through mlflow server {url}", flush=True)
            figures = compare(url, repeats, workdir)
    name = "report_server" if server else "report"
    write_result(name, figures, repeats, parents=parents, epochs=epochs, server=server)


def compare(uri: str, repeats: int, workdir: Path) -> dict:
    sides = {"pipeline": pipeline, "baseline": baseline}
    for name, side in sides.items():
        total, _ = measure(side, uri, workdir / name)
        print(f"  warm-up {name:<9} {total:6.2f} s", flush=True)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for repeat in range(1, repeats + 1):
        for name, side in sides.items():
            total, reading = measure(side, uri, workdir / name)
            results[name].append((total, reading))
            print(f"  {repeat} {name:<9} {total:6.2f} s (reading {reading:5.2f} s)", flush=True)
    return print_summary(results, repeats)


def print_summary(results: dict[str, list[tuple[float, float]]], repeats: int) -> dict:
    """The table and the ratio printed; the figures for the result file returned."""
    print(f"\n{'side':<10} {'median s':>9} {'min s':>7} {'max s':>7} {'reading s':>10}")
    medians = {}
    for name, rows in results.items():
        totals = [t for t, _ in rows]
        medians[name] = statistics.median(totals)
        reading = statistics.median(r for _, r in rows)
        print(
            f"{name:<10} {medians[name]:9.2f} {min(totals):7.2f} {max(totals):7.2f} {reading:10.2f}"
        )
    ratio = medians["pipeline"] / medians["baseline"]
    met = "met" if medians["pipeline"] < GOAL_S else "NOT met"
    print(
        f"\npipeline / baseline = {ratio:.2f} (median of {repeats}); "
        f"report in {medians['pipeline']:.2f} s: goal < {GOAL_S:.0f} s {met}"
    )
    return {
        "seconds": {name: [t for t, _ in rows] for name, rows in results.items()},
        "reading_seconds": {name: [r for _, r in rows] for name, rows in results.items()},
        "median_seconds": medians,
        "pipeline_over_baseline": ratio,
        "goal_seconds": GOAL_S,
        "goal_met": medians["pipeline"] < GOAL_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parents", type=int, default=50, help="parent runs in the study")
    parser.add_argument("--epochs", type=int, default=10, help="val_accuracy values per stage run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side")
    parser.add_argument("--server", action="store_true", help="read through an mlflow server")
    args = parser.parse_args()
    if min(args.parents, args.epochs, args.repeats) < 1:
        parser.error("--parents, --epochs and --repeats must be >= 1")
    workdir = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        bench(args.parents, args.epochs, args.repeats, workdir, args.server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
