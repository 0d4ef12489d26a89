"""Creating a SQLite store: concurrent first runs, and files that are not a usable store."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from tests.conftest import copy_store, run_cli, run_cli_watching_imports, runs_by_stage
from tests.test_faults import start_cli, wait_for_running_stage

CREATE = (
    "import sys\n"
    "from pipeline.tracking.store import prepare_store\n"
    "prepare_store(sys.argv[1], ['transfer-lab', 'transfer-lab-backbones'])\n"
)


def tables(db) -> list[str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return [name for (name,) in rows]


@pytest.mark.slow
def test_concurrent_first_runs_create_one_usable_store(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{db}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, uri], cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0, 0], errors
    assert "runs" in tables(db)
    assert not [name for name in tables(db) if name.startswith("_alembic_tmp_")]
    names = sorted(e.name for e in MlflowClient(uri).search_experiments())
    assert names == ["Default", "transfer-lab", "transfer-lab-backbones"]


def truncated(db) -> None:
    """SQLite's header over a body that is not one (a copy cut short, a file overwritten)."""
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 3000)


def half_migrated(db) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE _alembic_tmp_runs (run_uuid TEXT)")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda db: db.write_bytes(b"not a database\n" * 100), "is not a valid SQLite database"),
        (truncated, "is not a valid SQLite database"),
        (half_migrated, "was left half-migrated (_alembic_tmp_runs); recover:"),
    ],
    ids=["garbage", "truncated", "half-migrated"],
)
def test_a_store_file_that_is_not_usable_is_refused_in_one_line(tmp_path, spoil, message):
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    spoil(db)
    before = db.read_bytes()
    done = run_cli_watching_imports(["debug=smoke", f"tracking.uri=sqlite:///{db}"])
    assert done.stdout.split() == ["2", "False", "False"], done.stderr[-2000:]  # before TensorFlow
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert str(db) in lines[0]
    assert db.read_bytes() == before, "the file is left as it was"


def test_a_store_in_an_immutable_folder_is_one_line_before_tensorflow_loads(tmp_path):
    """Root writes through permissions, not through `chattr +i`: SQLite's journal and the
    creation lock cannot be created beside the store."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    MlflowClient(f"sqlite:///{db}").search_experiments()  # a real store, then frozen
    frozen = subprocess.run(["chattr", "+i", str(db.parent)], capture_output=True, text=True)
    if frozen.returncode != 0:
        pytest.skip(f"cannot make a folder immutable here: {frozen.stderr.strip()}")
    try:
        done = run_cli_watching_imports(["debug=smoke", f"tracking.uri=sqlite:///{db}"])
    finally:
        subprocess.run(["chattr", "-i", str(db.parent)], check=False)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: the MLflow store {db} cannot be written"), lines


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB file system (tmpfs; needs mount rights), unmounted after the test."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # lazy: an MLflow client of the test may still hold the store's SQLite file open
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def fill(folder) -> None:
    """Write zeros into `folder` until its file system has no space left."""
    try:
        with (folder / "filler").open("ab", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)
    except OSError:
        pass


@pytest.fixture
def full_disk(small_disk):
    fill(small_disk)
    return small_disk


def test_a_store_on_a_full_disk_is_one_line_before_anything_runs(tmp_path, full_disk):
    db = full_disk / "mlflow.db"
    done = run_cli(["debug=smoke", f"tracking.uri=sqlite:///{db}"], tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no space left on device writing {db}" in errors[0]
    assert "Traceback" not in done.stderr and not db.exists()


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_stops_the_command_in_one_line_naming_the_store(
    tmp_path, small_disk, migrated_store
):
    db = small_disk / "mlflow.db"
    uri = copy_store(migrated_store, db)
    process = start_cli(["debug=smoke", "stages=[scratch]", f"tracking.uri={uri}"], tmp_path)
    wait_for_running_stage(uri, "scratch")
    fill(small_disk)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr[-2000:]
    assert stderr.splitlines() == [
        f"error: no space left on device writing {db}: the command stopped; runs it could not "
        "end stay RUNNING until the next command on that store ends them FAILED"
    ]
    (small_disk / "filler").unlink()  # space again: the next command ends the runs left open
    done = run_cli(["debug=smoke", "stages=[scratch]", f"tracking.uri={uri}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = runs_by_stage(MlflowClient(uri))
    first = min(runs["parent"], key=lambda run: run.info.start_time)
    assert first.info.status == "FAILED"
    assert not [r for rs in runs.values() for r in rs if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_ctrl_c_on_a_command_whose_disk_just_filled_is_an_interrupt(
    tmp_path, small_disk, migrated_store
):
    db = small_disk / "mlflow.db"
    uri = copy_store(migrated_store, db)
    process = start_cli(["debug=smoke", "stages=[scratch]", f"tracking.uri={uri}"], tmp_path)
    wait_for_running_stage(uri, "scratch")
    process.send_signal(signal.SIGSTOP)  # the disk fills and Ctrl-C comes before it runs on
    fill(small_disk)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.splitlines() == [
        f"error: interrupted (Ctrl-C) and no space left on device writing {db}: the command "
        "stopped; runs it could not end stay RUNNING until the next command on that store ends "
        "them FAILED"
    ]


@pytest.mark.slow
def test_a_full_disk_outside_the_store_fails_its_stage_not_the_command(
    tmp_path, store_uri, client, full_disk
):
    """The search folder on a full disk: the search run ends FAILED naming the file system's
    error, the command goes on and exits 1; the store still takes writes, so nothing stays
    RUNNING and the one-line `the command stopped` of a lost store is not printed."""
    args = ["debug=smoke", f"tracking.uri={store_uri}", "stages=[feature_extraction,fine_tune]"]
    args += ["search=random", "search.max_trials=1", "search.epochs=1"]
    done = run_cli([*args, f"search.directory={full_disk / 'search'}"], tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the command stopped" not in done.stderr
    runs = runs_by_stage(client)
    (search,) = runs["search"]
    assert search.info.status == "FAILED"
    assert search.data.tags["error"].startswith("OSError: [Errno 28]")  # ENOSPC
    assert [r.info.status for r in runs["feature_extraction"]] == ["FINISHED"]
    assert not [r for rs in runs.values() for r in rs if r.info.status == "RUNNING"]
