"""`python -m pipeline.reproduce <run_id> [tolerance=0] [tracking_uri=...]`: re-run a logged run.

Reads the run's logged resolved config (`config.yaml`; a stage or trial run stands for its
experiment run), warns when the code or the key package versions differ from the run's, runs it
again as a new experiment run tagged `reproduces=<run_id>`, prints old and new final metrics side
by side per stage, and exits 0 when every one matches within `tolerance` (default 0: exact, which
deterministic runs on the same machine give), 1 otherwise. The verdict is tagged on the new run
(`reproduced=true|false`). A run id that is not there, or no store: one line, exit 2.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.cli.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED
from pipeline.cli.options import parse_options
from pipeline.cli.process import (
    configured,
    import_tensorflow_quietly,
    quiet_tensorflow_startup,
)
from pipeline.config import Config, register_configs
from pipeline.errors import ConfigError
from pipeline.interrupts import interrupts_unwind

log = logging.getLogger(__name__)

COMPARED = ("test_accuracy", "test_loss", "best_val_accuracy", "best_epoch", "epochs_run")


@dataclass
class ReproduceOptions:
    tolerance: float = 0.0
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else the project's store


def logged_config(reader, run_id: str, uri: str, workdir: Path):
    """The run's resolved config, checked against today's schema, logging to `uri` again (the
    logged URI has its secrets masked)."""
    from pipeline.tracking.reports import download

    path = download(reader, run_id, "config.yaml", workdir)
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    cfg.tracking.uri = uri
    cfg.tracking.enabled = True
    if cfg.search.directory:  # a finished search's state there would be reloaded, not re-run
        cfg.search.directory = str(workdir / "search")
    return cfg


def warnings_for(original: dict[str, str]) -> list[str]:
    """Differences between the run's code and packages and today's."""
    from pipeline.provenance import git_commit, package_versions

    notes = []
    now = git_commit()
    if original.get("git_commit") != now:
        notes.append(f"git commit differs: run {original.get('git_commit')}, now {now}")
    elif now.endswith("-dirty"):
        notes.append("the working tree has uncommitted changes")
    for name, version in package_versions().items():
        logged = original.get(f"version.{name}")
        if logged is not None and logged != version:
            notes.append(f"{name} differs: run {logged}, now {version}")
    return notes


def compare(old: dict, new: dict, tolerance: float) -> tuple[list[list[str]], list[str]]:
    """Rows (stage, metric, old, new) and the metrics that differ beyond `tolerance`."""
    rows, differing = [], []
    for stage in sorted(set(old) | set(new)):
        for metric in COMPARED:
            a = old.get(stage, {}).get(metric)
            b = new.get(stage, {}).get(metric)
            if a is None and b is None:
                continue
            same = a is not None and b is not None and abs(a - b) <= tolerance
            rows.append([stage, metric, fmt(a), fmt(b), "" if same else "DIFFERS"])
            if not same:
                differing.append(f"{stage}.{metric}: {fmt(a)} -> {fmt(b)}")
    return rows, differing


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def finals(invocation) -> dict[str, dict[str, float]]:
    return {stage: dict(run.metrics) for stage, run in invocation.stages.items()}


def reproduce(run_id: str, options: ReproduceOptions) -> int:
    import_tensorflow_quietly()
    from pipeline.experiment import run_experiment
    from pipeline.tracking.reports import open_run, tag_run
    from pipeline.tracking.store import resolve_uri

    uri = resolve_uri(options.tracking_uri)
    reader, original = open_run(uri, run_id)
    for note in warnings_for(original.tags):
        print(f"warning: {note}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="transfer-lab-reproduce-") as workdir:
        cfg = logged_config(reader, original.run_id, uri, Path(workdir))
        tags = {"reproduces": original.run_id, "command": original.tags.get("command", "")}
        with configured(cfg):
            run_experiment(cfg, extra_tags=tags)
    # the new run and the original, each with its own runs only: the experiment may hold thousands
    new = reader.invocation(reader.first(f"tags.reproduces = '{original.run_id}'"))
    old = reader.invocation(original)
    rows, differing = compare(finals(old), finals(new), options.tolerance)
    print_table(original.run_id, new.parent.run_id, rows)
    verdict = "true" if not differing else "false"
    tag_run(reader, new.parent.run_id, {"reproduced": verdict, "tolerance": str(options.tolerance)})
    if differing:
        print(f"error: not reproduced: {'; '.join(differing)}", file=sys.stderr)
        return EXIT_ERROR
    print(f"reproduced: every final metric matches (tolerance {options.tolerance})")
    return 0


def print_table(old_id: str, new_id: str, rows: list[list[str]]) -> None:
    header = ["stage", "metric", f"run {old_id[:8]}", f"new {new_id[:8]}", ""]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def parse(argv: list[str]) -> tuple[str, ReproduceOptions]:
    ids = [a for a in argv if "=" not in a]
    if len(ids) != 1:
        raise ConfigError(
            "usage: python -m pipeline.reproduce <run_id> [tolerance=0] [tracking_uri=]"
        )
    dotlist = [a for a in argv if "=" in a]
    options = parse_options(ReproduceOptions, dotlist, "pipeline.reproduce")
    if options.tolerance < 0:
        raise ConfigError(f"tolerance={options.tolerance} must be >= 0")
    return ids[0], options


def main(argv: list[str]) -> int:
    quiet_tensorflow_startup()
    logging.basicConfig(level=logging.WARNING)
    register_configs()
    try:
        run_id, options = parse(argv)
        with interrupts_unwind():
            return reproduce(run_id, options)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("error: interrupted; the new run is marked KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # the re-run failed: its runs are marked FAILED
        print(f"error: {type(error).__name__}: {error}".splitlines()[0], file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
