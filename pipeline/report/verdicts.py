"""What each comparison of a study settles: the anytime-valid verdict (sequential.py) beside the
fixed-n intervals, and for an open one the further seeds for 80 % power (power.py) with the
command of the sequential sweep that runs them.

The settings (alpha, margin, min_seeds) are the report's options; those not given come from the
study's sequential sweep run (tags `sequential.alpha`, ...) when every sweep run behind the study
is one with the same settings, else the sweeper's defaults, so that the report asks the question
the sweep asked.
"""

from __future__ import annotations

import logging
import shlex

from pipeline.errors import ConfigError
from pipeline.report.power import seeds_for_power
from pipeline.report.records import GainRecord, VariantRecord, VerdictSettings
from pipeline.report.sequential import METHOD, decide

log = logging.getLogger(__name__)

POWER = 0.8
POWER_MAX_SEEDS = 100  # seeds per variant the power simulation considers at most
SWEEP_COMMAND = "python -m pipeline -m hydra/sweeper=sequential"
KEYS = ("alpha", "margin", "min_seeds")


def check_settings(alpha: float | None, margin: float | None, min_seeds: int | None) -> None:
    """ConfigError naming the report option and what is allowed (the sweeper's own limits)."""
    if alpha is not None and not 0 < alpha < 0.5:
        raise ConfigError(f"alpha={alpha} but it must lie in (0, 0.5)")
    if margin is not None and not 0 <= margin < 1:
        raise ConfigError(f"margin={margin} but it must lie in [0, 1) (a test accuracy difference)")
    if min_seeds is not None and min_seeds < 2:
        raise ConfigError(f"min_seeds={min_seeds} but it must be >= 2 (an sd needs two seeds)")


def sweep_settings(sweeps: list[dict[str, str]]) -> dict[str, float | int] | None:
    """The settings of the sweep runs' tags when all are sequential and agree, else None."""
    found = set()
    for tags in sweeps:
        if tags.get("sequential") != "true":
            return None
        found.add(tuple(tags.get(f"sequential.{key}") for key in KEYS))
    if len(found) != 1 or None in next(iter(found)):
        return None
    alpha, margin, min_seeds = next(iter(found))
    try:
        values = {"alpha": float(alpha), "margin": float(margin), "min_seeds": int(min_seeds)}
        check_settings(**values)
    except (ValueError, ConfigError) as error:
        log.warning("the sweep run's sequential settings are unusable (%s): defaults used", error)
        return None
    return values


def settings_for(given: dict, sweeps: dict[str, dict[str, str]]) -> VerdictSettings:
    """`given` (option -> value or None) over the sweep runs' settings over the defaults;
    `sweeps`: sweep run id -> its tags, for the runs the study's experiment runs are nested in."""
    from_sweep = sweep_settings(list(sweeps.values())) if sweeps else None
    chosen = {k: v for k, v in given.items() if v is not None}
    sources = ["options"] if chosen else []
    if from_sweep is not None and len(chosen) < len(KEYS):
        sources.append(f"sweep {next(iter(sweeps))}")
        chosen = {**from_sweep, **chosen}
    source = "+".join(sources) or "defaults"
    return VerdictSettings(**chosen, source=source, method=METHOD, power=POWER)


def command(variant: VariantRecord, total: int, settings: VerdictSettings) -> str:
    """The sequential sweep over this variant's settings up to `total` seeds, asking the same
    question as the report (its alpha, margin, min_seeds where not the sweeper's defaults)."""
    words = [SWEEP_COMMAND]
    words += [shlex.quote(f"{key}={value}") for key, value in sorted(variant.settings.items())]
    defaults = VerdictSettings()  # the sequential sweeper's defaults
    for key in KEYS:
        if getattr(settings, key) != getattr(defaults, key):
            words.append(f"hydra.sweeper.{key}={getattr(settings, key)}")
    return " ".join([*words, f"hydra.sweeper.max_seeds={total}"])


def judge(gain: GainRecord, variant: VariantRecord, settings: VerdictSettings) -> None:
    """Fill `gain`'s verdict fields from its per-seed differences (seed order)."""
    s = settings
    verdict = decide(gain.differences, s.alpha, s.margin, s.min_seeds)
    gain.verdict = verdict.kind
    gain.anytime_low = finite(verdict.interval.low)
    gain.anytime_high = finite(verdict.interval.high)
    if verdict.settled:
        return
    n = len(gain.differences)
    extra = seeds_for_power(
        gain.differences, s.alpha, s.margin, POWER, max(POWER_MAX_SEEDS, n + 1), 1, s.min_seeds
    )
    gain.further_seeds = extra
    if extra is not None:
        gain.further_command = command(variant, n + extra, settings)


def finite(value: float) -> float | None:
    """None for an infinite end (too few seeds): JSON has no infinity."""
    return value if abs(value) != float("inf") else None


def judge_study(variants: list[VariantRecord], settings: VerdictSettings) -> None:
    for variant in variants:
        for gain in variant.gains:
            judge(gain, variant, settings)


def sweep_tags(run_tags, invocations) -> dict[str, dict[str, str]]:
    """Sweep run id -> its tags, for the runs the experiment runs are nested in (`run_tags`:
    run id -> tags, one read per distinct sweep run)."""
    ids = sorted({r.parent.parent_id for r in invocations if r.parent.parent_id})
    return {run_id: run_tags(run_id) for run_id in ids}


def apply(study, given: dict, reader, invocations) -> None:
    """The study's settings (`given` over its sequential sweep run's); every gain judged."""
    sweeps = sweep_tags(lambda run_id: reader.run(run_id).tags, invocations)
    study.verdict_settings = settings_for(given, sweeps)
    judge_study(study.variants, study.verdict_settings)
