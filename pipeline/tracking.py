"""Everything MLflow: the store, the run tree, per-epoch metrics, artifacts, pretrained weights.

Run tree per invocation: a parent run (tags dataset, backbone, seed, git_commit, config_hash) with a
child run per stage (tag `stage`). Runs end FINISHED, FAILED (with an `error` tag) or KILLED, never
RUNNING. Training code never imports mlflow: it gets `callbacks(stage)` from here.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline.config import BACKBONE_WEIGHTS_FILE, TrackingConfig
from pipeline.secrets import redact_text, redact_tree, redact_value
from pipeline.store import prepare_store, resolve_uri

log = logging.getLogger(__name__)

ERROR_TAG_LIMIT = 5000


class MetricsBuffer:
    """Every epoch's metrics (step = epoch) for the active MLflow run, never per batch.

    Epochs of a small model take milliseconds while a store write takes several: the metrics are
    written in one batch at most every `flush_s` seconds and when training ends, so the UI stays
    near-live at a fraction of the cost (0 writes every epoch).
    """

    def __init__(self, client: MlflowClient, flush_s: float):
        self.client = client
        self.flush_s = flush_s
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()

    def add(self, epoch: int, metrics: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        for name, value in metrics.items():
            self.pending.append(Metric(name, float(value), now_ms, epoch))
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            run_id = mlflow.active_run().info.run_id
            self.client.log_batch(run_id, metrics=self.pending)
            self.pending = []
        self.last_flush = time.monotonic()


# The process whose death orphans the runs: this one, or the one a tracking process serves.
OWNER_PID = os.getpid()


def process_tags() -> dict[str, str]:
    """Who is running this run: lets a later invocation tell an orphan from a live run."""
    return {"host": socket.gethostname(), "pid": str(OWNER_PID)}


def source_tags() -> dict[str, str]:
    """The tags MLflow's run-context providers would add. Resolving them costs ~0.1 s a run
    (a git repository lookup), and the commit is tagged by the pipeline already."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.name": "pipeline", "mlflow.source.type": "LOCAL"}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class Orphaned(Exception):
    """The process that ran the run died without ending it."""


def orphan_message(pid: int | str) -> str:
    return f"orphaned: process {pid} died"


def error_tag(error: BaseException) -> str:
    return str(error) if isinstance(error, Orphaned) else f"{type(error).__name__}: {error}"


def mark_orphans(client: MlflowClient, experiment_ids: list[str]) -> list[str]:
    """End FAILED the RUNNING runs whose process, on this host, is dead (kill -9, power loss)."""
    host = socket.gethostname()
    running = client.search_runs(
        experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=5000
    )
    orphans = []
    for run in running:
        tags = run.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit():
            continue
        if not process_alive(int(tags["pid"])):
            client.set_tag(run.info.run_id, "error", orphan_message(tags["pid"]))
            client.set_terminated(run.info.run_id, "FAILED")
            orphans.append(run.info.run_id)
    if orphans:
        log.warning("marked %d orphaned RUNNING run(s) FAILED: %s", len(orphans), orphans)
    return orphans


def start_run(
    run_id: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
) -> mlflow.ActiveRun:
    """`mlflow.start_run`, creating a new run with explicit tags instead of resolved ones."""
    tags = {**(tags or {}), **process_tags()}
    if run_id is not None:  # reopening a run (a resumed search)
        return mlflow.start_run(run_id=run_id, nested=nested, tags=tags)
    parent = mlflow.active_run() if nested else None
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.info.run_id
    created = MlflowClient().create_run(
        experiment_id, run_name=run_name, tags={**source_tags(), **tags}
    )
    return mlflow.start_run(run_id=created.info.run_id, nested=nested)


@contextmanager
def tracked_run(**start_kwargs) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, KILLED on Ctrl-C/SIGTERM, or FAILED with an `error` tag."""
    run = start_run(**start_kwargs)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.set_tag("error", "interrupted")
        mlflow.end_run("KILLED")
        raise
    except BaseException as error:
        mlflow.set_tag("error", error_tag(error)[:ERROR_TAG_LIMIT])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


class MlflowWeightsStore:
    """Pretrained backbones as runs of a shared experiment, found again by `recipe_hash` tag."""

    def __init__(self, client: MlflowClient, experiment_id: str):
        self.client = client
        self.experiment_id = experiment_id

    def find(self, recipe_hash: str) -> tuple[Path, str] | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.recipe_hash = '{recipe_hash}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            return None
        run_id = runs[0].info.run_id
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=BACKBONE_WEIGHTS_FILE
        )
        return Path(local), run_id

    def save(self, recipe: dict, weights_file: Path, metrics: dict[str, float]) -> str:
        backbone = recipe["backbone"]
        tags = {"stage": "pretrain", "recipe_hash": recipe["hash"], "backbone": backbone["name"]}
        run = self.client.create_run(
            self.experiment_id, run_name=f"pretrain-{backbone['name']}-{recipe['hash']}", tags=tags
        )
        run_id = run.info.run_id
        try:
            flat = flatten({"backbone": backbone, "seed": recipe["seed"]})
            flat["input_shape"] = str(recipe["input_shape"])
            now_ms = int(time.time() * 1000)
            self.client.log_batch(
                run_id,
                metrics=[Metric(key, value, now_ms, 0) for key, value in metrics.items()],
                params=[Param(key, str(value)) for key, value in flat.items()],
            )
            self.client.log_artifact(run_id, str(weights_file))
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their string form (MLflow params are text)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, list | tuple) else value
    return flat


class Tracker:
    """The run tree of one invocation in an MLflow store."""

    enabled = True

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.uri = resolve_uri(cfg.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = prepare_store(self.uri, [cfg.experiment_name, cfg.backbone_experiment])
        self.experiment_id = self.client.get_experiment_by_name(cfg.experiment_name).experiment_id
        backbones = self.client.get_experiment_by_name(cfg.backbone_experiment)
        self.backbone_experiment_id = backbones.experiment_id
        mark_orphans(self.client, [self.experiment_id])
        self.ids: dict[str, str] = {}

    def weights_store(self) -> MlflowWeightsStore:
        return MlflowWeightsStore(self.client, self.backbone_experiment_id)

    def experiment_run(self, name: str, tags: dict[str, str]):
        tags = {key: redact_value(key, value) for key, value in tags.items()}
        run = tracked_run(experiment_id=self.experiment_id, run_name=name, tags=tags)
        return self.remembered("parent", run)

    def stage_run(self, stage: str):
        run = tracked_run(
            experiment_id=self.experiment_id, run_name=stage, nested=True, tags={"stage": stage}
        )
        return self.remembered(stage, run)

    @contextmanager
    def remembered(self, key: str, run):
        """Keep the run's id under `key` ("parent" or the stage) for the summary table."""
        with run as active:
            self.ids[key] = active.info.run_id
            yield active

    def run_ids(self) -> dict[str, str]:
        return dict(self.ids)

    def callbacks(self, stage: str) -> list:
        from pipeline.callbacks import MetricsCallback  # Keras only where training happens

        return [MetricsCallback(self.metrics_buffer())]

    def metrics_buffer(self) -> MetricsBuffer:
        return MetricsBuffer(self.client, self.cfg.metrics_flush_s)

    def close(self) -> None: ...

    def log_config(self, resolved: dict) -> None:
        """The resolved config as flattened params and as `config.yaml`, secrets masked."""
        safe = redact_tree(resolved)
        mlflow.log_params(flatten(safe))
        mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(safe)), "config.yaml")

    def log_params(self, params: dict[str, object]) -> None:
        mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_learning_curve(self, history: dict[str, list[float]], stage: str, best_epoch: int):
        from pipeline.plots import close, learning_curve  # matplotlib only when it is logged

        figure = learning_curve(history, stage, best_epoch)
        mlflow.log_figure(figure, f"learning_curve_{stage}.png")
        close(figure)

    def ui_command(self) -> str:
        if urlparse(self.uri).scheme == "sqlite":
            return f"mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000"
        return f"open {redact_text(self.uri)} in a browser"
