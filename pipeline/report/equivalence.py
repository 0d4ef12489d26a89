"""Does a study's result hold when it is run again? One comparison's two sets of paired differences.

The claim: each set gets its own anytime-valid verdict (`sequential.decide`); the original's settled
claim (positive, negative or negligible) is replicated when the replication settles the same way.

The size: the two mean effects are equivalent within ±margin when the (1 - 2 alpha) Welch interval
of their difference (replication - original) lies inside (-margin, margin). That is Schuirmann's
(1987) two one-sided tests at level alpha each, with Welch's (1947) unequal-variance standard error
and Satterthwaite's degrees of freedom: an equivalence claim is wrong (|true difference| >= margin)
with probability <= alpha. A difference of 0 between two numbers is never asked for.

Assumptions: two independent samples of normal differences, their sizes fixed in advance.
- A study stopped by the sequential rule has a data-dependent size; a study that stopped early
  tends to overstate its effect, and the interval does not correct this: it is then approximate.
- With the same seeds, the two sets share splits and initialisations and are positively correlated;
  Welch's standard error ignores that covariance and so overstates the uncertainty, which makes
  the equivalence verdict conservative (harder to reach), never too easy.

References: D. J. Schuirmann (1987), A comparison of the two one-sided tests procedure and the power
approach for assessing the equivalence of average bioavailability, J. Pharmacokin. Biopharm. 15(6)
657-680. B. L. Welch (1947), The generalization of Student's problem when several different
population variances are involved, Biometrika 34(1/2) 28-35.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.report.sequential import MIN_SEEDS, Verdict, check, decide


@dataclass(frozen=True)
class Replication:
    """One comparison, original and replication side by side."""

    original: Verdict
    replication: Verdict
    difference: float  # replication mean - original mean
    low: float  # the (1 - 2 alpha) Welch interval of the difference; infinite with < 2 seeds
    high: float
    df: float  # Welch-Satterthwaite degrees of freedom (inf when both sds are 0; nan < 2 seeds)
    alpha: float
    margin: float

    @property
    def signs_agree(self) -> bool:
        """Both settled with the same sign."""
        kinds = (self.original.kind, self.replication.kind)
        return kinds in (("positive", "positive"), ("negative", "negative"))

    @property
    def same_verdict(self) -> bool:
        """Both settled the same way: the same sign, or both negligible."""
        return self.original.settled and self.original.kind == self.replication.kind

    @property
    def equivalent(self) -> bool:
        """The two effects differ by less than the margin (TOST at level alpha)."""
        return -self.margin < self.low and self.high < self.margin

    @property
    def status(self) -> str:
        """'no claim' (original open), 'replicated', 'not confirmed' (replication open),
        'opposite' (settled with opposite signs) or 'different' (one signed, one negligible)."""
        if not self.original.settled:
            return "no claim"
        if self.same_verdict:
            return "replicated"
        if not self.replication.settled:
            return "not confirmed"
        signs = {self.original.kind, self.replication.kind}
        return "opposite" if signs == {"positive", "negative"} else "different"

    @property
    def replicated(self) -> bool | None:
        """None when the original settled nothing; else whether the replication settled alike."""
        return None if self.status == "no claim" else self.status == "replicated"


def welch_interval(
    first: np.ndarray, second: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    """(low, high, df): the central Welch t interval of mean(second) - mean(first)."""
    if first.size < 2 or second.size < 2:
        return -math.inf, math.inf, math.nan
    from scipy import stats  # here, so that importing this module stays fast

    difference = float(second.mean() - first.mean())
    v1, v2 = first.var(ddof=1) / first.size, second.var(ddof=1) / second.size
    se = math.sqrt(v1 + v2)
    if se == 0:
        return difference, difference, math.inf
    df = (v1 + v2) ** 2 / (v1**2 / (first.size - 1) + v2**2 / (second.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return difference - half, difference + half, float(df)


def compare_effects(
    original: Sequence[float],
    replication: Sequence[float],
    alpha: float = 0.05,
    margin: float = 0.0,
    min_seeds: int = MIN_SEEDS,
) -> Replication:
    """Original and replication of one comparison: their verdicts, and the equivalence of their
    mean effects within ±margin (module docstring: the assumptions)."""
    check(alpha, margin, min_seeds)
    if alpha >= 0.5:
        raise ValueError(f"alpha={alpha!r} but the (1 - 2 alpha) interval needs alpha < 0.5")
    first, second = np.asarray(original, dtype=float), np.asarray(replication, dtype=float)
    low, high, df = welch_interval(first, second, 1 - 2 * alpha)
    return Replication(
        original=decide(first, alpha, margin, min_seeds),
        replication=decide(second, alpha, margin, min_seeds),
        difference=float(second.mean() - first.mean()) if first.size and second.size else math.nan,
        low=low,
        high=high,
        df=df,
        alpha=alpha,
        margin=margin,
    )
