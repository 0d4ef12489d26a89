"""`python -m pipeline.report [key=value ...]`: write the report of a study and log it to MLflow.

    python -m pipeline.report                                   # experiment transfer-lab
    python -m pipeline.report experiment_name=cats-dogs-mobilenet sweep_id=<id> out=reports/cats
    python -m pipeline.report tags.dataset=digits params.lr.fine_tune=0.001
    python -m pipeline.report sweep_id=<id> alpha=0.05 margin=0.01 min_seeds=5   # the verdicts

A mistake (an unknown key, experiment or sweep, an empty study, no store) is one line and exit 2,
with nothing written.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipeline import PROJECT_ROOT
from pipeline.cli.exit_codes import EXIT_CONFIG, EXIT_INTERRUPTED
from pipeline.cli.options import parse_options
from pipeline.errors import ConfigError


@dataclass
class ReportConfig:
    experiment_name: str = "transfer-lab"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else the project's SQLite store
    sweep_id: str | None = None  # only the jobs of this sweep (the parent runs' sweep_id tag)
    tags: dict[str, str] = field(default_factory=dict)  # tags.<name>=<value>: parent runs' tags
    params: dict[str, str] = field(default_factory=dict)  # params.<key>=<value>: config values
    out: str | None = None  # None: reports/<experiment_name>
    log_to_mlflow: bool = True  # the files as artifacts of a `report` run
    variant_figures: int = 6  # plots and learning curves for the first this many variants
    # The verdicts' settings (report/verdicts.py); None: the study's sequential sweep run's, else
    # the sweeper's defaults (0.05, 0.01, 5).
    alpha: float | None = None
    margin: float | None = None
    min_seeds: int | None = None


def parse(argv: list[str]) -> ReportConfig:
    """The options; `tags.<name>=<value>` and `params.<key>=<value>` are taken as typed: a name
    may hold dots (`params.lr.fine_tune`, `tags.mlflow.user`), a value stays the string MLflow
    compares with."""
    filters: dict[str, dict[str, str]] = {"tags": {}, "params": {}}
    rest = []
    for argument in argv:
        key, equals, value = argument.partition("=")
        kind, dot, name = key.partition(".")
        if equals and dot and name and kind in filters:
            filters[kind][name] = value
        else:
            rest.append(argument)
    for argument in rest:
        key, equals, value = argument.partition("=")
        if equals and key in ("sweep_id", "experiment_name") and not value:
            raise ConfigError(f"{key}= is empty; allowed: a value, or leave {key} out")
    cfg = parse_options(ReportConfig, rest, "pipeline.report")
    cfg.tags.update(filters["tags"])
    cfg.params.update(filters["params"])
    return cfg


def quoted(key: str, value: str) -> str:
    """`value` as a string of MLflow's filter syntax: in single quotes, or in double quotes when
    it holds a single quote (the syntax has no escape for a quote inside its own quotes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"{key}={value} holds both quote characters: MLflow's filter cannot match it")


def filter_string(cfg: ReportConfig) -> str:
    clauses = []
    if cfg.sweep_id is not None:
        clauses.append(f"tags.sweep_id = {quoted('sweep_id', cfg.sweep_id)}")
    for kind, values in (("tags", cfg.tags), ("params", cfg.params)):
        for name, value in sorted(values.items()):
            if "`" in name:
                raise ConfigError(f"{kind}.{name}: a name with a backquote cannot be filtered on")
            clauses.append(f"{kind}.`{name}` = {quoted(f'{kind}.{name}', value)}")
    return " and ".join(clauses)


def make_report(cfg: ReportConfig) -> tuple[Path, list[Path]]:
    from pipeline.report.render import write_report
    from pipeline.report.study import build_study
    from pipeline.report.verdicts import apply, check_settings
    from pipeline.tracking.reports import log_report_run, open_reader
    from pipeline.tracking.secrets import redact_text
    from pipeline.tracking.store import resolve_uri

    if cfg.variant_figures < 0:
        raise ConfigError(f"variant_figures={cfg.variant_figures} must be >= 0")
    check_settings(cfg.alpha, cfg.margin, cfg.min_seeds)
    uri = resolve_uri(cfg.tracking_uri)
    reader = open_reader(uri, cfg.experiment_name)
    invocations = reader.experiment_runs(filter_string(cfg))
    if not invocations:
        where = f" with sweep_id={cfg.sweep_id}" if cfg.sweep_id else ""
        raise ConfigError(
            f"no experiment run in {cfg.experiment_name!r}{where} matches: nothing to report"
        )
    report = build_study(
        invocations,
        lambda run_ids: reader.metric_histories(run_ids, "val_accuracy"),
        cfg.variant_figures,
    )
    if not report.variants:
        raise ConfigError(
            f"none of the {len(invocations)} matching run(s) FINISHED: nothing to report"
        )
    given = {"alpha": cfg.alpha, "margin": cfg.margin, "min_seeds": cfg.min_seeds}
    apply(report, given, reader, invocations)
    report.experiment = cfg.experiment_name
    report.tracking_uri = redact_text(uri)
    report.filter = filter_string(cfg)
    report.generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    folder = Path(cfg.out) if cfg.out else PROJECT_ROOT / "reports" / cfg.experiment_name
    existed = folder.exists()
    try:
        files = write_report(report, folder, cfg.variant_figures)
    except BaseException as error:
        if not existed:  # an interrupted or failed write leaves no half-written folder
            shutil.rmtree(folder, ignore_errors=True)
        if not isinstance(error, OSError):
            raise
        where = f"out={cfg.out}" if cfg.out else str(folder)
        problem = f"{error.strerror}: {error.filename}"
        raise ConfigError(f"{where} cannot be written: {problem}") from None
    if cfg.log_to_mlflow:
        run_id = log_report_run(reader, files, {"report_filter": report.filter})
        print(f"logged as artifacts of run {run_id} (report/)")
    return folder, files


def main(argv: list[str]) -> int:
    from pipeline.interrupts import interrupts_unwind

    try:
        with interrupts_unwind():  # Ctrl-C and SIGTERM: one line, 130 (a report run ends KILLED)
            folder, files = make_report(parse(argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt as interrupt:
        reason = str(interrupt) or "Ctrl-C"
        print(f"error: interrupted ({reason}); the report was not finished", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"report written to {folder}:")
    for path in files:
        if path.suffix != ".png":
            print(f"  {path}")
    return 0


def exit_now(code: int) -> None:
    """End with `code` itself. After an interrupt, CPython can end the process by SIGINT instead
    of the 130 main returned (seen once in a full test run: -2) when it took the KeyboardInterrupt
    for an unhandled one somewhere in the imported libraries' code; the report run is ended and the
    output flushed already, so nothing is left for the interpreter's teardown to do."""
    if code != EXIT_INTERRUPTED:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # 143 with no line otherwise
    exit_now(main(sys.argv[1:]))
