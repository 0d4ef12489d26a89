"""Screenshots of the MLflow UI for the guide, taken by headless Chromium from a real store.

    python docs/scripts/screenshots.py /path/to/mlflow.db      # writes docs/images/mlflow-*.png

The store is copied to a temporary folder first (the original is never opened for writing); a
`mlflow server` serves the copy on 127.0.0.1 on a free port, Chromium (Debian's package,
/usr/bin/chromium) captures the experiment's runs table and the first seed's parent run, and the
server is stopped, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "images"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--window-size=1440,900", "--virtual-time-budget=8000",
    "--run-all-compositor-stages-before-draw",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pages(store: Path, experiment: str) -> tuple[str, str, str]:
    """The experiment's id, its first seed's parent run and that run's experiment, read by SQL."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        (experiment_id,) = db.execute(
            "select experiment_id from experiments where name = ?", (experiment,)
        ).fetchone()
        (run_id,) = db.execute(
            "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
            "where r.experiment_id = ? and t.key = 'seed' order by cast(t.value as int), "
            "r.start_time limit 1",
            (experiment_id,),
        ).fetchone()
    return str(experiment_id), run_id, experiment


def wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"error: mlflow server exited with {server.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return
        except OSError:
            time.sleep(1)
    sys.exit(f"error: mlflow server not up at {url} within {timeout_s:.0f} s")


def screenshot(url: str, out: Path, profile: Path) -> None:
    command = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}"]
    subprocess.run([*command, url], check=True, capture_output=True, timeout=120)
    print(f"written: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, help="an MLflow SQLite file (mlflow.db), left as it is")
    parser.add_argument("--experiment", default="transfer-lab")
    parser.add_argument("--out", type=Path, default=IMAGES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        shutil.copyfile(args.store, copy)
        experiment_id, run_id, _ = pages(copy, args.experiment)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{copy}", "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            wait_until_up(url, server)
            args.out.mkdir(parents=True, exist_ok=True)
            profile = Path(tmp) / "profile"
            runs = f"{url}/#/experiments/{experiment_id}/runs"
            screenshot(runs, args.out / "mlflow-experiment-runs.png", profile)
            run = f"{url}/#/experiments/{experiment_id}/runs/{run_id}"
            screenshot(run, args.out / "mlflow-run.png", profile)
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # its group: uvicorn and the job runner too
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
