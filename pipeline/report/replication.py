"""A study and its replication as plain data: the variants and seeds to run again, and per variant
and comparison the original's claim beside the replication's (`equivalence.compare_effects`).

A variant is read from its runs, not from any sweeper's tags: its settings are the overrides of
its runs' `command` tag (seed, `sweep.*` and `tracking.uri` aside), its seeds their `seed` tags,
so that a plain multirun and a sequential study replicate alike.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

from pipeline.errors import ConfigError
from pipeline.report.equivalence import Replication, compare_effects
from pipeline.report.sequential import (
    DEFAULT_COMPARISONS,
    Comparison,
    decide,
    paired_differences,
)
from pipeline.tracking.query import ExperimentRun, variants

METRIC = "test_accuracy"
# Overrides that do not tell variants apart: the sample (seed), where runs go, how sweeps run.
NOT_SETTINGS = ("seed", "tracking.uri")
NOT_SETTINGS_PREFIXES = ("sweep.", "hydra.", "hydra/")


def override_key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def settings_of(run: ExperimentRun, ignored: set[str] = frozenset()) -> tuple[str, ...]:
    """The overrides that made this run, seed and output keys aside (and keys in `ignored`)."""
    words = shlex.split(run.parent.tags.get("command", ""))[3:]  # after `python -m pipeline`
    kept = []
    for word in words:
        key = override_key(word)
        if key in ignored or key in NOT_SETTINGS or key.startswith(NOT_SETTINGS_PREFIXES):
            continue
        kept.append(word)
    return tuple(kept)


@dataclass
class StudyVariant:
    """One variant of a study: its overrides and, per stage, test accuracy by seed."""

    index: int
    overrides: tuple[str, ...]
    values: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for by_seed in self.values.values() for seed in by_seed})

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "(defaults)"


def add_run(variant: StudyVariant, run: ExperimentRun) -> None:
    """The run's final test accuracies, by stage; a later run of a seed replaces an earlier."""
    if run.seed is None:
        return
    for stage, record in run.stages.items():
        if METRIC in record.metrics:
            variant.values.setdefault(stage, {})[run.seed] = record.metrics[METRIC]


def study_variants(runs: list[ExperimentRun]) -> list[StudyVariant]:
    """The study's variants (by variant_hash, first seen first) with their seeds' numbers."""
    found = []
    for index, group in enumerate(variants(runs)):
        variant = StudyVariant(index, settings_of(group.runs[0]))
        for run in group.runs:  # oldest first: the latest run of a seed counts
            add_run(variant, run)
        found.append(variant)
    return found


def grid(found: list[StudyVariant], replaced: set[str]) -> list[str]:
    """The variants as one multirun's swept overrides (`freeze=top1,top2`); ConfigError when
    they are not a full grid of their settings. Keys in `replaced` (the caller's) are left out."""
    settings = [
        {override_key(o): o for o in v.overrides if override_key(o) not in replaced} for v in found
    ]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    if any(set(s) != set(keys) for s in settings):
        labels = "; ".join(v.label for v in found)
        raise ConfigError(f"the variants set different keys ({labels}): not one grid")
    values = {k: list(dict.fromkeys(s[k].partition("=")[2] for s in settings)) for k in keys}
    cells = {tuple(s[k].partition("=")[2] for k in keys) for s in settings}
    labels = "; ".join(v.label for v in found)
    if len(found) > 1 and len(cells) < len(found) and replaced:
        given = ", ".join(sorted(replaced))
        raise ConfigError(f"{given}: overrides what tells the variants apart ({labels})")
    if len(cells) != len(found) or len(cells) != math.prod(len(v) for v in values.values()):
        labels = "; ".join(v.label for v in found)
        raise ConfigError(f"the variants ({labels}) are not a full grid of their settings")
    prefixes = {k: settings[0][k].partition("=")[0] for k in keys}
    return [f"{prefixes[k]}={','.join(values[k])}" for k in keys]


def seeds_to_run(found: list[StudyVariant], mode: str, max_seeds: int) -> list[int]:
    """`same`: every seed of the study; `new`: the `max_seeds` seeds after the largest seed used
    (the sequential sweeper runs as many of them as it takes to settle)."""
    used = sorted({seed for v in found for seed in v.seeds})
    if mode == "same":
        return used
    return list(range(used[-1] + 1, used[-1] + 1 + max_seeds))


def settled_comparisons(
    found: list[StudyVariant], alpha: float, margin: float, min_seeds: int
) -> list[str]:
    """The comparisons (`first-second`) that some variant of the study settled: what a
    replication with new seeds must settle too; every one it has when it settled none."""
    present, settled = set(), set()
    for variant in found:
        for pair, differences in paired_differences(variant.values, DEFAULT_COMPARISONS).items():
            present.add(pair)
            if decide(differences, alpha, margin, min_seeds).settled:
                settled.add(pair)
    return [f"{a}-{b}" for a, b in DEFAULT_COMPARISONS if (a, b) in (settled or present)]


def matched(
    original: list[StudyVariant],
    runs: list[ExperimentRun],
    ignored: set[str],
    seeds: list[int],
    own_seeds: bool = False,
) -> list[StudyVariant]:
    """The replication's variant of each original one (same settings but `ignored` keys), its
    numbers kept to `seeds`, and with `own_seeds` (seeds=same) to the original variant's own."""
    copies = [StudyVariant(v.index, v.overrides) for v in original]
    by_settings = {
        tuple(sorted(set(v.overrides) - keyed(v.overrides, ignored))): copy
        for v, copy in zip(original, copies, strict=True)
    }
    for run in sorted(runs, key=lambda r: r.parent.start_time or 0):
        settings = settings_of(run, ignored)
        copy = by_settings.get(tuple(sorted(settings)))
        if copy is None or run.seed not in seeds:
            continue
        if not own_seeds or run.seed in original[copy.index].seeds:
            add_run(copy, run)
    return copies


def keyed(overrides: tuple[str, ...], keys: set[str]) -> set[str]:
    return {o for o in overrides if override_key(o) in keys}


@dataclass(frozen=True)
class Row:
    """One variant's one comparison, original and replication."""

    variant: StudyVariant
    comparison: Comparison
    result: Replication


def compare_studies(
    original: list[StudyVariant],
    replication: list[StudyVariant],
    alpha: float,
    margin: float,
    min_seeds: int,
) -> list[Row]:
    """Every comparison the original has, per variant; one the replication lacks is open there."""
    rows = []
    for first, again in zip(original, replication, strict=True):
        before = paired_differences(first.values, DEFAULT_COMPARISONS)
        after = paired_differences(again.values, DEFAULT_COMPARISONS)
        for comparison, differences in before.items():
            result = compare_effects(
                differences, after.get(comparison, []), alpha, margin, min_seeds
            )
            rows.append(Row(first, comparison, result))
    return rows


def interval(verdict) -> str:
    """`positive +0.120 [+0.010, +0.230] n=5`."""
    low, high = verdict.interval.low, verdict.interval.high
    return f"{verdict.kind} {verdict.mean:+.3f} [{low:+.3f}, {high:+.3f}] n={verdict.n}"


def name(row: Row) -> str:
    """`variant 0 (freeze=top1) fine_tune - scratch`."""
    first, second = row.comparison
    return f"variant {row.variant.index} ({row.variant.label}) {first} - {second}"


def table(rows: list[Row]) -> list[list[str]]:
    """The rows the terminal and the Markdown summary show, a header first."""
    header = ["variant", "comparison", "original", "replication", "difference (1-2a)"]
    header += ["signs agree", "equivalent", "status"]
    out = [header]
    for row in rows:
        r = row.result
        out.append(
            [
                f"{row.variant.index} {row.variant.label}",
                f"{row.comparison[0]} - {row.comparison[1]}",
                interval(r.original),
                interval(r.replication),
                f"{r.difference:+.3f} [{r.low:+.3f}, {r.high:+.3f}]",
                "yes" if r.signs_agree else "no",
                "yes" if r.equivalent else "no",
                r.status,
            ]
        )
    return out


def text_table(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def markdown(lines: list[list[str]], heading: str) -> str:
    body = ["| " + " | ".join(line) + " |" for line in lines]
    body.insert(1, "|" + " --- |" * len(lines[0]))
    return "\n".join([f"# {heading}", "", *body, ""])


def tag_key(row: Row) -> str:
    """`replication.0.fine_tune-scratch`: the tag (status) and the metrics' prefix."""
    return f"replication.{row.variant.index}.{row.comparison[0]}-{row.comparison[1]}"


def verdict_dict(verdict) -> dict:
    return {
        "kind": verdict.kind,
        "mean": verdict.mean,
        "low": verdict.interval.low,
        "high": verdict.interval.high,
        "n": verdict.n,
        "sd": verdict.sd,
    }


def summary(rows: list[Row], about: dict) -> dict:
    """report.json-like: the settings of the replication and every row."""
    return {
        **about,
        "rows": [
            {
                "variant": row.variant.index,
                "overrides": list(row.variant.overrides),
                "comparison": f"{row.comparison[0]} - {row.comparison[1]}",
                "original": verdict_dict(row.result.original),
                "replication": verdict_dict(row.result.replication),
                "difference": row.result.difference,
                "difference_low": row.result.low,
                "difference_high": row.result.high,
                "signs_agree": row.result.signs_agree,
                "equivalent": row.result.equivalent,
                "status": row.result.status,
                "replicated": row.result.replicated,
            }
            for row in rows
        ],
    }
