"""`python -m pipeline.report [key=value ...]`: write the report of a study and log it to MLflow.

    python -m pipeline.report                                   # experiment transfer-lab
    python -m pipeline.report experiment_name=cats-dogs-mobilenet sweep_id=<id> out=reports/cats
    python -m pipeline.report tags.dataset=digits params.lr.fine_tune=0.001

A mistake (an unknown key, experiment or sweep, an empty study, no store) is one line and exit 2,
with nothing written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipeline import PROJECT_ROOT
from pipeline.cli.exit_codes import EXIT_CONFIG
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
    from pipeline.tracking.reports import log_report_run, open_reader
    from pipeline.tracking.secrets import redact_text
    from pipeline.tracking.store import resolve_uri

    if cfg.variant_figures < 0:
        raise ConfigError(f"variant_figures={cfg.variant_figures} must be >= 0")
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
    report.experiment = cfg.experiment_name
    report.tracking_uri = redact_text(uri)
    report.filter = filter_string(cfg)
    report.generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    folder = Path(cfg.out) if cfg.out else PROJECT_ROOT / "reports" / cfg.experiment_name
    try:
        files = write_report(report, folder, cfg.variant_figures)
    except OSError as error:
        where = f"out={cfg.out}" if cfg.out else str(folder)
        problem = f"{error.strerror}: {error.filename}"
        raise ConfigError(f"{where} cannot be written: {problem}") from None
    if cfg.log_to_mlflow:
        run_id = log_report_run(reader, files, {"report_filter": report.filter})
        print(f"logged as artifacts of run {run_id} (report/)")
    return folder, files


def main(argv: list[str]) -> int:
    try:
        folder, files = make_report(parse(argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"report written to {folder}:")
    for path in files:
        if path.suffix != ".png":
            print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
