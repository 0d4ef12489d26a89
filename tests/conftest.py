"""Shared fixtures: the real `conf/`, composed with small overrides; an MLflow store in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.config import register_configs
from tests.clusters import pg_server, slurm_cluster  # noqa: F401  (the slow tier's daemons)

CONF_DIR = PROJECT_ROOT / "conf"
SHARED_DIR = PROJECT_ROOT.parent / "shared"

register_configs()

# The test files, longest first (their summed test times under `pytest --durations=0` on a
# 2-core machine: test_search.py 362 s ... test_secrets.py 16 s). With `--dist loadfile` a file
# runs on one worker as a whole; handing out the longest first keeps the three workers busy until
# the end (the suite took 12:47; by xdist's default order, the most tests first, one worker
# finished 140 s before another). pyproject.toml's `--no-loadscope-reorder` keeps this order.
# A file not named here runs after these.
LONGEST_FIRST = [
    "test_clusters.py",  # daemons (SLURM, PostgreSQL) and signalled SLURM jobs
    "test_search.py",
    "test_ray_cluster.py",
    "test_slurm_loopback.py",  # a SLURM cluster up and down, one job
    "test_faults.py",
    "test_tracking_package.py",
    "test_launchers.py",
    "test_cli.py",
    "test_server.py",
    "test_backbones.py",
    "test_interrupts.py",
    "test_sweeps.py",
    "test_sequential_sweep.py",
    "test_replicate.py",
    "test_report.py",
    "test_report_scale.py",
    "test_report_verdicts.py",
    "test_store.py",
    "test_tracking.py",
    "test_internals.py",
    "test_stages.py",
    "test_config.py",
    "test_datasets.py",
    "test_docs.py",  # every command of the guide composed; generated pages current
    "test_secrets.py",
    "test_sequential.py",
    "test_layers.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in LONGEST_FIRST's order; the tests of a file in their own order."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def compose_config(overrides: list[str]):
    """The real config, composed as `python -m pipeline <overrides>` would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, every migration applied, made once per test process: MLflow
    takes seconds to migrate a new store, a copy takes milliseconds. Its `Default` experiment
    keeps its artifacts in the store's own folder."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("migrated-store")
    db = folder / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", (folder / "artifacts").as_uri())
    return db


def copy_store(template: Path, db: Path) -> str:
    """A new store at `db` that starts as a copy of the store file `template`; its URI."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def smoke_backbone_store(tmp_path_factory, migrated_store: Path) -> Path:
    """`migrated_store` with `debug=smoke`'s backbone pretrained in its `transfer-lab-backbones`
    experiment (weights in this folder, only ever read), made once per test process: a test's
    experiment then reuses it, as every run after a user's first does, instead of pretraining."""
    from omegaconf import OmegaConf

    from pipeline.cli.process import import_tensorflow_quietly
    from pipeline.data import load_task
    from pipeline.pretrain import pretrained_backbone
    from pipeline.tracking.store import prepare_store
    from pipeline.tracking.weights import MlflowWeightsStore

    import_tensorflow_quietly()
    db = tmp_path_factory.mktemp("smoke-backbone-store") / "mlflow.db"
    uri = copy_store(migrated_store, db)
    config = OmegaConf.to_object(compose_config(["debug=smoke", f"tracking.uri={uri}"]))
    client = prepare_store(config.tracking.uri, [config.tracking.backbone_experiment])
    backbones = client.get_experiment_by_name(config.tracking.backbone_experiment)
    input_shape = load_task(config.dataset, config.seed).input_shape
    store = MlflowWeightsStore(client, backbones.experiment_id)
    assert not pretrained_backbone(config.backbone, input_shape, store, False).reused
    return db


@pytest.fixture
def store_uri(request, tmp_path: Path, migrated_store: Path) -> str:
    """A store of the test's own, created already, with no experiment run in it yet: a copy of
    `smoke_backbone_store`, or of `migrated_store` (nothing pretrained either) for a test marked
    `empty_store`."""
    empty = request.node.get_closest_marker("empty_store") is not None
    template = migrated_store if empty else request.getfixturevalue("smoke_backbone_store")
    return copy_store(template, tmp_path / "mlruns" / "mlflow.db")


@pytest.fixture
def fresh_store_uri(tmp_path: Path) -> str:
    """Where no store is yet: the command under test creates it."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture
def client(store_uri: str) -> MlflowClient:
    return MlflowClient(store_uri)


@pytest.fixture
def smoke(store_uri: str) -> list[str]:
    """Overrides for a seconds-long real experiment into the test's own store."""
    return ["debug=smoke", f"tracking.uri={store_uri}"]


def run_cli_watching_imports(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m pipeline <args>` in a real process that then prints its exit code and whether
    TensorFlow and Keras were imported (`2 False False`: refused before they loaded)."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['pipeline', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('pipeline', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as done:\n"
        "    print(done.code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m pipeline <args>` in a real process, outputs under `cwd`."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    flags = [a for a in args if a.startswith("-")]  # Hydra's own flags (-m) precede overrides
    overrides = [a for a in args if not a.startswith("-")]
    command = [sys.executable, "-m", "pipeline", *flags, f"hydra.run.dir={cwd / 'out'}", *overrides]
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def chromium() -> str:
    """Debian's headless-capable Chromium; .ci/run installs it, so in CI this never skips."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    return found


def headless(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    """`url` in headless Chromium with `flags` (--screenshot=..., --dump-dom), its console logged
    on stderr."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--enable-logging=stderr", "--v=0",
        f"--user-data-dir={profile}", *flags, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def runs_by_stage(client: MlflowClient, experiment: str = "transfer-lab") -> dict[str, list]:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    grouped: dict[str, list] = {}
    for run in client.search_runs([experiment_id]):
        grouped.setdefault(run.data.tags.get("stage", "parent"), []).append(run)
    return grouped
