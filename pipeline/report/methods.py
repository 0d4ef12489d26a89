"""The methods paragraph of a report: what varies across seeds and how every number was computed."""

from __future__ import annotations

from pipeline.report.records import Study
from pipeline.report.statistics import BOOTSTRAP_RESAMPLES, RANDOM_STATE

ASSUMES_RANDOM = ("bayesian", "hyperband")


def pretraining_clause(study: Study) -> str:
    """Whether the seeds of a variant shared one pretrained backbone (backbone.source.seed)."""
    counts = [len(v.provenance.backbone_runs) for v in study.variants]
    if not any(counts):
        return ""
    if max(counts) > 1:
        return (
            " The pretrained backbone varies across seeds too (pretrained per seed: "
            "backbone.source.seed follows the seed), so pretraining's randomness is sampled."
        )
    return (
        " Every seed of a variant transferred the same pretrained backbone (backbone.source.seed "
        "is fixed): pretraining's own randomness is not sampled."
    )


def statement(study: Study) -> str:
    """What varies, how the intervals were computed, n per cell, std vs standard error."""
    cells = sorted({v.n for v in study.variants})
    tuners = sorted({s.tuner for v in study.variants for s in v.searches})
    text = (
        "Each variant (one configuration) was run once per seed; the seeds are the samples. The "
        "seed sets the initial weights (the scratch model, every new head), the draw of the "
        "labelled training examples where the dataset samples them (train_per_class), the "
        "shuffling, dropout and, in searches, the tuner's draws; validation and test splits are "
        f"fixed by dataset.split_seed. n per cell: {', '.join(map(str, cells))} (shown in every "
        "table). Spread is the sample standard deviation over seeds (std, not the standard "
        "error). Intervals are 95 % Student's t intervals of the mean over seeds (n - 1 degrees "
        "of freedom). Gains are paired by seed (same seed, splits and initialisation of the parts "
        "the stages share); besides the t interval of the mean difference, a BCa bootstrap "
        f"interval (scipy.stats.bootstrap, {BOOTSTRAP_RESAMPLES} resamples, random_state="
        f"{RANDOM_STATE}) and an exact two-sided sign-flip permutation p-value "
        "(scipy.stats.permutation_test over all 2^n sign flips) are given; p-values are "
        "Holm-corrected across the comparisons of a variant. Variants with fewer than 3 seeds "
        "are flagged."
    )
    text += pretraining_clause(study)
    if tuners:
        text += (
            " The expected best validation score as a function of the number of trials follows "
            "Dodge et al. (2019), from the trials' empirical distribution, with its variance"
        )
        used = [t for t in tuners if t in ASSUMES_RANDOM]
        text += (
            f"; it assumes independent random-search draws, which the {', '.join(used)} tuner "
            "does not make, so there it is indicative only."
            if used
            else "."
        )
    return text
