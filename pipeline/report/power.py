"""How many more seeds would settle an open comparison: a simulation at the observed effect and sd.

The seeds so far are kept; further differences are drawn normal with the observed mean and sample
sd (plug-in values: with few seeds they are rough, so is the answer), and each simulated study is
decided by `sequential` after every `batch` seeds, as the sweep would. The answer is the first
look at which a right verdict (the observed sign; or "negligible" when |mean| < margin) has been
reached in at least `power` of the simulated studies. 2,000 studies of up to 100 seeds take tens
of milliseconds (bench/sequential.py), with a seeded generator: the same seeds, the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from pipeline.report.sequential import (
    KINDS,
    MIN_SEEDS,
    OPEN,
    check,
    confidence_sequence,
    kind_codes,
    sequence_bounds,
)

PREFIX = 2  # looks the first round of a simulation takes


def correct_kinds(mean: float, margin: float) -> tuple[str, ...]:
    """The verdicts that are right if the true mean is `mean`."""
    signed = ("positive",) if mean > 0 else ("negative",) if mean < 0 else ()
    return (*signed, "negligible") if abs(mean) < margin else signed


def seeds_for_power(
    differences: Sequence[float],
    alpha: float = 0.05,
    margin: float = 0.0,
    power: float = 0.8,
    max_seeds: int = 100,
    batch: int = 1,
    min_seeds: int = MIN_SEEDS,
    simulations: int = 2000,
    seed: int = 0,
) -> int | None:
    """Further seeds after which a right verdict has `power` probability, if the true mean and sd
    are the observed ones: the seeds so far, then normal draws, decided after every `batch` (and
    at `max_seeds`, the total considered). 0 if already settled; None beyond `max_seeds` or with
    fewer than two seeds (no sd). A deterministic simulation (seeded generator)."""
    check(alpha, margin, min_seeds)
    if not 0 < power < 1 or batch < 1:
        raise ValueError(f"power={power!r}, batch={batch!r}: need 0 < power < 1 and batch >= 1")
    values = np.asarray(differences, dtype=float)
    n = values.size
    if settled(values, alpha, margin, min_seeds):
        return 0
    if n < 2 or n >= max_seeds:
        return None
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    draws = normal_draws(seed, simulations, max_seeds - n)
    looks = np.unique(np.append(np.arange(n + batch, max_seeds + 1, batch), max_seeds))
    right_kinds = [KINDS.index(kind) for kind in correct_kinds(mean, margin)]
    # The bounds at a look depend only on the seeds up to it (running sums, running max/min),
    # so the looks are taken in growing prefixes and the first prefix that reaches `power`
    # answers, exactly as the whole would, at a fraction of the work when it settles soon.
    for upto in prefixes(looks.size):
        future = mean + sd * draws[:, : looks[upto - 1] - n]
        paths = np.concatenate([np.broadcast_to(values, (simulations, n)), future], axis=1)
        reached = right_fractions(paths, looks[:upto], alpha, margin, min_seeds, right_kinds)
        enough = np.flatnonzero(reached >= power)
        if enough.size:
            return int(looks[enough[0]] - n)
    return None


def settled(values: np.ndarray, alpha: float, margin: float, min_seeds: int) -> bool:
    """`sequential.decide(...).settled`, without the normality test its verdict reports (a scipy
    call, a third of a report's simulations' time)."""
    if values.size < min_seeds:
        return False
    interval = confidence_sequence(values, alpha, min_seeds)
    return int(kind_codes(np.array(interval.low), np.array(interval.high), margin)) != OPEN


def prefixes(size: int, first: int = PREFIX) -> list[int]:
    """How many looks each round takes: 2, 8, 32, ... then all of them (most open comparisons
    of a report settle at the first look: a round of eight took most of their time)."""
    counts = []
    while first < size:
        counts.append(first)
        first *= 4
    return [*counts, size]


def right_fractions(paths, looks, alpha, margin, min_seeds, right_kinds) -> np.ndarray:
    """Per look: the fraction of simulated studies whose first settled look is at or before it
    with a right verdict (a study stops at its first settled look, right or wrong)."""
    simulations = paths.shape[0]
    low, high = sequence_bounds(paths[:, : looks[-1]], alpha, min_seeds)
    kinds = kind_codes(low[:, looks - 1], high[:, looks - 1], margin)
    settled = kinds != OPEN
    first = np.where(settled.any(axis=1), settled.argmax(axis=1), looks.size)
    last = kinds[np.arange(simulations), np.minimum(first, looks.size - 1)]
    right = (first < looks.size) & np.isin(last, right_kinds)
    return np.cumsum(np.bincount(first[right], minlength=looks.size)) / simulations


@lru_cache(maxsize=8)
def normal_draws(seed: int, simulations: int, width: int) -> np.ndarray:
    """The seeded standard normal draws of a simulation (the same for every comparison of a
    report with as many seeds; read-only so that no caller changes them)."""
    draws = np.random.default_rng(seed).standard_normal((simulations, width))
    draws.flags.writeable = False
    return draws
