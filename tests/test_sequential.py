"""The anytime-valid verdicts, by simulation (no training): error rates under optional stopping,
power, the equivalence verdicts, the replication test and the seeds-for-power estimate. Every
generator is seeded, so a run gives the same numbers every time."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from pipeline.report.equivalence import compare_effects, welch_interval
from pipeline.report.power import seeds_for_power
from pipeline.report.sequential import (
    DEFAULT_COMPARISONS,
    classify,
    confidence_sequence,
    decide,
    decide_study,
    evidence,
    log_evidence,
    paired_differences,
    radius_factor,
    sequence_bounds,
)

ALPHA = 0.05
MAX_SEEDS = 30
STUDIES = 4000


def upper_bound(studies: int, rate: float = ALPHA) -> int:
    """The most errors that a true rate of `rate` gives with probability 99.9 %."""
    return int(stats.binom.ppf(0.999, studies, rate))


def stopped(paths: np.ndarray, looks: list[int], margin: float = 0.0):
    """Kind and seed count at which each simulated study stops: the first look with a settled
    verdict, else the last look (then "open")."""
    low, high = sequence_bounds(paths, ALPHA)
    columns = np.asarray(looks) - 1
    kinds = classify(low[:, columns], high[:, columns], margin)
    settled = kinds != "open"
    first = np.where(settled.any(axis=1), settled.argmax(axis=1), len(looks) - 1)
    rows = np.arange(len(paths))
    return kinds[rows, first], np.asarray(looks)[first]


def draws(kind: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Differences with mean 0: normal, or Student t with 3 df (heavy tails, infinite kurtosis)."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return 0.02 * rng.standard_normal(shape)
    return 0.02 * rng.standard_t(3, shape)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_evidence_has_mean_one_under_the_null(n):
    """E_n is an e-value: its mean under the null (t ~ Student t with n - 1 df) is exactly 1.
    An off-by-one in the degrees of freedom or the exponent fails this."""
    nu = n - 1

    def integrand(t: float) -> float:
        return math.exp(log_evidence(np.array(t * t), np.array(n))) * stats.t.pdf(t, nu)

    mean, _ = integrate.quad(integrand, -np.inf, np.inf, epsabs=1e-11, limit=200)
    assert mean == pytest.approx(1.0, abs=1e-7)


def test_evidence_is_the_bayes_factor_of_its_definition():
    """The closed form equals the mixture it stands for: a right-Haar prior 1/sigma on the sd, a
    N(0, sigma²) prior on the mean under the alternative (phi = 1), integrated numerically."""
    y = np.array([0.3, -0.2, 1.1, 0.7, 0.05, 0.9])
    n, ybar, spread = y.size, float(y.mean()), float(((y - y.mean()) ** 2).sum())

    def likelihood(mean: float, sd: float) -> float:
        return (2 * math.pi * sd * sd) ** (-n / 2) * math.exp(
            -(spread + n * (ybar - mean) ** 2) / (2 * sd * sd)
        )

    def prior(mean: float, sd: float) -> float:
        return math.exp(-mean * mean / (2 * sd * sd)) / (math.sqrt(2 * math.pi) * sd)

    null = integrate.quad(lambda sd: likelihood(0.0, sd) / sd, 0, np.inf, limit=200)[0]
    alternative = integrate.dblquad(
        lambda mean, sd: likelihood(mean, sd) * prior(mean, sd) / sd, 1e-3, 50, -30, 30
    )[0]
    assert evidence(y) == pytest.approx(alternative / null, rel=1e-6)


def test_interval_edges_are_where_evidence_reaches_one_over_alpha():
    rng = np.random.default_rng(1)
    values = 0.01 + 0.02 * rng.standard_normal(12)
    for n in (5, 8, 12):
        head = values[:n]
        radius = radius_factor(n, ALPHA) * head.std(ddof=1) / math.sqrt(n)
        for edge in (head.mean() - radius, head.mean() + radius):
            assert evidence(head, edge) == pytest.approx(1 / ALPHA, rel=1e-9)
        assert evidence(head, head.mean()) < 1  # the mean itself is never rejected
    assert math.isinf(radius_factor(4, ALPHA))  # four seeds cannot settle anything at 5 %


def test_one_study_equals_its_row_in_the_simulation():
    paths = np.random.default_rng(2).normal(0.01, 0.02, (5, 20))
    low, high = sequence_bounds(paths, ALPHA)
    for row in range(5):
        for n in (3, 5, 11, 20):
            interval = confidence_sequence(paths[row, :n], ALPHA)
            assert (interval.low, interval.high) == pytest.approx(
                (low[row, n - 1], high[row, n - 1])
            )
            assert interval.n == n and interval.mean == pytest.approx(paths[row, :n].mean())


@pytest.mark.parametrize("distribution", ["normal", "student_t3"])
@pytest.mark.parametrize("batch", [1, 5])
def test_looking_after_every_batch_keeps_wrong_signs_within_alpha(distribution, batch):
    """Mean 0; margin 0 so no study stops as "negligible": each runs to 30 seeds unless a look
    shows a sign, and any sign is wrong. Naive fixed-n t intervals at the same looks go wrong far
    more often than alpha, so this simulation does catch an invalid method."""
    paths = draws(distribution, (STUDIES, MAX_SEEDS), seed=10 + batch)
    looks = list(range(batch if batch > 1 else 2, MAX_SEEDS + 1, batch))
    kinds, _ = stopped(paths, looks)
    wrong = int(np.isin(kinds, ["positive", "negative"]).sum())
    assert wrong <= upper_bound(STUDIES), f"{wrong} wrong signs in {STUDIES} studies"

    n = np.asarray(looks)
    means = np.cumsum(paths, axis=1)[:, n - 1] / n
    sds = np.array([paths[:, :k].std(axis=1, ddof=1) for k in n]).T
    naive = np.abs(means) / (sds / np.sqrt(n)) > stats.t.ppf(1 - ALPHA / 2, n - 1)
    assert naive.any(axis=1).sum() > 2 * upper_bound(STUDIES)


@pytest.mark.parametrize("batch", [2, 5])
def test_an_effect_of_one_sd_is_settled_within_20_seeds(batch):
    paths = np.random.default_rng(20 + batch).normal(0.02, 0.02, (2000, MAX_SEEDS))
    kinds, used = stopped(paths, list(range(batch, MAX_SEEDS + 1, batch)))
    within_20 = np.mean((kinds == "positive") & (used <= 20))
    assert within_20 >= 0.80
    assert np.mean(kinds == "negative") == 0


def test_a_zero_effect_is_settled_as_negligible_and_rarely_signed():
    paths = np.random.default_rng(30).normal(0.0, 0.005, (STUDIES, MAX_SEEDS))
    kinds, used = stopped(paths, list(range(5, MAX_SEEDS + 1, 5)), margin=0.01)
    assert np.mean(kinds == "negligible") >= 0.9
    assert np.isin(kinds, ["positive", "negative"]).sum() <= upper_bound(STUDIES)
    assert used.mean() < 20


def test_negligible_is_rarely_said_of_an_effect_as_large_as_the_margin():
    """Mean = margin: the effect is not negligible, so "negligible" is a wrong verdict."""
    paths = np.random.default_rng(31).normal(0.01, 0.01, (STUDIES, MAX_SEEDS))
    kinds, _ = stopped(paths, list(range(2, MAX_SEEDS + 1)), margin=0.01)
    assert (kinds == "negligible").sum() <= upper_bound(STUDIES)
    assert (kinds == "negative").sum() <= upper_bound(STUDIES)


def test_decide_kinds_and_edges():
    assert decide([0.03, 0.031, 0.029, 0.030, 0.032]).kind == "positive"
    assert decide([-0.03, -0.031, -0.029, -0.030, -0.032]).kind == "negative"
    assert decide([0.001, -0.001, 0.0, 0.0005, -0.0005], margin=0.01).kind == "negligible"
    few = decide([0.03, 0.031, 0.029, 0.030])
    assert few.kind == "open" and math.isinf(few.interval.low) and few.sd is not None
    same = decide([0.01] * 6)  # all equal: the interval is the point
    assert same.kind == "positive" and same.interval.low == same.interval.high == 0.01
    assert same.normality_p is None
    empty = decide([])
    assert empty.kind == "open" and empty.n == 0 and empty.sd is None
    with pytest.raises(ValueError, match=r"alpha=1\.5"):
        decide([0.1] * 5, alpha=1.5)
    with pytest.raises(ValueError, match=r"margin=-0\.1"):
        decide([0.1] * 5, margin=-0.1)
    with pytest.raises(ValueError, match="nan"):
        decide([0.1, float("nan"), 0.1, 0.1, 0.1])


def test_a_settled_verdict_stays_settled():
    """The reported interval is the running intersection: a sign once shown stays."""
    values = np.random.default_rng(4).normal(0.02, 0.02, 30)
    kinds = [decide(values[:n]).kind for n in range(5, 31)]
    first = next(i for i, kind in enumerate(kinds) if kind != "open")
    assert set(kinds[first:]) == {"positive"}


def test_a_study_decides_every_comparison():
    values = {
        "scratch": {0: 0.70, 1: 0.71, 2: 0.69, 3: 0.70, 4: 0.72, 5: 0.70},
        "feature_extraction": {0: 0.80, 1: 0.81, 2: 0.79, 3: 0.80, 4: 0.82, 5: 0.805},
        "fine_tune": {1: 0.80, 2: 0.80, 3: 0.79, 4: 0.83, 5: 0.80, 6: 0.9},  # seed 0 missing
    }
    differences = paired_differences(values)
    assert differences[("fine_tune", "scratch")] == pytest.approx([0.09, 0.11, 0.09, 0.11, 0.10])
    study = decide_study(differences, margin=0.005)
    assert list(study.verdicts) == list(DEFAULT_COMPARISONS)
    assert study.verdicts[("feature_extraction", "scratch")].kind == "positive"
    assert study.verdicts[("fine_tune", "feature_extraction")].kind == "open"
    assert not study.all_settled and study.open == [("fine_tune", "feature_extraction")]
    assert decide_study(differences, familywise=True).alpha == pytest.approx(ALPHA / 3)
    with pytest.raises(ValueError, match="fine_tune - scratch"):
        decide_study({("feature_extraction", "scratch"): [0.1] * 5})


def test_replications_of_the_same_effect_agree_and_are_equivalent():
    rng = np.random.default_rng(40)
    results = [
        compare_effects(rng.normal(0.03, 0.01, 15), rng.normal(0.03, 0.01, 15), margin=0.015)
        for _ in range(300)
    ]
    assert np.mean([r.signs_agree for r in results]) >= 0.95
    assert np.mean([r.equivalent for r in results]) >= 0.9
    assert np.mean([r.status == "replicated" for r in results]) >= 0.95


def test_a_shifted_replication_is_not_equivalent():
    rng = np.random.default_rng(41)
    results = [
        compare_effects(rng.normal(0.03, 0.01, 15), rng.normal(-0.03, 0.01, 15), margin=0.015)
        for _ in range(300)
    ]
    assert not any(r.equivalent for r in results)
    assert np.mean([r.status == "opposite" for r in results]) >= 0.9
    assert all(r.replicated is False for r in results if r.original.settled)


def test_equivalence_is_rarely_claimed_of_effects_a_margin_apart():
    """True difference = margin, unequal sds and sizes: TOST's error is at most alpha."""
    rng = np.random.default_rng(42)
    claims = 0
    for _ in range(STUDIES):
        low, high, _ = welch_interval(
            rng.normal(0.03, 0.02, 12), rng.normal(0.04, 0.01, 20), 1 - 2 * ALPHA
        )
        claims += low > -0.01 and high < 0.01
    assert claims <= upper_bound(STUDIES)


def test_replication_statuses_and_bad_input():
    positive = [0.03, 0.031, 0.029, 0.030, 0.032]
    assert compare_effects(positive, [-v for v in positive]).status == "opposite"
    assert compare_effects(positive, [0.03, -0.03, 0.03, -0.03, 0.03]).status == "not confirmed"
    no_claim = compare_effects([0.03, -0.03, 0.03, -0.03, 0.03], positive)
    assert no_claim.status == "no claim" and no_claim.replicated is None
    assert math.isinf(compare_effects(positive, [0.03]).low)
    with pytest.raises(ValueError, match=r"alpha=0\.6"):
        compare_effects(positive, positive, alpha=0.6)


def prefix(effect: float, n: int = 5, sd: float = 0.02) -> np.ndarray:
    """n differences whose mean and sd are exactly `effect` and `sd`."""
    noise = np.random.default_rng(50).standard_normal(n)
    return effect + sd * (noise - noise.mean()) / noise.std(ddof=1)


def test_seeds_for_power_grows_as_the_effect_shrinks():
    needed = [seeds_for_power(prefix(e), max_seeds=200) for e in (0.04, 0.03, 0.02, 0.015, 0.01)]
    assert all(decide(prefix(e)).kind == "open" for e in (0.03, 0.02, 0.015, 0.01))
    assert all(isinstance(k, int) and k > 0 for k in needed), needed
    assert needed == sorted(needed) and needed[0] < needed[-1]
    assert seeds_for_power(prefix(0.002), max_seeds=60) is None  # beyond the cap
    assert seeds_for_power([0.01]) is None  # no sd from one seed
    assert seeds_for_power([0.03, 0.031, 0.029, 0.030, 0.032]) == 0  # settled already
    assert seeds_for_power(prefix(0.02)) == seeds_for_power(prefix(0.02))  # deterministic


@pytest.mark.parametrize("effect", [0.03, 0.02, 0.015])
def test_seeds_for_power_is_calibrated(effect):
    """Continue the same prefix with independent draws and decide each study with the public
    `confidence_sequence`: the suggested count reaches the power, one fewer does not."""
    start = prefix(effect)
    further = seeds_for_power(start, power=0.8, max_seeds=200)
    assert further is not None and further > 1
    rng = np.random.default_rng(60)
    rates = []
    for total in (len(start) + further - 1, len(start) + further):
        right = 0
        for _ in range(1500):
            study = np.concatenate([start, rng.normal(effect, 0.02, total - len(start))])
            interval = confidence_sequence(study, ALPHA)  # settled by `total`: intersection
            right += interval.low > 0
        rates.append(right / 1500)
    assert rates[0] < 0.8 + 0.035 and rates[1] >= 0.8 - 0.035, rates


def reference_seeds_for_power(differences, alpha, margin, power, max_seeds, batch, min_seeds):
    """seeds_for_power as first written: every look at once, verdicts as strings (the fast one
    takes the looks in growing prefixes and the verdicts as codes, and must answer the same)."""
    values = np.asarray(differences, dtype=float)
    n = values.size
    if decide(values, alpha, margin, min_seeds).settled:
        return 0
    if n < 2 or n >= max_seeds:
        return None
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    future = mean + sd * np.random.default_rng(0).standard_normal((2000, max_seeds - n))
    paths = np.concatenate([np.broadcast_to(values, (2000, n)), future], axis=1)
    looks = np.unique(np.append(np.arange(n + batch, max_seeds + 1, batch), max_seeds))
    low, high = sequence_bounds(paths[:, : looks[-1]], alpha, min_seeds)
    kinds = classify(low[:, looks - 1], high[:, looks - 1], margin)
    settled = kinds != "open"
    first = np.where(settled.any(axis=1), settled.argmax(axis=1), looks.size)
    last = kinds[np.arange(2000), np.minimum(first, looks.size - 1)]
    signed = ("positive",) if mean > 0 else ("negative",) if mean < 0 else ()
    right_kinds = (*signed, "negligible") if abs(mean) < margin else signed
    right = (first < looks.size) & np.isin(last, right_kinds)
    reached = np.cumsum(np.bincount(first[right], minlength=looks.size)) / 2000
    enough = np.flatnonzero(reached >= power)
    return None if enough.size == 0 else int(looks[enough[0]] - n)


def test_seeds_for_power_answers_as_the_whole_simulation_did():
    """Soon-settled, late, never (None) and negligible cases, batches of 1 and 3, margins."""
    rng = np.random.default_rng(70)
    answers = []
    for case in range(40):
        n = int(rng.integers(2, 8))
        effect = float(rng.choice([0.0, 0.002, 0.005, 0.01, 0.02, -0.03, 0.08]))
        values = effect + 0.02 * rng.standard_normal(n)
        margin, batch = float(rng.choice([0.0, 0.01, 0.02])), int(rng.choice([1, 3]))
        max_seeds = int(rng.choice([30, 100]))
        args = (values, 0.05, margin, 0.8, max_seeds, batch, 5)
        answers.append(seeds_for_power(*args))
        assert answers[-1] == reference_seeds_for_power(*args), (case, args)
    assert None in answers and len({a for a in answers if a is not None}) > 5, answers


def test_classify_keeps_its_kinds():
    low = np.array([0.01, -0.05, -0.005, -0.05, np.nan, -np.inf])
    high = np.array([0.05, -0.01, 0.005, 0.05, 0.01, np.inf])
    assert classify(low, high, 0.01).tolist() == [
        "positive", "negative", "negligible", "open", "open", "open"
    ]  # fmt: skip
    assert str(classify(np.array(0.02), np.array(0.03), 0.0)) == "positive"
