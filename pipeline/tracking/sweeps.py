"""A sweep as an MLflow run: created once before its jobs, their experiment runs nested under it
(`mlflow.parentRunId`, whichever process runs a job), its jobs counted when it ends.

A job skipped because its configuration already finished (sweep.skip_finished) is noted on the
sweep run as a `skipped_job.<job number>` tag naming that finished run, which is not re-nested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from pipeline.config import STAGES, TrackingConfig
from pipeline.tracking.heartbeat import Heartbeat
from pipeline.tracking.query import ExperimentRun, StoreReader, experiment_id, is_experiment_run
from pipeline.tracking.runs import RunFailed, create_run, end_run
from pipeline.tracking.secrets import redact_tree
from pipeline.tracking.store import bounded_http, prepare_store, resolve_uri
from pipeline.tracking.writer import Writer

log = logging.getLogger(__name__)

SWEEP_STAGE = "sweep"
SKIPPED_JOB = "skipped_job."


@dataclass(frozen=True)
class SweepOutcome:
    """How a sweep's jobs ended, and its best job (highest objective) when any returned one."""

    finished: int
    failed: int  # FAILED or KILLED, or still RUNNING when the sweep ended (its process died)
    skipped: int
    interrupted: bool  # a job ended KILLED
    best_job: str | None = None
    best: ExperimentRun | None = None


@contextmanager
def sweep_store(cfg: TrackingConfig) -> Iterator[tuple[MlflowClient, str]]:
    """A client of the sweep's store (created if missing) and the experiment's id, with the
    tracking server's retries bounded as for a job."""
    with bounded_http(cfg.http_retries, cfg.http_timeout_s):
        uri = resolve_uri(cfg.uri)
        client = prepare_store(uri, [cfg.experiment_name, cfg.backbone_experiment])
        yield client, experiment_id(client, cfg.experiment_name)


def start_sweep_run(
    cfg: TrackingConfig, name: str, tags: dict[str, str], params: dict[str, str]
) -> str:
    """A RUNNING `sweep` run (tag `stage=sweep`) with the sweep's overrides as params; its id."""
    with sweep_store(cfg) as (client, experiment):
        safe = {key: str(value) for key, value in redact_tree(tags).items()}
        run_id = create_run(client, experiment, name, {**safe, "stage": SWEEP_STAGE})
        writer = Writer(client, synchronous=True)
        try:
            writer.params(run_id, params)
        except BaseException as error:
            end_run(writer, run_id, error)
            raise
    return run_id


def sweep_heartbeat(cfg: TrackingConfig, run_id: str) -> Heartbeat:
    """The sweep run's heartbeat, started: while the sweep's process waits for jobs on other
    hosts, their orphan sweeps must not take its run for a dead process's (heartbeat.py)."""
    return Heartbeat(MlflowClient(resolve_uri(cfg.uri)), run_id).start()


def outcome_of(reader: StoreReader, run_id: str) -> SweepOutcome:
    """Count the sweep's jobs: its nested experiment runs, and the finished runs it skipped."""
    jobs = [run for run in reader.children(run_id) if is_experiment_run(run)]
    tags = reader.run(run_id).tags
    skipped = {k.removeprefix(SKIPPED_JOB): v for k, v in tags.items() if k.startswith(SKIPPED_JOB)}
    done = [(run.tags.get("sweep_job", "?"), run) for run in jobs if run.status == "FINISHED"]
    finished = len(done)
    done += [(job, reader.run(run_id)) for job, run_id in skipped.items()]
    scored = [(job, reader.experiment_run(run)) for job, run in done]
    scored = [(job, run) for job, run in scored if run.objective is not None]
    best_job, best = max(scored, key=lambda pair: pair[1].objective, default=(None, None))
    return SweepOutcome(
        finished=finished,
        failed=len(jobs) - finished,
        skipped=len(skipped),
        interrupted=any(run.status == "KILLED" for run in jobs),
        best_job=best_job,
        best=best,
    )


def finish_sweep_run(cfg: TrackingConfig, run_id: str, early: bool = False) -> SweepOutcome:
    """Log the counts of jobs (`jobs_finished`, `jobs_failed`, `jobs_skipped`) and the best job
    (`best_objective`; tags `best_run_id`, `best_job`, `best_command`), then end the run:
    FINISHED, or when the sweep stopped `early` KILLED (a job was interrupted) or FAILED."""
    with sweep_store(cfg) as (client, experiment):
        reader = StoreReader(client, [experiment])
        outcome = outcome_of(reader, run_id)
        writer = Writer(client, synchronous=True)
        counts = {"finished": outcome.finished, "failed": outcome.failed}
        counts["skipped"] = outcome.skipped
        writer.final_metrics(run_id, {f"jobs_{key}": value for key, value in counts.items()})
        if outcome.best is not None:
            best = outcome.best.parent
            writer.final_metrics(run_id, {"best_objective": outcome.best.objective})
            tags = {"best_run_id": best.run_id, "best_job": outcome.best_job or "?"}
            writer.tags(run_id, {**tags, "best_command": best.tags.get("command", "")})
        error = None
        if early:
            stopped = RunFailed("the sweep stopped before its jobs were done")
            error = KeyboardInterrupt() if outcome.interrupted else stopped
        end_run(writer, run_id, error)
    return outcome


def finished_stage_values(
    cfg: TrackingConfig, variant_hashes: list[str], metric: str
) -> dict[str, dict[str, tuple[str, dict[str, float]]]]:
    """variant_hash -> config_hash -> (run id, {stage: the run's `<stage>_<metric>`}), from the
    FINISHED experiment runs of these variants (the latest run of a configuration): one paged
    query per variant (the sequential sweeper's look at its results)."""
    out: dict[str, dict[str, tuple[str, dict[str, float]]]] = {}
    with sweep_store(cfg) as (client, experiment):
        reader = StoreReader(client, [experiment])
        for variant in variant_hashes:
            found = out.setdefault(variant, {})
            query = f"tags.variant_hash = '{variant}' and attributes.status = 'FINISHED'"
            for run in reader.runs(query):  # newest first: the latest run of a config wins
                digest = run.tags.get("config_hash", "")
                if is_experiment_run(run) and digest not in found:
                    keys = {stage: f"{stage}_{metric}" for stage in STAGES}
                    values = {s: run.metrics[k] for s, k in keys.items() if k in run.metrics}
                    found[digest] = (run.run_id, values)
    return out


def record_verdicts(
    cfg: TrackingConfig, run_id: str, tags: dict[str, str], metrics: dict[str, float], step: int
) -> None:
    """The sequential sweeper's verdicts on its sweep run, after every look (`step`): tags and
    metrics in batches of 100 (MLflow's limit of tags per batch), written before it goes on."""
    with sweep_store(cfg) as (client, _):
        now_ms = int(time.time() * 1000)
        rows = [Metric(k, float(v), now_ms, step) for k, v in metrics.items()]
        entries = [RunTag(k, str(v)) for k, v in redact_tree(tags).items()]
        for start in range(0, max(len(rows), len(entries)), 100):
            client.log_batch(
                run_id, metrics=rows[start : start + 100], tags=entries[start : start + 100]
            )


def end_killed_jobs(cfg: TrackingConfig, pids: list[int]) -> None:
    """End KILLED the RUNNING runs of jobs whose worker processes (`pids`, this host) were killed
    before they could unwind (a job still loading its data when the sweep was stopped)."""
    if not pids:
        return
    import socket

    from pipeline.tracking.store import terminate_run

    wanted = {str(pid) for pid in pids}
    with sweep_store(cfg) as (client, experiment):
        running = "attributes.status = 'RUNNING'"
        for run in client.search_runs([experiment], running, max_results=1000):
            tags = run.data.tags
            if tags.get("pid") in wanted and tags.get("host") == socket.gethostname():
                terminate_run(client, run.info.run_id, "KILLED")
