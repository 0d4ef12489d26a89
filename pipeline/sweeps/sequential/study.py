"""One variant of a sequential sweep: its seeds' configurations, what the store holds of them, and
the verdicts on its comparisons (pipeline/report/sequential.py), as tags and metrics of the sweep
run (names: `variant_tags`, `verdict_tags`; the replicate command and the docs read them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.config import TrackingConfig
from pipeline.report.sequential import StudyVerdict, decide_study, paired_differences
from pipeline.sweeps.sequential_options import SequentialOptions


@dataclass
class VariantStudy:
    """A variant (its overrides, seed left out) and its seeds so far."""

    index: int
    overrides: list[str]
    tracking: TrackingConfig
    variant_hash: str
    hashes: dict[int, str]  # seed -> config_hash of that seed's job, every seed it may run
    launched: set[int] = field(default_factory=set)  # seeds run by this sweep
    values: dict[str, dict[int, float]] = field(default_factory=dict)  # stage -> seed -> metric
    run_ids: dict[int, str] = field(default_factory=dict)  # seed -> its FINISHED run, when known
    verdict: StudyVerdict | None = None

    @property
    def label(self) -> str:
        return " ".join(self.overrides)

    @property
    def seeds_done(self) -> list[int]:
        """Seeds with a FINISHED run in the store (whichever sweep ran them)."""
        return sorted({seed for by_seed in self.values.values() for seed in by_seed})

    @property
    def settled(self) -> bool:
        return self.verdict is not None and self.verdict.all_settled

    def next_seeds(self, batch_size: int) -> list[int]:
        """The lowest seeds not finished and not run yet by this sweep; none once settled."""
        if self.settled:
            return []
        done = set(self.seeds_done) | self.launched
        return [seed for seed in sorted(self.hashes) if seed not in done][:batch_size]

    @property
    def counted(self) -> dict[int, str]:
        """Seeds finished before this sweep (not launched by it) -> their runs: the sweep run
        names them as skipped jobs, so that its study (replicate, report) includes them."""
        return {s: r for s, r in self.run_ids.items() if s not in self.launched}

    def update(
        self,
        finished: dict[str, dict[str, float]],
        options: SequentialOptions,
        run_ids: dict[str, str] | None = None,
    ) -> None:
        """Take the store's finished runs (config_hash -> stage -> metric, and config_hash ->
        run id) and decide again."""
        by_hash = {digest: seed for seed, digest in self.hashes.items()}
        self.values = {}
        self.run_ids = {by_hash[d]: r for d, r in (run_ids or {}).items() if d in by_hash}
        for digest, stages in finished.items():
            if digest in by_hash:
                for stage, value in stages.items():
                    self.values.setdefault(stage, {})[by_hash[digest]] = value
        pairs = options.pairs
        found = paired_differences(self.values, pairs)
        differences = {pair: found.get(pair, []) for pair in pairs}
        self.verdict = decide_study(
            differences, options.alpha, options.margin, pairs, options.min_seeds
        )

    def summary(self) -> str:
        """One line: the variant, its seeds, each comparison's verdict and interval."""
        parts = []
        for (first, second), verdict in self.verdict.verdicts.items():
            low, high = verdict.interval.low, verdict.interval.high
            parts.append(f"{first}-{second} {verdict.kind} [{low:+.4f}, {high:+.4f}]")
        state = "settled" if self.settled else "open"
        label = self.label or "(no overrides)"
        return f"variant {self.index} ({label}): {len(self.seeds_done)} seeds, {state}: " + (
            "; ".join(parts)
        )


def verdict_record(
    studies: list[VariantStudy], options: SequentialOptions
) -> tuple[dict[str, str], dict[str, float]]:
    """The sweep run's tags and metrics: `sequential`, the options as `sequential.<key>`,
    `variant.<i>`, `verdict.<i>.<a>-<b>` (positive|negative|negligible|open) with metrics `.low`,
    `.high`, `.mean` (finite ones only: none before min_seeds), `seeds.<i>`, `verdicts_settled`."""
    tags = {"sequential": "true"}
    for key, value in vars(options).items():
        if not key.startswith("_"):
            tags[f"sequential.{key}"] = " ".join(value) if isinstance(value, list) else str(value)
    metrics: dict[str, float] = {}
    for study in studies:
        i = study.index
        tags[f"variant.{i}"] = study.label
        metrics[f"seeds.{i}"] = len(study.seeds_done)
        for (first, second), verdict in study.verdict.verdicts.items():
            name = f"verdict.{i}.{first}-{second}"
            tags[name] = verdict.kind
            ends = {"low": verdict.interval.low, "high": verdict.interval.high}
            for key, value in {**ends, "mean": verdict.mean}.items():
                if math.isfinite(value):
                    metrics[f"{name}.{key}"] = value
    tags["verdicts_settled"] = str(all(study.settled for study in studies)).lower()
    return tags, metrics
