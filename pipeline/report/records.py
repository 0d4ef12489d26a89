"""A study as typed records: what study.py builds and render.py, figures.py and report.json read.

`dataclasses.asdict(study)` is report.json: the field names are its keys (docs/reports.md documents
them), so renaming a field renames a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageSummary:
    """A metric of one stage over the seeds of a variant, with the runs behind it."""

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    min: float
    max: float
    run_ids: list[str]
    seeds: list[int | None]


@dataclass
class GainRecord:
    """`first` - `second` in test accuracy, paired by seed, with the run pairs behind it."""

    first: str
    second: str
    seeds: list[int]
    differences: list[float]
    mean: float
    t_low: float | None
    t_high: float | None
    bca_low: float | None
    bca_high: float | None
    wins: float
    p_value: float | None
    run_ids: list[list[str]]
    p_holm: float | None = None
    # The anytime-valid verdict (report/verdicts.py): positive | negative | negligible | open,
    # its interval (None: infinite, too few seeds), and for an open one the further seeds for
    # 80 % power at the observed effect with the sequential sweep's command that runs them.
    verdict: str | None = None
    anytime_low: float | None = None
    anytime_high: float | None = None
    further_seeds: int | None = None
    further_command: str | None = None

    @property
    def name(self) -> str:
        return f"{self.first} - {self.second}"


@dataclass
class SeedRun:
    """One sample of a variant: its parent run and each stage's run and test accuracy."""

    seed: int | None
    run_id: str
    command: str
    stages: dict[str, str]
    test_accuracy: dict[str, float]


@dataclass
class TrialRow:
    run_id: str
    trial_id: str
    unfreeze_blocks: int
    learning_rate: float
    score: float


@dataclass
class ExpectedBest:
    trials: int
    expected_best: float
    variance: float


@dataclass
class SearchRecord:
    """One invocation's search: its trials, best trial, expected best by number of trials."""

    run_id: str
    seed: int | None
    tuner: str
    objective: str
    best_trial_id: str | None
    best: float | None
    trials: list[TrialRow]
    expected_best: list[ExpectedBest]


@dataclass
class CurvePoint:
    epoch: int
    mean: float
    std: float
    n: int


@dataclass
class Provenance:
    git_commits: list[str]
    dirty: bool
    dataset: list[str]
    backbone: list[str]
    backbone_runs: list[str]
    backbone_weights: list[str]
    versions: dict[str, list[str]]


@dataclass
class VariantRecord:
    """One configuration over its seeds."""

    variant_hash: str
    label: str
    settings: dict[str, str]
    seeds: list[int | None]
    n: int
    warning: str
    runs: list[SeedRun]
    stages: dict[str, dict[str, StageSummary]]  # stage -> metric -> summary
    gains: list[GainRecord]
    absent: list[str]
    searches: list[SearchRecord]
    curves: dict[str, list[CurvePoint]]
    provenance: Provenance

    def gain(self, first: str, second: str) -> GainRecord | None:
        return next((g for g in self.gains if (g.first, g.second) == (first, second)), None)


@dataclass
class Excluded:
    run_id: str
    status: str
    seed: int | None
    error: str


@dataclass
class Reproduction:
    run_id: str
    reproduces: str
    status: str
    reproduced: str


@dataclass
class VerdictSettings:
    """The settings of every verdict of a report, and where they came from."""

    alpha: float = 0.05
    margin: float = 0.01
    min_seeds: int = 5
    source: str = "defaults"  # "options", "sweep <run id>", "options+sweep <run id>", "defaults"
    method: str = ""  # sequential.METHOD
    power: float = 0.8  # of the further seeds of an open comparison


@dataclass
class Study:
    """Everything a report shows; `statement` and `figures` are filled when it is written."""

    excluded: list[Excluded]
    reproductions: list[Reproduction]
    variants: list[VariantRecord]
    experiment: str = ""
    tracking_uri: str = ""
    filter: str = ""
    generated: str = ""
    statement: str = ""
    figures: list[str] = field(default_factory=list)
    verdict_settings: VerdictSettings = field(default_factory=VerdictSettings)
