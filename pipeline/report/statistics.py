"""The numbers of a report: summaries over seeds, paired gains, search curves. scipy does the work.

Seeds are the samples: every interval is over the seeds of one variant. A gain is paired by seed
(both stages ran with the same seed, the same splits and the same initialisation of what they
share), so its uncertainty is that of the per-seed differences.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RANDOM_STATE = 0  # the bootstrap's: the same runs give the same report
BOOTSTRAP_RESAMPLES = 9999


@dataclass(frozen=True)
class Summary:
    """A metric over seeds: n, mean, sample standard deviation, Student's t interval, range."""

    n: int
    mean: float
    std: float | None  # None when n < 2
    ci_low: float | None
    ci_high: float | None
    min: float
    max: float


@dataclass(frozen=True)
class Gain:
    """`first` - `second`, paired by seed."""

    first: str
    second: str
    seeds: list[int]
    differences: list[float]
    mean: float
    t_low: float | None
    t_high: float | None
    bca_low: float | None
    bca_high: float | None
    wins: float  # share of seeds where `first` is strictly better
    p_value: float | None  # exact sign-flip permutation test, two-sided
    p_holm: float | None = None  # Holm-corrected across the comparisons of a variant


@functools.lru_cache(maxsize=256)
def t_quantiles(confidence: float, df: int) -> tuple[float, float]:
    """The t distribution's two quantiles of a `confidence` interval: scipy's `t.interval` does
    the same, at ~10 ms a call through its argument checks, times thousands of cells."""
    low, high = stats.t.interval(confidence, df)
    return float(low), float(high)


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student's t interval of the mean; None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = float(np.mean(values))
    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))  # what scipy.stats.sem computes
    if sem == 0:
        return mean, mean
    low, high = t_quantiles(confidence, len(values) - 1)
    return mean + low * sem, mean + high * sem


def summarize(values: list[float], confidence: float = CONFIDENCE) -> Summary:
    array = np.asarray(values, dtype=float)
    interval = t_interval(array, confidence)
    return Summary(
        n=len(array),
        mean=float(array.mean()),
        std=float(array.std(ddof=1)) if len(array) > 1 else None,
        ci_low=None if interval is None else interval[0],
        ci_high=None if interval is None else interval[1],
        min=float(array.min()),
        max=float(array.max()),
    )


BATCH_ROWS = 100  # difference arrays a batched bootstrap call (~30 MB of resamples at 4 seeds)
batched: dict[bytes, tuple[float, float] | None] = {}  # filled by `batched_bca` while it lasts


def formable(differences: np.ndarray) -> bool:
    return len(differences) >= 3 and np.ptp(differences) != 0


@contextmanager
def batched_bca(rows: list[np.ndarray], confidence: float = CONFIDENCE) -> Iterator[None]:
    """The BCa intervals of many difference arrays in a few scipy calls (one per seed count, 100
    arrays at a time), looked up by `bca_interval` inside the block. The same numbers as one call
    each: every call draws the same resamples (the same random state), a fifth of the time."""
    by_length: dict[int, dict[bytes, np.ndarray]] = {}
    for row in rows:
        if formable(row):
            by_length.setdefault(len(row), {})[row.tobytes()] = row
    for unique in by_length.values():
        keys = list(unique)
        for start in range(0, len(keys), BATCH_ROWS):
            chunk = keys[start : start + BATCH_ROWS]
            result = stats.bootstrap(
                (np.stack([unique[key] for key in chunk]),),
                np.mean,
                confidence_level=confidence,
                n_resamples=BOOTSTRAP_RESAMPLES,
                method="BCa",
                random_state=RANDOM_STATE,
                axis=-1,
            )
            interval = result.confidence_interval
            for key, low, high in zip(chunk, interval.low, interval.high, strict=True):
                finite = math.isfinite(low) and math.isfinite(high)
                batched[key] = (float(low), float(high)) if finite else None
    try:
        yield
    finally:
        batched.clear()


def bca_interval(differences: np.ndarray, confidence: float = CONFIDENCE):
    """BCa bootstrap interval of the mean difference; None when it cannot be formed (fewer than
    three seeds, or every difference equal: no spread to resample)."""
    if not formable(differences):
        return None
    if confidence == CONFIDENCE and differences.tobytes() in batched:
        return batched[differences.tobytes()]
    result = stats.bootstrap(
        (differences,),
        np.mean,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="BCa",
        random_state=RANDOM_STATE,
    )
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return float(low), float(high)


EXACT_FLIPS_MAX = 12  # seeds up to which the sign flips are enumerated here (4,096 of them)


@functools.lru_cache(maxsize=EXACT_FLIPS_MAX)
def sign_flips(n: int) -> np.ndarray:
    """Every vector of n signs (2^n x n, +1 and -1), read-only."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    flips = (1 - 2 * bits).astype(float)
    flips.flags.writeable = False
    return flips


def sign_flip_p_value(differences: np.ndarray) -> float | None:
    """Exact two-sided p-value of "the mean difference is 0": every sign flip of the per-seed
    differences (2^n of them) is one permutation of the paired samples.

    scipy's `permutation_test(..., permutation_type="samples", n_resamples=np.inf)` (its argument
    checks and batching were a millisecond a comparison, thousands of them a report): for up to 12
    seeds its null distribution and comparisons (a tolerance of 100 eps of the observed mean) are
    done here at once, unless a null value lies so near a bound that the order of summation could
    decide the comparison (ties of mirrored seeds, a mean near 0): scipy answers those itself."""
    n = len(differences)
    if n < 2:
        return None
    if n <= EXACT_FLIPS_MAX:
        null = np.mean(sign_flips(n) * differences, axis=-1)
        observed = np.mean(differences)
        gamma = np.abs(np.finfo(float).eps * 100 * observed)
        # any two orders of summing n values differ by less than n eps mean(|x|)
        near = 2 * n * np.finfo(float).eps * np.mean(np.abs(differences))
        bounds = np.array([observed + gamma, observed - gamma])
        if np.min(np.abs(null[:, None] - bounds)) > near:
            less = np.count_nonzero(null <= bounds[0]) / null.size
            greater = np.count_nonzero(null >= bounds[1]) / null.size
            return float(np.clip(min(less, greater) * 2, 0.0, 1.0))
    result = stats.permutation_test(
        (differences,),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="two-sided",
    )
    return float(result.pvalue)


def paired_gain(first: str, second: str, pairs: dict[int, tuple[float, float]]) -> Gain:
    """`pairs`: seed -> (value of `first`, value of `second`)."""
    seeds = sorted(pairs)
    differences = np.asarray([pairs[s][0] - pairs[s][1] for s in seeds], dtype=float)
    t_ci = t_interval(differences)
    bca = bca_interval(differences)
    return Gain(
        first=first,
        second=second,
        seeds=seeds,
        differences=[float(d) for d in differences],
        mean=float(differences.mean()),
        t_low=None if t_ci is None else t_ci[0],
        t_high=None if t_ci is None else t_ci[1],
        bca_low=None if bca is None else bca[0],
        bca_high=None if bca is None else bca[1],
        wins=float(np.mean(differences > 0)),
        p_value=sign_flip_p_value(differences),
    )


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error) of the p-values that exist."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    m = len(present)
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def expected_max(values: list[float], n: int) -> tuple[float, float]:
    """Expected best of `n` trials drawn with replacement from the trials' empirical
    distribution, and its variance (Dodge et al. 2019, "Show your work")."""
    v = np.sort(np.asarray(values, dtype=float))
    count = len(v)
    cdf = (np.arange(1, count + 1) / count) ** n
    weights = np.diff(np.concatenate(([0.0], cdf)))
    mean = float(np.sum(weights * v))
    variance = float(np.sum(weights * v**2) - mean**2)
    return mean, max(variance, 0.0)
