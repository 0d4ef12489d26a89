"""`python -m pipeline.replicate <sweep run id | the report's filters> [seeds=same|new]
[max_seeds=30] [margin=0.01] [alpha=0.05] [min_seeds=5] [tracking_uri=...] [overrides ...]`:
re-run a finished study here and check its claims.

Every variant of the study runs again as one new multirun (`python -m pipeline -m ...`, through
whatever launcher the `hydra/launcher=...` overrides given choose); its sweep run is tagged
`replicates=<the study's sweep run>`. `seeds=same` runs the study's seeds again, a fixed set.
`seeds=new` runs new seeds sequentially, as the study's own sequential sweep did: the multirun
is `hydra/sweeper=sequential` from the seed after the study's largest, in batches
(`hydra.sweeper.batch_size=...` as an override), until every comparison the original settled is
settled here too, either way, or `max_seeds` new seeds per variant have run (the same
anytime-valid rule, alpha, margin and min_seeds decide; seeds of that range FINISHED in the store
already count). Per variant and comparison of test accuracy, the original's anytime-valid
verdict and the replication's stand side by side, with whether their signs agree and whether the
two effects are equivalent within ±margin (report/equivalence.py). Any other `key=value` is a
config override for the new runs (a changed config replicates, or not, too).

Exit 0: every settled claim of the original replicated; 1: one did not (named in one line), or the
replication's sweep failed; 2: bad input (an unknown run, a run that is not a study, an empty
study, an option or an override), one line, before anything runs; 130: Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline import PROJECT_ROOT
from pipeline.cli.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED
from pipeline.cli.options import parse_options
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

USAGE = (
    "usage: python -m pipeline.replicate <sweep run id | sweep_id=... tags.<name>=... "
    "params.<key>=...> [seeds=same|new] [max_seeds=30] [margin=0.01] [alpha=0.05] "
    "[min_seeds=5] [tracking_uri=] [overrides]"
)
SEEDS = ("same", "new")
SWEEPER_KEYS = ("alpha", "margin", "min_seeds")  # the sequential sweeper decides as replicate does


@dataclass
class ReplicateOptions:
    seeds: str = "same"  # same | new
    max_seeds: int = 30  # seeds=new: new seeds per variant at most (the sequential sweep's cap)
    margin: float = 0.01  # the smallest difference in test accuracy that matters
    alpha: float = 0.05
    min_seeds: int = 5  # no verdict before this many seeds (sequential.MIN_SEEDS)
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else the project's store
    experiment_name: str = "transfer-lab"  # with filters: the experiment they select in
    sweep_id: str | None = None  # with filters: the jobs of this sweep (as the report's)


@dataclass
class Request:
    """What the command line asks for."""

    run_id: str | None
    options: ReplicateOptions
    tags: dict[str, str]
    params: dict[str, str]
    overrides: list[str]  # config and hydra/launcher overrides for the new multirun


def parse(argv: list[str]) -> Request:
    """Split the command line into the study, replicate's options, and overrides."""
    keys = {f.name for f in fields(ReplicateOptions)}
    ids, dotlist, overrides = [], [], []
    filters: dict[str, dict[str, str]] = {"tags": {}, "params": {}}
    for argument in argv:
        key, equals, value = argument.partition("=")
        kind, dot, name = key.partition(".")
        if not equals:
            ids.append(argument)
        elif key in keys:
            dotlist.append(argument)
        elif dot and name and kind in filters:
            filters[kind][name] = value
        else:
            overrides.append(argument)
    options = parse_options(ReplicateOptions, dotlist, "pipeline.replicate")
    given_filters = options.sweep_id is not None or filters["tags"] or filters["params"]
    if len(ids) > 1 or (ids and given_filters) or not (ids or given_filters):
        raise ConfigError(f"{' '.join(ids) or 'no study given'}: {USAGE}")
    check(options)
    return Request(ids[0] if ids else None, options, filters["tags"], filters["params"], overrides)


def check(options: ReplicateOptions) -> None:
    from pipeline.report.sequential import check as check_statistics

    if options.seeds not in SEEDS:
        raise ConfigError(f"seeds={options.seeds} but it must be one of: {', '.join(SEEDS)}")
    try:
        check_statistics(options.alpha, options.margin, options.min_seeds)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if options.alpha >= 0.5:
        raise ConfigError(f"alpha={options.alpha} but the equivalence test needs alpha < 0.5")
    if options.max_seeds < options.min_seeds:
        raise ConfigError(
            f"max_seeds={options.max_seeds} but it must be >= min_seeds={options.min_seeds}"
        )


def original_study(request: Request, uri: str):
    """(reader, the study's experiment runs, what the new sweep run replicates)."""
    from pipeline.tracking.studies import open_sweep_run, sweep_study

    if request.run_id is not None:
        reader, sweep = open_sweep_run(uri, request.run_id)
        runs = sweep_study(reader, sweep)
        if not runs:
            raise ConfigError(f"sweep run {sweep.run_id} has no FINISHED experiment run")
        return reader, runs, sweep.run_id
    return filtered_study(request, uri)


def filtered_study(request: Request, uri: str):
    """The study the report's filters select: its FINISHED runs, not reproductions."""
    from pipeline.report.__main__ import ReportConfig, filter_string
    from pipeline.tracking.reports import open_reader

    options = request.options
    report = ReportConfig(
        experiment_name=options.experiment_name,
        sweep_id=options.sweep_id,
        tags=request.tags,
        params=request.params,
    )
    reader = open_reader(uri, options.experiment_name)
    selected = filter_string(report)
    runs = [
        run
        for run in reader.experiment_runs(selected)
        if run.parent.status == "FINISHED" and "reproduces" not in run.parent.tags
    ]
    if not runs:
        raise ConfigError(f"no FINISHED experiment run matches {selected!r}: nothing to replicate")
    sweeps = {run.parent.parent_id for run in runs}
    if len(sweeps) == 1 and None not in sweeps:
        return reader, runs, sweeps.pop()
    ids = ",".join(sorted(run.parent.run_id for run in runs))
    return reader, runs, "study-" + hashlib.sha256(ids.encode()).hexdigest()[:12]


def multirun_command(
    grid: list[str], seeds: list[int], comparisons: list[str], request: Request, uri: str, tag: str
) -> list[str]:
    """`python -m pipeline -m <grid> ...`: the fixed seeds (same), or the sequential sweeper over
    `seeds` until `comparisons` are settled (new)."""
    options = request.options
    command = [sys.executable, "-m", "pipeline", "-m", *grid]
    if options.seeds == "same":  # their config hashes are FINISHED already
        command += [f"seed={','.join(map(str, seeds))}", "sweep.skip_finished=false"]
    else:
        command += ["hydra/sweeper=sequential", f"hydra.sweeper.first_seed={seeds[0]}"]
        command += [f"hydra.sweeper.max_seeds={len(seeds)}"]
        command += [f"hydra.sweeper.{key}={getattr(options, key)}" for key in SWEEPER_KEYS]
        if comparisons:
            command.append(f"hydra.sweeper.comparisons=[{','.join(comparisons)}]")
    command += [f"tracking.uri={uri}", f"sweep.replicates={tag}"]
    return command + request.overrides


def run_multirun(command: list[str]) -> int:
    """The new multirun, its output on this terminal; stopped with SIGTERM on an interrupt."""
    log.info("replicating: %s", " ".join(command))
    process = subprocess.Popen(command, cwd=PROJECT_ROOT)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()  # the sweep's own handler ends its runs KILLED
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def replicate(request: Request) -> int:
    from pipeline.report import replication as rep
    from pipeline.tracking.store import resolve_uri
    from pipeline.tracking.studies import replication_sweep, sweep_study

    options = request.options
    uri = resolve_uri(options.tracking_uri)
    reader, runs, tag = original_study(request, uri)
    original = rep.study_variants(runs)
    replaced = {rep.override_key(o) for o in request.overrides}
    seeds = rep.seeds_to_run(original, options.seeds, options.max_seeds)
    claims = rep.settled_comparisons(original, options.alpha, options.margin, options.min_seeds)
    command = multirun_command(rep.grid(original, replaced), seeds, claims, request, uri, tag)
    started = int(time.time() * 1000) - 1000
    code = run_multirun(command)
    if code != 0:
        if code != EXIT_CONFIG:  # a bad override: the multirun said so in one line already
            print(f"error: the replication's multirun exited {code}", file=sys.stderr)
        return code
    sweep = replication_sweep(reader, tag, started)
    if sweep is None:
        raise ConfigError(f"no sweep run tagged replicates={tag}: was tracking off?")
    own_seeds = options.seeds == "same"
    again = rep.matched(original, sweep_study(reader, sweep), replaced, seeds, own_seeds)
    rows = rep.compare_studies(original, again, options.alpha, options.margin, options.min_seeds)
    return conclude(reader, sweep.run_id, tag, rows, request)


def conclude(reader, run_id: str, tag: str, rows, request: Request) -> int:
    """Print the table, log it on the replication's sweep run, and say whether it replicated."""
    from pipeline.report import replication as rep
    from pipeline.tracking.studies import log_replication

    options = request.options
    lines = rep.table(rows)
    print(f"replication of {tag} (sweep run {run_id}), seeds={options.seeds}, "
          f"alpha={options.alpha}, margin={options.margin}:")  # fmt: skip
    print(rep.text_table(lines))
    failed = [row for row in rows if row.result.replicated is False]
    about = {"replicates": tag, "sweep_run_id": run_id, "seeds": options.seeds}
    about["max_seeds"] = options.max_seeds if options.seeds == "new" else None
    about |= {"alpha": options.alpha, "margin": options.margin, "overrides": request.overrides}
    tags = {rep.tag_key(row): row.result.status for row in rows}
    tags["replicated"] = "false" if failed else "true"
    metrics = {}
    for row in rows:
        for key in ("difference", "low", "high"):
            value = getattr(row.result, key)
            if value == value and abs(value) != float("inf"):
                metrics[f"{rep.tag_key(row)}.{key}"] = value
    with tempfile.TemporaryDirectory(prefix="transfer-lab-replicate-") as folder:
        files = [Path(folder) / "replication.json", Path(folder) / "replication.md"]
        files[0].write_text(json.dumps(rep.summary(rows, about), indent=2, default=str))
        files[1].write_text(rep.markdown(lines, f"Replication of {tag}"))
        log_replication(reader, run_id, tags, metrics, files)
    if failed:
        named = "; ".join(
            f"{rep.name(row)}: original {rep.interval(row.result.original)}, replication "
            f"{rep.interval(row.result.replication)} ({row.result.status})"
            for row in failed
        )
        print(f"error: not replicated: {named}", file=sys.stderr)
        return EXIT_ERROR
    claims = sum(row.result.replicated is True for row in rows)
    print(f"replicated: {claims} settled claim(s) of {len(rows)} comparison(s) hold here")
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    try:
        request = parse(argv)
        from pipeline.interrupts import interrupts_unwind

        with interrupts_unwind():
            return replicate(request)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("error: interrupted; the replication's runs are marked KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}".splitlines()[0], file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
