"""Anytime-valid verdicts on paired differences: look after every batch of seeds, stop when settled.

Method: the confidence sequence for a Gaussian mean with unknown variance of Lai (1976), in the
closed form of the fixed-g Bayes factor of Rouder et al. (2009) that Lindon et al. (2022)
use for their anytime-valid t-test. For n differences with mean m, sample sd s, t = (m - mu)/(s/√n)
and nu = n - 1, the evidence against "the mean is mu" is

    E_n(mu) = r^(1/2) * [(1 + t²/nu) / (1 + r t²/nu)]^(n/2),   r = phi / (phi + n),

the likelihood ratio of the scale-invariant part of the data (a right-Haar prior 1/sigma on the
unknown sd, a N(mu, sigma²/phi) prior on the alternative mean). Under the null it is a
nonnegative martingale with mean 1 for every sigma (Pérez-Ortiz, Lardy, de Heide & Grünwald
2024), so by Ville's inequality P(E_n(mu) >= 1/alpha for some n) <= alpha. The sets
{mu : E_n(mu) < 1/alpha} are therefore a (1 - alpha) confidence sequence: with probability
>= 1 - alpha they hold the true mean at every n at once, so at any data-dependent stop too, whatever
the stopping rule looks at (the other comparisons, the time, the user's patience).
Solving E_n(mu) < 1/alpha for mu gives m ± s/√n * sqrt(nu (1 - q) / (q - r)), q = (r alpha²)^(1/n),
and the whole line when q <= r (too few seeds). We report the running intersection over n >= the
first look (still valid, Howard et al. 2021; and a settled verdict then stays settled).

Why this one: it is exact for normal differences at every n, and it has the power a study of seeds
needs (one sd of effect: settled within 20 seeds in 88 % of studies, bench/sequential.py).
The betting confidence sequence for bounded means (Waudby-Smith & Ramdas 2023) needs no normality,
since accuracy differences lie in [-1, 1], but its bets are capped by that range: with sd 0.02 it
gains at most about 0.02 in log-wealth per seed and needs ~190 seeds for what this settles in 10-15.
phi = 1, the unit-information prior (Kass & Wasserman 1995), expects effects of about one sd of
seed noise, the size of a transfer gain; of phi in 0.1-2 it settled such effects about soonest.

Assumptions: the differences are independent and identically distributed (one per seed, in seed
order, which is fixed before the results are seen), normal. By simulation (bench/sequential.py,
alpha 0.05, 30 seeds) the wrong-sign rate is 0.022 for normal, 0.014 for Student t with 3 df, 0.042
for skewness 1, but 0.10 for skewness 2 (say, runs that sometimes diverge): strong skew breaks the
guarantee, and `Verdict.normality_p` (Shapiro-Wilk) is there to flag it. Each comparison is at
level alpha; `decide_study(familywise=True)` splits alpha over the comparisons (Bonferroni).

Verdicts, from the interval [low, high]: "positive" (low > 0), "negative" (high < 0), "negligible"
(-margin < low and high < margin: every mean left is smaller than the margin), "open" otherwise.
Each is wrong only if the sequence misses the true mean, so all of them together err with
probability <= alpha, at any stopping time.

References: T. L. Lai (1976), On confidence sequences, Ann. Statist. 4(2) 265-280. J. N. Rouder,
P. L. Speckman, D. Sun, R. D. Morey, G. Iverson (2009), Bayesian t tests for accepting and rejecting
the null hypothesis, Psychon. Bull. Rev. 16(2) 225-237. M. Lindon, D. W. Ham, M. Tingley,
I. Bojinov (2022), Anytime-valid linear models and regression adjusted causal inference in
randomized experiments, arXiv:2210.08589. M. F. Pérez-Ortiz, T. Lardy, R. de Heide, P. D. Grünwald
(2024), E-statistics, group invariance and anytime-valid testing, Ann. Statist. 52(4). S. R. Howard,
A. Ramdas, J. McAuliffe, J. Sekhon (2021), Time-uniform, nonparametric, nonasymptotic confidence
sequences, Ann. Statist. 49(2). I. Waudby-Smith, A. Ramdas (2023), Estimating means of bounded
random variables by betting, JRSS-B 86(1) (2024). R. E. Kass, L. Wasserman (1995), JASA 90(431).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

METHOD = "Lai (1976) confidence sequence, Gaussian mean with unknown variance, phi=1"
PRIOR_PRECISION = 1.0  # phi: the alternative's effect size in sd units ~ N(0, 1/phi)
MIN_SEEDS = 5  # the first look: no verdict, and no interval in the intersection, before it
KINDS = ("positive", "negative", "negligible", "open")
POSITIVE, NEGATIVE, NEGLIGIBLE, OPEN = range(len(KINDS))  # kind_codes' codes
Comparison = tuple[str, str]  # (first, second): the differences are first - second, per seed
DEFAULT_COMPARISONS: tuple[Comparison, ...] = (
    ("feature_extraction", "scratch"),
    ("fine_tune", "scratch"),
    ("fine_tune", "feature_extraction"),
)


@dataclass(frozen=True)
class Interval:
    """The anytime-valid interval of the mean difference after n seeds (infinite when too few)."""

    low: float
    high: float
    n: int
    mean: float  # nan when n == 0


@dataclass(frozen=True)
class Verdict:
    """What the seeds so far settle about one comparison."""

    kind: str  # one of KINDS
    interval: Interval
    n: int
    mean: float
    sd: float | None  # sample sd (ddof=1); None when n < 2
    alpha: float
    margin: float
    normality_p: float | None = None  # Shapiro-Wilk; None when n < 3 or all equal

    @property
    def settled(self) -> bool:
        return self.kind != "open"

    @property
    def within_margin(self) -> bool:
        """The whole interval inside ±margin (also true of a small "positive" or "negative")."""
        return -self.margin < self.interval.low and self.interval.high < self.margin


def check(alpha: float, margin: float = 0.0, min_seeds: int = MIN_SEEDS) -> None:
    """ValueError naming the bad value and what is allowed."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} but it must lie strictly between 0 and 1")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"margin={margin!r} but it must be a finite number >= 0")
    if min_seeds < 2:
        raise ValueError(f"min_seeds={min_seeds!r} but it must be >= 2 (an sd needs two seeds)")


def radius_factor(n: np.ndarray, alpha: float, phi: float = PRIOR_PRECISION) -> np.ndarray:
    """Half-width of the interval in standard errors (s/√n) after n seeds; inf while q <= r."""
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = phi / (phi + n)
        q = np.exp((np.log(r) + 2 * math.log(alpha)) / n)
        finite = (n >= 2) & (q > r)
        factor = np.sqrt((n - 1) * (1 - q) / np.where(finite, q - r, 1.0))
    return np.where(finite, factor, np.inf)


def log_evidence(t2: np.ndarray, n: np.ndarray, phi: float = PRIOR_PRECISION) -> np.ndarray:
    """log E_n: the log Bayes factor against the tested mean, from t² and n (n >= 2)."""
    n = np.asarray(n, dtype=float)
    r = phi / (phi + n)
    nu = n - 1
    return 0.5 * np.log(r) + 0.5 * n * (np.log1p(t2 / nu) - np.log1p(r * t2 / nu))


def sequence_bounds(paths: np.ndarray, alpha: float, min_seeds: int = MIN_SEEDS):
    """(low, high), each shaped like `paths` (studies x seeds): the interval after each prefix,
    intersected over the prefixes from `min_seeds` on; where that is empty (the data disagree
    with the model), the prefix's own interval, which keeps the coverage (module docstring)."""
    paths = np.atleast_2d(np.asarray(paths, dtype=float))
    n = np.arange(1, paths.shape[1] + 1)
    shifted = paths - paths[:, :1]  # sums of squares without cancellation
    mean_shift = np.cumsum(shifted, axis=1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        squares = np.cumsum(shifted**2, axis=1) - n * mean_shift**2
        se = np.sqrt(np.maximum(squares, 0.0) / (n - 1) / n)
    factor = radius_factor(n, alpha)
    finite = np.isfinite(factor)
    radius = np.where(finite, np.where(finite, factor, 0.0) * np.nan_to_num(se), np.inf)
    mean = mean_shift + paths[:, :1]
    low, high = mean - radius, mean + radius
    early = n < min_seeds
    low[:, early], high[:, early] = -np.inf, np.inf
    run_low, run_high = np.maximum.accumulate(low, axis=1), np.minimum.accumulate(high, axis=1)
    empty = run_low > run_high
    return np.where(empty, low, run_low), np.where(empty, high, run_high)


def classify(low: np.ndarray, high: np.ndarray, margin: float) -> np.ndarray:
    """Verdict kinds (strings) for intervals; signed verdicts come before "negligible"."""
    return np.asarray(KINDS)[kind_codes(low, high, margin)]


def kind_codes(low: np.ndarray, high: np.ndarray, margin: float) -> np.ndarray:
    """`classify` as indexes into KINDS (small integers: comparing strings was most of the
    power simulation's time)."""
    low, high = np.asarray(low), np.asarray(high)
    codes = np.full(np.broadcast(low, high).shape, OPEN, dtype=np.int8)
    codes[(low > -margin) & (high < margin)] = NEGLIGIBLE
    codes[high < 0] = NEGATIVE
    codes[low > 0] = POSITIVE
    return codes


def confidence_sequence(
    differences: Sequence[float], alpha: float = 0.05, min_seeds: int = MIN_SEEDS
) -> Interval:
    """The anytime-valid (1 - alpha) interval of the mean after these differences, in seed order."""
    check(alpha, 0.0, min_seeds)
    values = np.asarray(differences, dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"differences={values.tolist()} but they must all be finite numbers")
    if values.size == 0:
        return Interval(-math.inf, math.inf, 0, math.nan)
    low, high = sequence_bounds(values[None, :], alpha, min_seeds)
    return Interval(float(low[0, -1]), float(high[0, -1]), int(values.size), float(values.mean()))


def normality_p(values: np.ndarray) -> float | None:
    """Shapiro-Wilk p-value of the differences (small: the normal model is doubtful)."""
    if values.size < 3 or np.ptp(values) == 0:
        return None
    from scipy import stats  # here, so that importing this module stays fast

    return float(stats.shapiro(values).pvalue)


def decide(
    differences: Sequence[float],
    alpha: float = 0.05,
    margin: float = 0.0,
    min_seeds: int = MIN_SEEDS,
) -> Verdict:
    """The verdict on the mean of the paired differences (seed order) after these seeds."""
    check(alpha, margin, min_seeds)
    values = np.asarray(differences, dtype=float)
    interval = confidence_sequence(values, alpha, min_seeds)
    kind = str(classify(np.array(interval.low), np.array(interval.high), margin))
    return Verdict(
        kind=kind if values.size >= min_seeds else "open",
        interval=interval,
        n=int(values.size),
        mean=interval.mean,
        sd=float(values.std(ddof=1)) if values.size >= 2 else None,
        alpha=alpha,
        margin=margin,
        normality_p=normality_p(values),
    )


def evidence(differences: Sequence[float], null: float = 0.0) -> float:
    """E_n against "the mean difference is `null`" (1 with fewer than two seeds); a study that
    ever reaches 1/alpha rejects it at level alpha."""
    values = np.asarray(differences, dtype=float) - null
    n, mean = values.size, float(values.mean()) if values.size else 0.0
    if n < 2 or (mean == 0 and values.std() == 0):
        return 1.0
    if values.std() == 0:  # t = inf: the limit of E_n, r^(-(n-1)/2)
        return float((PRIOR_PRECISION / (PRIOR_PRECISION + n)) ** (-(n - 1) / 2))
    t2 = n * mean**2 / values.var(ddof=1)
    return float(np.exp(log_evidence(np.array(t2), np.array(n))))


def comparison_name(comparison: Comparison) -> str:
    """The name a tag, a metric or a table row gives a comparison: "fine_tune - scratch"."""
    return f"{comparison[0]} - {comparison[1]}"


def paired_differences(
    values: Mapping[str, Mapping[int, float]],
    comparisons: Sequence[Comparison] = DEFAULT_COMPARISONS,
) -> dict[Comparison, list[float]]:
    """first - second per seed that both stages have, in seed order; `values`: stage -> seed ->
    metric (test accuracy). A comparison whose stages are absent gets no entry."""
    out = {}
    for first, second in comparisons:
        if first in values and second in values:
            seeds = sorted(set(values[first]) & set(values[second]))
            out[(first, second)] = [values[first][s] - values[second][s] for s in seeds]
    return out


@dataclass(frozen=True)
class StudyVerdict:
    """The verdict of each comparison of one variant, in the order asked."""

    verdicts: dict[Comparison, Verdict]
    alpha: float  # per comparison (alpha / len(comparisons) when familywise)
    margin: float
    familywise: bool = False

    @property
    def all_settled(self) -> bool:
        return all(v.settled for v in self.verdicts.values())

    @property
    def open(self) -> list[Comparison]:
        return [c for c, v in self.verdicts.items() if not v.settled]


def decide_study(
    differences: Mapping[Comparison, Sequence[float]],
    alpha: float = 0.05,
    margin: float = 0.0,
    comparisons: Sequence[Comparison] = DEFAULT_COMPARISONS,
    min_seeds: int = MIN_SEEDS,
    familywise: bool = False,
) -> StudyVerdict:
    """Decide every comparison; with `familywise`, at alpha / len(comparisons) each (Bonferroni),
    so that any wrong verdict among them has probability <= alpha. A comparison absent from
    `differences` is a ValueError naming it."""
    missing = [comparison_name(c) for c in comparisons if c not in differences]
    if missing:
        raise ValueError(f"no differences for {missing}; given: {list(differences)}")
    level = alpha / len(comparisons) if familywise and comparisons else alpha
    check(level, margin, min_seeds)
    verdicts = {c: decide(differences[c], level, margin, min_seeds) for c in comparisons}
    return StudyVerdict(verdicts=verdicts, alpha=level, margin=margin, familywise=familywise)
