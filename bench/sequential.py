"""Anytime-valid verdicts by simulation: wrong signs under optional stopping, and seeds to settle.

Run from the project root with the project's virtual environment active:

    python bench/sequential.py                      # 10,000 simulated studies per figure
    python bench/sequential.py --studies 2000 --max-seeds 30 --alpha 0.05

No training: each simulated study is a sequence of per-seed differences (say fine_tune - scratch
test accuracy), decided by `pipeline.report.sequential` after every batch of seeds, stopped at its
first settled verdict or at `--max-seeds`. Printed, per batch size:

- the share of studies with a wrong signed verdict when the true mean difference is 0 (margin 0:
  no study stops as "negligible", each runs to `--max-seeds` unless a sign shows), for normal
  differences, Student t with 3 df (heavy tails), and two skewed ones outside the method's
  assumptions: gamma with skewness 1, and exponential - 1 (skewness 2);
- with an effect of one sd (mean 0.02, sd 0.02), the share settled positive within 20 seeds and the
  mean number of seeds a study used;
- the same figures for the baseline: a fixed-n 95 % t interval recomputed at every look, which is
  what looking at today's report after each batch amounts to.

Also timed: `seeds_for_power` (median of 20 calls). The figures go to bench/results/sequential.json
with the machine, the date and the versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import scipy
from scipy import stats

from pipeline.report.power import seeds_for_power
from pipeline.report.sequential import (
    METHOD,
    MIN_SEEDS,
    classify,
    sequence_bounds,
)

RESULTS = Path(__file__).resolve().parent / "results" / "sequential.json"
BATCHES = (1, 2, 5)
EFFECT, SD, WITHIN = 0.02, 0.02, 20


def looks_for(batch: int, max_seeds: int) -> np.ndarray:
    """The seed counts at which a study with this batch size is decided."""
    return np.arange(max(batch, 2), max_seeds + 1, batch)


def naive_bounds(paths: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The fixed-n t interval after each prefix (the baseline)."""
    n = np.arange(1, paths.shape[1] + 1)
    mean = np.cumsum(paths, axis=1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(np.maximum(np.cumsum(paths**2, axis=1) - n * mean**2, 0) / (n - 1))
        half = stats.t.ppf(1 - alpha / 2, n - 1) * sd / np.sqrt(n)
    half[:, n < MIN_SEEDS] = np.inf
    return mean - half, mean + half


def stop(paths: np.ndarray, looks: np.ndarray, alpha: float, method: str):
    """Each study's verdict and seed count at its first settled look (else the last look)."""
    bounds = sequence_bounds if method == "anytime" else naive_bounds
    low, high = bounds(paths, alpha)
    kinds = classify(low[:, looks - 1], high[:, looks - 1], 0.0)
    settled = kinds != "open"
    first = np.where(settled.any(axis=1), settled.argmax(axis=1), len(looks) - 1)
    return kinds[np.arange(len(paths)), first], looks[first]


def null_draws(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return SD * rng.standard_normal(shape)
    if kind == "student_t3":
        return SD * rng.standard_t(3, shape)
    if kind == "skewed_gamma_skew1":
        return SD * (rng.gamma(4.0, 1.0, shape) - 4.0) / 2.0  # skewness 2/sqrt(4) = 1
    return SD * (rng.exponential(1.0, shape) - 1.0)  # skewness 2


def figures(studies: int, max_seeds: int, alpha: float, method: str) -> dict:
    rng = np.random.default_rng(0)
    out: dict = {"wrong_sign_rate_at_zero_effect": {}, "one_sd_effect": {}}
    for kind in ("normal", "student_t3", "skewed_gamma_skew1", "skewed_exponential_skew2"):
        paths = null_draws(kind, (studies, max_seeds), rng)
        out["wrong_sign_rate_at_zero_effect"][kind] = {
            str(b): float(np.mean(stop(paths, looks_for(b, max_seeds), alpha, method)[0] != "open"))
            for b in BATCHES
        }
    paths = rng.normal(EFFECT, SD, (studies, max_seeds))
    for batch in BATCHES:
        kinds, used = stop(paths, looks_for(batch, max_seeds), alpha, method)
        out["one_sd_effect"][str(batch)] = {
            f"settled_positive_within_{WITHIN}": float(
                np.mean((kinds == "positive") & (used <= WITHIN))
            ),
            "mean_seeds_used": float(used.mean()),
        }
    return out


def time_power(repeats: int = 20) -> float:
    """Median milliseconds of one `seeds_for_power` call (5 seeds, cap 100)."""
    start_values = [0.031, 0.004, 0.022, -0.008, 0.041]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        seeds_for_power(start_values, margin=0.005, batch=2)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def machine() -> dict:
    model = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"platform": platform.platform(), "cpu_model": model, "cpu_count": os.cpu_count()}


def report(result: dict) -> None:
    """The figures as a table on stdout."""
    print(
        f"{result['method']}; alpha {result['alpha']}, up to {result['max_seeds']} seeds, "
        f"{result['studies']} studies per figure"
    )
    for method in ("anytime", "baseline_fixed_n_t"):
        figs = result[method]
        print(f"\n{method}: wrong signed verdicts at zero effect (share of studies)")
        print(f"{'differences':<26}" + "".join(f"{'batch ' + str(b):>10}" for b in BATCHES))
        for kind, rates in figs["wrong_sign_rate_at_zero_effect"].items():
            print(f"{kind:<26}" + "".join(f"{rates[str(b)]:10.4f}" for b in BATCHES))
        print(f"{method}: effect of one sd ({EFFECT} +- {SD})")
        for batch, row in figs["one_sd_effect"].items():
            share = row[f"settled_positive_within_{WITHIN}"]
            print(
                f"  batch {batch}: settled positive within {WITHIN} seeds {share:.3f}, "
                f"mean seeds used {row['mean_seeds_used']:.1f}"
            )
    normal = result["anytime"]["wrong_sign_rate_at_zero_effect"]["normal"]["1"]
    naive = result["baseline_fixed_n_t"]["wrong_sign_rate_at_zero_effect"]["normal"]["1"]
    print(
        f"\nwrong signs, normal, looking after every seed: anytime / baseline = "
        f"{normal / naive:.2f}; seeds_for_power: {result['seeds_for_power_ms']:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10000, help="simulated studies per figure")
    parser.add_argument("--max-seeds", type=int, default=30, help="seeds a study may use")
    parser.add_argument("--alpha", type=float, default=0.05, help="error rate per comparison")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    if args.studies < 2000 or args.max_seeds < WITHIN or not 0 < args.alpha < 1:
        parser.error("need --studies >= 2000, --max-seeds >= 20 and 0 < --alpha < 1")
    start = time.perf_counter()
    result = {
        "method": METHOD,
        "alpha": args.alpha,
        "batches": list(BATCHES),
        "max_seeds": args.max_seeds,
        "min_seeds": MIN_SEEDS,
        "studies": args.studies,
        "effect": {"mean": EFFECT, "sd": SD, "within_seeds": WITHIN},
        "anytime": figures(args.studies, args.max_seeds, args.alpha, "anytime"),
        "baseline_fixed_n_t": figures(args.studies, args.max_seeds, args.alpha, "baseline"),
        "seeds_for_power_ms": time_power(),  # median of 20 calls
        "seeds_for_power_repeats": 20,
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
    }
    result["seconds"] = round(time.perf_counter() - start, 2)
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
