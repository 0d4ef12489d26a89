"""A big study in an MLflow SQLite store, written the real way (MLflow's own client) in the
pipeline's shape, with no training: what `bench/store_scale.py` reads.

    python bench/big_store.py --runs 1000        # builds (or finds) the store; prints its path

Per `--runs` experiment runs (variants of 4 seeds, `lr.fine_tune` telling them apart):

- one `sweep` run (tag stage=sweep) per 100 experiment runs, with its overrides as params and its
  job counts as metrics;
- experiment runs nested under their sweep run, tagged as `experiment.parent_tags` tags them
  (dataset, backbone, seed, config_hash, variant_hash, git_commit, version.*, command, sweep_id,
  sweep_job, host, pid, heartbeat), with the composed config flattened as params and `objective`;
- three stage runs each (stage=scratch|feature_extraction|fine_tune) with 100 epochs of loss,
  accuracy, val_loss and val_accuracy, final test_accuracy, test_loss, best_val_accuracy,
  best_epoch, epochs_run, seconds, and the stage's params;
- one invocation in ten with a `search` run and five `trial` runs (10 epochs each);
- one invocation in fifty FAILED with an `error` tag (a job that broke).

Every run is written with `log_batch` (at most 1,000 metrics, 100 params, 100 tags a call). A
built store is kept under `<tmp>/bench/store_scale/` keyed by its shape, so a repeat reuses it;
an interrupted build resumes after its last finished sweep (same values and timestamps).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

EXPERIMENT = "transfer-lab"
BACKBONES = "transfer-lab-backbones"
SEEDS = 4
EPOCHS = 100
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
STAGE_BASE = {"scratch": 0.70, "feature_extraction": 0.85, "fine_tune": 0.90}
SWEEP_SIZE = 100
SEARCH_EVERY = 10
FAILED_EVERY = 50
TRIALS = 5
TRIAL_EPOCHS = 10
SHAPE_VERSION = 1  # bump when the shape changes: the cache key includes it
CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "bench" / "store_scale"

log = logging.getLogger(__name__)


def cache_path(runs: int) -> Path:
    return CACHE / f"v{SHAPE_VERSION}-runs{runs}-epochs{EPOCHS}" / "mlflow.db"


def base_params() -> dict[str, str]:
    """The real composed config, flattened as the tracker logs it (composed once)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import register_configs
    from pipeline.tracking.params import flatten

    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["debug=smoke"])
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return {key: str(value)[:6000] for key, value in flatten(resolved).items()}


def digest(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:16]


class Builder:
    """Writes runs with explicit timestamps (one ms apart), so their order is reproducible."""

    def __init__(self, uri: str):
        self.client = MlflowClient(uri)
        self.clock = 1_700_000_000_000
        self.process = {"host": socket.gethostname(), "pid": "999999"}
        self.source = {"mlflow.user": "bench", "mlflow.source.name": "pipeline"}
        self.source["mlflow.source.type"] = "LOCAL"

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def run(self, experiment: str, name: str, tags: dict, parent: str | None = None) -> str:
        tags = {**self.source, **tags, **self.process}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        return self.client.create_run(
            experiment, start_time=self.tick(), tags=tags, run_name=name
        ).info.run_id

    def log(self, run_id: str, params: dict, metrics: list[tuple], tags: dict | None = None):
        """Everything of a run in batches of MLflow's limits."""
        params_ = [Param(k, str(v)) for k, v in params.items()]
        metrics_ = [Metric(k, float(v), self.clock, step) for k, v, step in metrics]
        tags_ = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        while params_ or metrics_ or tags_:
            self.client.log_batch(run_id, metrics_[:1000], params_[:100], tags_[:100])
            params_, metrics_, tags_ = params_[100:], metrics_[1000:], tags_[100:]

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status, end_time=self.tick())


def curve(rng: random.Random, base: float, epochs: int) -> list[tuple[str, float, int]]:
    rows = []
    for epoch in range(1, epochs + 1):
        accuracy = base * (1 - 0.6**epoch) + rng.gauss(0, 0.01)
        values = {"loss": 1 - accuracy, "accuracy": accuracy + 0.02}
        values |= {"val_loss": 1.05 - accuracy, "val_accuracy": accuracy}
        rows += [(key, values[key], epoch) for key in EPOCH_METRICS]
    return rows


def stage(b: Builder, exp: str, parent: str, name: str, base: float, rng) -> float:
    run_id = b.run(exp, name, {"stage": name}, parent)
    rows = curve(rng, base, EPOCHS)
    best = max(v for k, v, _ in rows if k == "val_accuracy")
    test = base + rng.gauss(0, 0.02)
    finals = {"test_accuracy": test, "test_loss": 1 - test, "best_val_accuracy": best}
    finals |= {"best_epoch": EPOCHS - 3, "epochs_run": EPOCHS, "seconds": 12.5}
    params = {"trainable_params": 12345, "learning_rate": 0.001}
    b.log(run_id, params, rows + [(k, v, 0) for k, v in finals.items()])
    b.end(run_id)
    return best


def search(b: Builder, exp: str, parent: str, config_hash: str, rng) -> None:
    tags = {"stage": "search", "config_hash": config_hash, "search_state": "done"}
    run_id = b.run(exp, "search", tags, parent)
    scores = []
    for trial in range(TRIALS):
        values = {"unfreeze_blocks": trial % 3, "learning_rate": 10 ** rng.uniform(-5, -2)}
        tags = {"stage": "trial", "trial_id": str(trial), "status": "COMPLETED"}
        trial_id = b.run(exp, f"trial-{trial}", {**tags, "tuner_id": "tuner0"}, run_id)
        rows = curve(rng, 0.85, TRIAL_EPOCHS)
        score = max(v for k, v, _ in rows if k == "val_accuracy")
        scores.append(score)
        b.log(trial_id, values, [*rows, ("best_val_accuracy", score, 0)])
        b.end(trial_id)
    best = max(range(TRIALS), key=scores.__getitem__)
    params = {"tuner": "random", "objective": "val_accuracy", "max_trials": TRIALS}
    b.log(run_id, params, [("best_val_accuracy", scores[best], 0)], {"best_trial_id": str(best)})
    b.end(run_id)


def invocation(b: Builder, exp: str, sweep: str, index: int, params: dict, rng) -> None:
    """One experiment run with its stage runs (and maybe a search), under its sweep run."""
    variant, seed = index // SEEDS, index % SEEDS
    lr = f"{0.0001 * (1 + variant % 50):.4f}"
    run_params = {**params, "seed": seed, "lr.fine_tune": lr, "train_per_class": 10 + variant // 50}
    config_hash = digest("config", variant, seed)
    tags = {
        "dataset": "digits",
        "backbone": "small_cnn",
        "seed": str(seed),
        "config_hash": config_hash,
        "variant_hash": digest("variant", variant),
        "git_commit": "0" * 40,
        "mlflow.source.git.commit": "0" * 40,
        "version.tensorflow": "2.21.0",
        "version.mlflow": "3.17.2",
        "command": f"python -m pipeline -m seed={seed} lr.fine_tune={lr}",
        "output_dir": f"multirun/bench/{index}",
        "sweep_id": f"multirun/bench-{index // SWEEP_SIZE}",
        "sweep_job": str(index % SWEEP_SIZE),
        "heartbeat": str(b.clock // 1000),
        "backbone_weights": "random",
    }
    parent = b.run(exp, f"digits-small_cnn-seed{seed}", tags, sweep)
    failed = index % FAILED_EVERY == FAILED_EVERY - 1
    best = 0.0
    for name, base in STAGE_BASE.items():
        if failed and name == "fine_tune":
            break
        best = stage(b, exp, parent, name, base + float(lr) * 20, rng)
    if index % SEARCH_EVERY == 0:
        search(b, exp, parent, config_hash, rng)
    b.log(parent, run_params, [] if failed else [("objective", best, 0)])
    if failed:
        b.log(parent, {}, [], {"error": "RuntimeError: stage broke"})
    b.end(parent, "FAILED" if failed else "FINISHED")


class DryBuilder(Builder):
    """Writes nothing: replays the clock (and, through the callers, the random draws) of
    sweeps already in a resumed store, so that the rest is written as one build would."""

    def __init__(self):  # no client, no store
        self.clock = 1_700_000_000_000
        self.process, self.source = {}, {}

    def run(self, experiment: str, name: str, tags: dict, parent: str | None = None) -> str:
        self.tick()
        return "dry"

    def log(self, run_id: str, params: dict, metrics: list[tuple], tags: dict | None = None):
        pass

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.tick()


def sweep(b: Builder, exp: str, first: int, runs: int, params: dict, rng) -> None:
    """One sweep run and its (up to SWEEP_SIZE) experiment runs, from index `first`."""
    jobs = min(SWEEP_SIZE, runs - first)
    sweep_id = b.run(exp, f"sweep-{first // SWEEP_SIZE}", {"stage": "sweep"})
    b.log(sweep_id, {"overrides": f"seed=0,1,2,3 lr.fine_tune=... ({jobs} jobs)"}, [])
    for index in range(first, first + jobs):
        invocation(b, exp, sweep_id, index, params, rng)
    b.log(sweep_id, {}, [("jobs_finished", jobs, 0), ("jobs_failed", 0, 0)])
    b.end(sweep_id)


def resumed(b: Builder, uri: str) -> tuple[str, int]:
    """The experiment of an interrupted build and its experiment runs in finished sweeps; the
    runs written after the last finished sweep (a sweep cut short) are deleted for good
    (`mlflow gc`), so that its sweep is written again whole."""
    exp = b.client.get_experiment_by_name(EXPERIMENT).experiment_id
    sweeps = b.client.search_runs([exp], "tags.stage = 'sweep'", max_results=1000)
    finished = sorted(s.info.end_time for s in sweeps if s.info.status == "FINISHED")
    after = finished[-1] if finished else 0
    partial, token = [], None
    while True:
        page = b.client.search_runs(
            [exp], f"attributes.start_time > {after}", max_results=1000, page_token=token
        )
        partial += [run.info.run_id for run in page]
        token = page.token
        if not token:
            break
    for run_id in partial:
        b.client.delete_run(run_id)
    if partial:
        command = [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri]
        command += ["--tracking-uri", uri]
        subprocess.run([*command, "--run-ids", ",".join(partial)], check=True)
    log.info("resuming after %d finished sweeps (%d runs of a cut sweep removed)",
             len(finished), len(partial))  # fmt: skip
    return exp, len(finished) * SWEEP_SIZE


def no_fsync(connection, _record) -> None:
    """While building only: a throwaway store need not survive a power cut (half the time)."""
    connection.execute("PRAGMA synchronous=OFF")


def build(db: Path, runs: int) -> None:
    """`runs` experiment runs into a new store at `db` (written beside it, then moved in); an
    interrupted build (its `.building` file) is resumed after its last finished sweep."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    staging = db.with_suffix(".building")
    event.listen(Engine, "connect", no_fsync)
    uri, interrupted = f"sqlite:///{staging}", staging.is_file()
    b = Builder(uri)  # creates the file
    if interrupted:
        exp, done = resumed(b, uri)
    else:
        exp, done = b.client.create_experiment(EXPERIMENT), 0
        b.client.create_experiment(BACKBONES)
    params, rng = base_params(), random.Random(0)
    dry = DryBuilder()
    for first in range(0, done, SWEEP_SIZE):  # the same draws and clock as one build
        sweep(dry, exp, first, runs, params, rng)
    b.clock = dry.clock
    start = time.perf_counter()
    for first in range(done, runs, SWEEP_SIZE):
        sweep(b, exp, first, runs, params, rng)
        done = min(first + SWEEP_SIZE, runs)
        log.info("%d / %d experiment runs, %.0f s", done, runs, time.perf_counter() - start)
    event.remove(Engine, "connect", no_fsync)
    staging.replace(db)


def store(runs: int, rebuild: bool = False) -> Path:
    """The store of `runs` experiment runs, built once and then reused from the cache."""
    db = cache_path(runs)
    if rebuild and db.parent.exists():
        shutil.rmtree(db.parent)
    if not db.is_file():
        db.parent.mkdir(parents=True, exist_ok=True)
        build(db, runs)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="experiment runs in the study")
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs={args.runs} must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    db = store(args.runs, args.rebuild)
    size = db.stat().st_size / 2**20
    print(f"{db} ({size:.0f} MiB, ready in {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
