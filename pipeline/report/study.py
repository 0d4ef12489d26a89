"""A study as numbers: the finished invocations of an experiment, grouped into variants over seeds.

Everything here is typed records (records.py) so that report.json, the tables and the plots all
show the same numbers, each with the run ids behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from pipeline.config import STAGES
from pipeline.report.records import (
    CurvePoint,
    Excluded,
    ExpectedBest,
    GainRecord,
    Provenance,
    Reproduction,
    SearchRecord,
    SeedRun,
    StageSummary,
    Study,
    TrialRow,
    VariantRecord,
)
from pipeline.report.statistics import (
    batched_bca,
    expected_max,
    holm,
    paired_gain,
    summarize,
)
from pipeline.tracking.query import ExperimentRun, RunRecord, Variant, variants

log = logging.getLogger(__name__)

METRICS = ("test_accuracy", "best_val_accuracy")
COMPARISONS = (
    ("feature_extraction", "scratch"),
    ("fine_tune", "scratch"),
    ("fine_tune", "feature_extraction"),
)
MIN_SEEDS = 3
IGNORED_PARAMS = ("seed", "tracking.", "sweep.", "search.directory", "search.worker_wait_s")
VERSION_TAG = "version."


def excluded(run: ExperimentRun) -> Excluded:
    return Excluded(run.parent.run_id, run.parent.status, run.seed, run.parent.error or "")


def stage_summaries(runs: list[ExperimentRun]) -> dict[str, dict[str, StageSummary]]:
    """Per stage and metric: the summary over seeds and the run ids behind it."""
    out = {}
    for stage in STAGES:
        present = [r for r in runs if stage in r.stages]
        if not present:
            continue
        out[stage] = {
            metric: StageSummary(
                **asdict(summarize([r.stages[stage].metrics[metric] for r in present])),
                run_ids=[r.stages[stage].run_id for r in present],
                seeds=[r.seed for r in present],
            )
            for metric in METRICS
        }
    return out


def comparison_pairs(runs: list[ExperimentRun], first: str, second: str) -> dict:
    """seed -> (test accuracy of `first`, of `second`) over the runs that have both stages."""
    key = "test_accuracy"
    return {
        r.seed: (r.stages[first].metrics[key], r.stages[second].metrics[key])
        for r in runs
        if first in r.stages and second in r.stages
    }


def all_differences(groups: list[Variant]) -> list[np.ndarray]:
    """Every variant's per-seed differences of every comparison, as `paired_gain` forms them."""
    rows = []
    for group in groups:
        for first, second in COMPARISONS:
            pairs = comparison_pairs(group.runs, first, second)
            rows.append(np.asarray([pairs[s][0] - pairs[s][1] for s in sorted(pairs)], dtype=float))
    return rows


def gains(runs: list[ExperimentRun]) -> tuple[list[GainRecord], list[str]]:
    """Paired gains in test accuracy, Holm-corrected together; and the comparisons absent."""
    found, absent = [], []
    for first, second in COMPARISONS:
        pairs = comparison_pairs(runs, first, second)
        if not pairs:
            absent.append(f"{first} - {second}: no run of this variant has both stages")
            continue
        gain = asdict(paired_gain(first, second, pairs))
        by_seed = {r.seed: r for r in runs}
        gain["run_ids"] = [
            [by_seed[s].stages[first].run_id, by_seed[s].stages[second].run_id]
            for s in gain["seeds"]
        ]
        found.append(GainRecord(**gain))
    for gain, adjusted in zip(found, holm([g.p_value for g in found]), strict=True):
        gain.p_holm = adjusted
    return found, absent


def search_summary(run: ExperimentRun) -> SearchRecord | None:
    """One invocation's search: its trials, best trial and expected best by number of trials."""
    if run.search is None:
        return None
    objective = f"best_{run.search.params.get('objective', 'val_accuracy')}"
    trials = [t for t in run.trials if t.status == "FINISHED" and objective in t.metrics]
    scores = [t.metrics[objective] for t in trials]
    curve = []
    for n in range(1, len(scores) + 1):
        mean, variance = expected_max(scores, n)
        curve.append(ExpectedBest(n, mean, variance))
    return SearchRecord(
        run_id=run.search.run_id,
        seed=run.seed,
        tuner=run.search.params.get("tuner", ""),
        objective=objective,
        best_trial_id=run.search.tags.get("best_trial_id"),
        best=run.search.metrics.get(objective),
        trials=[trial_row(t, objective) for t in sorted(trials, key=trial_order)],
        expected_best=curve,
    )


def trial_order(trial: RunRecord) -> tuple[int, str]:
    trial_id = trial.tags.get("trial_id", "")
    return (int(trial_id) if trial_id.isdigit() else 10**9, trial_id)


def trial_row(trial: RunRecord, objective: str) -> TrialRow:
    return TrialRow(
        run_id=trial.run_id,
        trial_id=trial.tags.get("trial_id", ""),
        unfreeze_blocks=int(float(trial.params.get("unfreeze_blocks", "nan"))),
        learning_rate=float(trial.params.get("learning_rate", "nan")),
        score=trial.metrics[objective],
    )


def provenance(runs: list[ExperimentRun]) -> Provenance:
    """What the runs were made from: commits, versions, data, backbone, its pretraining runs."""
    tags = [r.parent.tags for r in runs]

    def distinct(key: str) -> list[str]:
        return sorted({t[key] for t in tags if key in t})

    versions = sorted({k for t in tags for k in t if k.startswith(VERSION_TAG)})
    return Provenance(
        git_commits=distinct("git_commit"),
        dirty=any(c.endswith("-dirty") for c in distinct("git_commit")),
        dataset=distinct("dataset"),
        backbone=distinct("backbone"),
        backbone_runs=distinct("backbone_run_id"),
        backbone_weights=distinct("backbone_weights"),
        versions={k.removeprefix(VERSION_TAG): distinct(k) for k in versions},
    )


def curves(runs: list[ExperimentRun], histories: dict[str, list]) -> dict[str, list[CurvePoint]]:
    """Per stage: mean and standard deviation of validation accuracy at each epoch, over the
    seeds whose training reached that epoch (early stopping ends seeds at different epochs)."""
    out = {}
    for stage in STAGES:
        series = [
            dict(histories.get(r.stages[stage].run_id, [])) for r in runs if stage in r.stages
        ]
        epochs = sorted({epoch for values in series for epoch in values})
        points = []
        for epoch in epochs:
            values = np.asarray([v[epoch] for v in series if epoch in v])
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            points.append(CurvePoint(epoch, float(values.mean()), std, len(values)))
        if points:
            out[stage] = points
    return out


def variant_entry(variant: Variant, differing: list[str], histories: dict) -> VariantRecord:
    runs = sorted(variant.runs, key=lambda r: (r.seed is None, r.seed or 0, r.parent.run_id))
    first = runs[0].parent
    found, absent = gains(runs)
    seeds = [r.seed for r in runs]
    warning = ""
    if len(set(seeds)) < len(seeds):
        warning = f"seeds repeat ({seeds}): repeated runs of a seed are counted as samples"
    elif len(runs) < MIN_SEEDS:
        warning = f"only {len(runs)} seed(s): fewer than {MIN_SEEDS}, intervals are unreliable"
    return VariantRecord(
        variant_hash=variant.variant_hash,
        label=label(first, differing),
        settings={key: first.params.get(key, "") for key in differing},
        seeds=seeds,
        n=len(runs),
        warning=warning,
        runs=[seed_run(r) for r in runs],
        stages=stage_summaries(runs),
        gains=found,
        absent=absent,
        searches=[s for s in (search_summary(r) for r in runs) if s is not None],
        curves=curves(runs, histories),
        provenance=provenance(runs),
    )


def seed_run(run: ExperimentRun) -> SeedRun:
    stages = sorted(run.stages.items())
    return SeedRun(
        seed=run.seed,
        run_id=run.parent.run_id,
        command=run.parent.tags.get("command", ""),
        stages={s: rec.run_id for s, rec in stages},
        test_accuracy={s: rec.metrics["test_accuracy"] for s, rec in stages},
    )


def label(parent: RunRecord, differing: list[str]) -> str:
    name = f"{parent.tags.get('dataset', '?')} / {parent.tags.get('backbone', '?')}"
    settings = ", ".join(f"{k}={parent.params.get(k, '')}" for k in differing)
    return f"{name} ({settings})" if settings else name


def differing_params(groups: list[Variant]) -> list[str]:
    """The config keys whose values tell the variants apart (seed and output keys aside)."""
    if len(groups) < 2:
        return []
    firsts = [g.runs[0].parent.params for g in groups]
    keys = sorted({k for p in firsts for k in p})
    keys = [k for k in keys if not k.startswith(IGNORED_PARAMS)]
    return [k for k in keys if len({p.get(k) for p in firsts}) > 1]


def reproduction(run: ExperimentRun) -> Reproduction:
    """A re-run by `python -m pipeline.reproduce`: not a sample, a check of one."""
    tags = run.parent.tags
    return Reproduction(
        run.parent.run_id, tags["reproduces"], run.parent.status, tags.get("reproduced", "unknown")
    )


def stage_run_ids(invocations: list[ExperimentRun]) -> list[str]:
    return [rec.run_id for r in invocations for rec in r.stages.values()]


def build_study(
    invocations: list[ExperimentRun], read_histories: Callable[[list[str]], dict], curves_for: int
) -> Study:
    """Variants of the finished invocations; the others listed, with their errors.

    `read_histories(stage run ids)`: stage run id -> (epoch, validation accuracy) pairs, read in
    bulk, and only for the first `curves_for` variants: the learning curves are drawn for those
    alone, and reading every epoch of every run is most of the reading of a big study."""
    reproductions = [r for r in invocations if "reproduces" in r.parent.tags]
    samples = [r for r in invocations if "reproduces" not in r.parent.tags]
    finished = [r for r in samples if r.parent.status == "FINISHED"]
    groups = variants(finished)
    differing = differing_params(groups)
    drawn = [run for group in groups[: max(curves_for, 0)] for run in group.runs]
    histories = read_histories(stage_run_ids(drawn)) if drawn else {}
    with batched_bca(all_differences(groups)):  # the bootstrap was most of this function's time
        entries = [variant_entry(v, differing, histories) for v in groups]
    return Study(
        excluded=[excluded(r) for r in samples if r.parent.status != "FINISHED"],
        reproductions=[reproduction(r) for r in reproductions],
        variants=entries,
    )
