"""Ctrl-C and SIGTERM during a search stop it every time: real signals, real searches, real store.

The signals are real (sent to this process by a timer thread, handled by the job's own handler);
the searches run in this process so that ten of them fit in the suite's time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.experiment import run_experiment
from pipeline.interrupts import interrupts_unwind, raise_if_interrupted
from tests.conftest import compose_config, runs_by_stage

SEARCH = ["stages=[feature_extraction,fine_tune]", "search=random", "search.max_trials=50"]
SEARCH += ["search.epochs=3"]


def trial_folders(search_dir: Path) -> int:
    return len(list(search_dir.rglob("trial_*")))


def signal_during_search(search_dir: Path, signum: int, delay_s: float) -> threading.Thread:
    """Send `signum` to this process `delay_s` after a new trial of the search started (Keras
    Tuner made its folder; the store is not polled: a client could race the store's creation)."""
    before = trial_folders(search_dir)

    def send() -> None:
        deadline = time.monotonic() + 120
        while trial_folders(search_dir) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay_s)
        os.kill(os.getpid(), signum)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


@pytest.mark.slow
def test_an_interrupt_stops_a_search_every_time_and_it_resumes(tmp_path, store_uri, capfd):
    """Ten tries at random points (seeded), each resuming the last: each stops the search, its
    runs end KILLED, none stays RUNNING, and the next command continues the same search run."""
    chance = random.Random(12)
    search_dir = tmp_path / "search"
    overrides = [*SEARCH, "debug=smoke", f"tracking.uri={store_uri}"]
    config = compose_config([*overrides, f"search.directory={search_dir}"])
    for attempt in range(10):
        signum = (signal.SIGINT, signal.SIGTERM)[attempt % 2]
        sender = signal_during_search(search_dir, signum, chance.uniform(0.0, 2.5))
        with pytest.raises(KeyboardInterrupt), interrupts_unwind():
            run_experiment(config)
        sender.join(timeout=10)

        where = f"try {attempt} ({signal.Signals(signum).name})"
        assert "Exception ignored" not in capfd.readouterr().err, where
        runs = runs_by_stage(MlflowClient(store_uri))
        statuses = {stage: {r.info.status for r in group} for stage, group in runs.items()}
        assert statuses["parent"] == {"KILLED"} and len(runs["parent"]) == attempt + 1, where
        (search_run,) = runs["search"]
        assert search_run.info.status == "KILLED", where
        assert search_run.data.tags.get("resumes", "0") == str(attempt), where
        assert statuses["trial"] <= {"FINISHED", "KILLED"}, where  # or between two trials
        assert "fine_tune" not in statuses, where


def interrupt_at(monkeypatch, name: str, when: str) -> None:
    """Ctrl-C (a real SIGINT, handled by the job's handler) `when` ("before" or "after") the first
    call of `pipeline.tracking.trials.<name>`: between the store and the observer's books."""
    from pipeline.tracking import trials

    original, calls = getattr(trials, name), []

    def interrupted(*args, **kwargs):
        calls.append(name)
        if when == "before" and len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        result = original(*args, **kwargs)
        if when == "after" and len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(trials, name, interrupted)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "when"),
    [("create_run", "after"), ("end_run", "before")],
    ids=["created-not-yet-kept", "taken-out-to-end"],
)
def test_an_interrupt_between_the_store_and_the_trials_books_leaves_no_trial_running(
    tmp_path, store_uri, monkeypatch, name, when
):
    overrides = [*SEARCH, "search.max_trials=3", "debug=smoke", f"tracking.uri={store_uri}"]
    config = compose_config([*overrides, f"search.directory={tmp_path / 'search'}"])
    interrupt_at(monkeypatch, name, when)
    with pytest.raises(KeyboardInterrupt), interrupts_unwind():
        run_experiment(config)
    runs = runs_by_stage(MlflowClient(store_uri))
    assert runs["trial"]
    assert {run.info.status for run in runs["trial"]} == {"KILLED"}
    assert runs["search"][0].info.status == "KILLED"


class FailsWhenCollected:
    def __del__(self):
        raise SystemError("an error C code reports instead of raising")


def report_through_c_code() -> None:
    """The two ways C code prints an error it does not raise: an exception in `__del__` goes to
    `sys.unraisablehook`; `PyRun_SimpleString` reports its error with `PyErr_Print`, which calls
    `sys.excepthook` (as TensorFlow's C++ did in CI when SIGTERM cut an import short)."""
    FailsWhenCollected()
    ctypes.pythonapi.PyRun_SimpleString(b"raise SystemError('printed by PyErr_Print')")


def test_errors_that_c_code_prints_are_quiet_once_interrupted_and_printed_before(
    capfd, monkeypatch
):
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # not pytest's: it warns
    hooks = (sys.unraisablehook, sys.excepthook)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), interrupts_unwind():
        report_through_c_code()
        before = capfd.readouterr().err
        with contextlib.suppress(KeyboardInterrupt):  # swallowed, as inside C code
            signal.raise_signal(signal.SIGTERM)
        report_through_c_code()
        raise_if_interrupted()
    assert "instead of raising" in before and "printed by PyErr_Print" in before
    assert capfd.readouterr().err == ""
    assert (sys.unraisablehook, sys.excepthook) == hooks
