"""The read side: what tracking wrote, as plain dataclasses (report, reproduce, resume use it).

A study is an experiment's parent runs (one per invocation) with their stage, search and trial
runs; runs of the same configuration over seeds share a `variant_hash` tag and form a variant.
Reads are done in bulk (one paged search per experiment, grouped in memory), never a request per
run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from pipeline.config import STAGES
from pipeline.tracking.mlflow_internals import metric_history_bulk, runs_bulk
from pipeline.tracking.owner import process_dead

PARENT_ID = "mlflow.parentRunId"
PAGE = 1000  # runs a search_runs request (MLflow's most)
HISTORY_CHUNK = 100  # runs a bulk metric-history query (MLflow's most)
HISTORY_LIMIT = 100_000  # values a bulk metric-history query returns at most
# What an invocation returns to Hydra's sweeper: its last stage's best validation accuracy,
# logged on its experiment run.
OBJECTIVE = "objective"


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run: ids, status, tags, params and final metrics (latest value of each)."""

    run_id: str
    experiment_id: str
    name: str
    status: str  # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    start_time: int | None  # ms since the epoch
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    @property
    def parent_id(self) -> str | None:
        return self.tags.get(PARENT_ID)

    @property
    def stage(self) -> str | None:
        """scratch | feature_extraction | fine_tune | search | trial | pretrain; None: a parent."""
        return self.tags.get("stage")

    @property
    def error(self) -> str | None:
        return self.tags.get("error")


@dataclass
class ExperimentRun:
    """One invocation: its parent run, its stage runs by stage, its search and trial runs."""

    parent: RunRecord
    stages: dict[str, RunRecord] = field(default_factory=dict)
    search: RunRecord | None = None
    trials: list[RunRecord] = field(default_factory=list)

    @property
    def seed(self) -> int | None:
        seed = self.parent.tags.get("seed", "")
        return int(seed) if seed.lstrip("-").isdigit() else None

    @property
    def variant_hash(self) -> str:
        return self.parent.tags.get("variant_hash", "")

    @property
    def config_hash(self) -> str:
        return self.parent.tags.get("config_hash", "")

    @property
    def objective(self) -> float | None:
        """What the invocation returned: its last stage's best validation accuracy (read from
        that stage's run for runs logged before the parent carried it)."""
        if OBJECTIVE in self.parent.metrics:
            return self.parent.metrics[OBJECTIVE]
        ran = [stage for stage in STAGES if stage in self.stages]
        return self.stages[ran[-1]].metrics.get("best_val_accuracy") if ran else None


@dataclass
class Variant:
    """Runs of one configuration without its seed: the seeds are the samples."""

    variant_hash: str
    runs: list[ExperimentRun]

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]


def record_of(run) -> RunRecord:
    info, data = run.info, run.data
    return RunRecord(
        run_id=info.run_id,
        experiment_id=info.experiment_id,
        name=info.run_name or "",
        status=info.status,
        start_time=info.start_time,
        end_time=info.end_time,
        tags=dict(data.tags),
        params=dict(data.params),
        metrics=dict(data.metrics),
    )


def experiment_id(client: MlflowClient, name: str) -> str | None:
    """The id of an active experiment called `name`, or None."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return None
    return experiment.experiment_id


class StoreReader:
    """Questions about the runs of some experiments of one store."""

    def __init__(self, client: MlflowClient, experiment_ids: list[str]):
        self.client = client
        self.experiment_ids = experiment_ids

    def runs(self, filter_string: str = "", order_by: list[str] | None = None, limit=None):
        """Every matching run (all pages), newest first unless `order_by` says otherwise."""
        records: list[RunRecord] = []
        token = None
        while True:
            page = self.client.search_runs(
                self.experiment_ids,
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=PAGE if limit is None else min(PAGE, limit - len(records)),
                order_by=order_by or ["attributes.start_time DESC"],
                page_token=token,
            )
            records += [record_of(run) for run in page]
            token = page.token
            if not token or (limit is not None and len(records) >= limit):
                return records

    def all_runs(self) -> list[RunRecord]:
        """Every active run, oldest first: as `runs(order_by=[start_time ASC])`, in four plain
        queries where the store is a database (the ORM objects of `search_runs` were most of a
        big report's reading), else by pages of `search_runs`."""
        found = runs_bulk(self.client, self.experiment_ids)
        if found is None:
            return self.runs(order_by=["attributes.start_time ASC"])
        return [RunRecord(**values) for values in found]

    def first(self, filter_string: str) -> RunRecord | None:
        found = self.runs(filter_string, limit=1)
        return found[0] if found else None

    def run(self, run_id: str) -> RunRecord:
        return record_of(self.client.get_run(run_id))

    def running_runs(self) -> list[RunRecord]:
        return self.runs("attributes.status = 'RUNNING'")

    def children(self, run_id: str, status: str | None = None) -> list[RunRecord]:
        query = f"tags.{PARENT_ID} = '{run_id}'"
        if status is not None:
            query += f" and attributes.status = '{status}'"
        return self.runs(query)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of a metric, by step."""
        history = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in history)

    def metric_histories(self, run_ids: list[str], key: str) -> dict[str, list[tuple[int, float]]]:
        """(step, value) of a metric for many runs: in bulk (one query or request per 100 runs)
        where the store can, else (or for a chunk cut off at the limit) one request per run."""
        out: dict[str, list[tuple[int, float]]] = {run_id: [] for run_id in run_ids}
        for start in range(0, len(run_ids), HISTORY_CHUNK):
            chunk = run_ids[start : start + HISTORY_CHUNK]
            found = metric_history_bulk(self.client, chunk, key, max_results=HISTORY_LIMIT)
            if found is None:  # no bulk read, or cut off at the limit: these runs one by one
                out.update({run_id: self.metric_history(run_id, key) for run_id in chunk})
                continue
            for metric in found:
                out[metric.run_id].append((metric.step, metric.value))
        return {run_id: sorted(values) for run_id, values in out.items()}

    def finished_pretraining(self, recipe_hash: str) -> RunRecord | None:
        """The latest finished pretraining run of a backbone recipe."""
        return self.first(f"tags.recipe_hash = '{recipe_hash}' and attributes.status = 'FINISHED'")

    def resumable_search(self, config_hash: str, directory_exists) -> RunRecord | None:
        """The latest unfinished search of this exact config whose tuner state is still there.

        Unfinished: interrupted (Ctrl-C, kill -9), or done but its invocation never finished (the
        final fine-tune was cut short). A search that failed (no trial succeeded) starts afresh.
        """
        query = f"tags.stage = 'search' and tags.config_hash = '{config_hash}'"
        for run in self.runs(query, limit=50):
            tags = run.tags
            if tags.get("search_state") == "failed" or not directory_exists(tags.get("search_dir")):
                continue
            if run.status == "RUNNING" and not process_dead(tags):
                continue  # live (another process, or another host we cannot check)
            if tags.get("search_state") == "done" and self.parent_finished(run):
                continue
            return run
        return None

    def finished_experiment_run(self, config_hash: str) -> ExperimentRun | None:
        """The latest FINISHED experiment run of this exact configuration."""
        tag = ("config_hash", config_hash)
        found = runs_bulk(self.client, self.experiment_ids, tag, "FINISHED")
        if found is None:  # not a database: MLflow's search
            query = f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'"
            candidates = self.runs(query)
        else:  # newest first, as `runs` orders them
            candidates = sorted((RunRecord(**values) for values in found), key=newest_first)
        parents = [run for run in candidates if is_experiment_run(run)]
        return self.experiment_run(parents[0]) if parents else None

    def experiment_run(self, parent: RunRecord) -> ExperimentRun:
        """An invocation from its parent run; its stage runs are read only when its objective
        is not on the parent (runs logged before it was)."""
        found = ExperimentRun(parent)
        if OBJECTIVE not in parent.metrics:
            for run in self.children(parent.run_id, "FINISHED"):
                attach(run, {parent.run_id: found}, {})
        return found

    def invocation(self, parent: RunRecord) -> ExperimentRun:
        """One invocation with every run under it: its children, and its search's trials (a
        query each), whatever the size of the experiment."""
        found = ExperimentRun(parent)
        children = self.children(parent.run_id)
        searches = [run.run_id for run in children if run.stage == "search"]
        trials = [t for s in searches for t in self.children(s)]
        by_id = {run.run_id: run for run in children}
        for run in children + trials:
            attach(run, {parent.run_id: found}, by_id)
        return found

    def parent_finished(self, run: RunRecord) -> bool:
        return run.parent_id is not None and self.run(run.parent_id).status == "FINISHED"

    def chief_search(self, config_hash: str, address: str) -> RunRecord | None:
        """The running search of a distributed chief serving the oracle at `address`."""
        return self.first(
            f"tags.stage = 'search' and tags.config_hash = '{config_hash}' and "
            f"tags.oracle_address = '{address}' and attributes.status = 'RUNNING'"
        )

    def wait_for(self, find, wait_s: float, poll_s: float = 1.0) -> RunRecord | None:
        """Poll `find()` until it returns a run or `wait_s` has passed."""
        deadline = time.monotonic() + wait_s
        while True:
            found = find()
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(poll_s)

    def experiment_runs(self, filter_string: str = "") -> list[ExperimentRun]:
        """Every invocation (parent run matching `filter_string`) with its runs, oldest first."""
        everything = self.all_runs()
        by_id = {run.run_id: run for run in everything}
        wanted = {run.run_id for run in self.runs(filter_string)} if filter_string else None
        invocations: dict[str, ExperimentRun] = {}
        for run in everything:
            if is_experiment_run(run) and (wanted is None or run.run_id in wanted):
                invocations[run.run_id] = ExperimentRun(run)
        for run in everything:
            attach(run, invocations, by_id)
        return list(invocations.values())


def newest_first(run: RunRecord) -> tuple:
    """`search_runs`' order by start time descending: runs without one last, then the run id."""
    return (run.start_time is None, -(run.start_time or 0), run.run_id)


def is_experiment_run(run: RunRecord) -> bool:
    """An invocation's parent run: no stage, a config hash; top level or nested in a sweep run."""
    return run.stage is None and bool(run.tags.get("config_hash"))


def attach(run: RunRecord, invocations: dict[str, ExperimentRun], by_id: dict) -> None:
    """Put a stage, search or trial run under the invocation it belongs to."""
    owner = invocations.get(run.parent_id or "")
    if run.stage == "trial":
        search = by_id.get(run.parent_id or "")
        owner = invocations.get(search.parent_id or "") if search is not None else None
        if owner is not None:
            owner.trials.append(run)
    elif owner is not None and run.stage == "search":
        owner.search = run
    elif owner is not None and run.stage is not None:
        owner.stages[run.stage] = run


def variants(invocations: list[ExperimentRun]) -> list[Variant]:
    """Invocations grouped by `variant_hash` (configuration without seed), first seen first."""
    grouped: dict[str, list[ExperimentRun]] = {}
    for invocation in invocations:
        grouped.setdefault(invocation.variant_hash, []).append(invocation)
    return [Variant(key, runs) for key, runs in grouped.items()]
