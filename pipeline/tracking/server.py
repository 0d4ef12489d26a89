"""A local `mlflow server` on 127.0.0.1: started and waited for until it answers, stopped with
every process it started. The slow tests' and the benches' tracking server (tests/test_server.py,
tests/clusters.py, bench/launchers.py, bench/report.py); MLflow itself is not imported.

    process, url = start_server("sqlite:////tmp/x/mlflow.db", Path("/tmp/x/artifacts"))
    ...
    stop_server(process)          # SIGTERM to its process group, SIGKILL after the grace time
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

START_S = 120  # a busy 2-core machine takes tens of seconds; a new database migrates first
POLL_S = 0.25
JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"  # mlflow.environment_variables declares it


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer /health within the time allowed."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def family(pid: int) -> set[int]:
    """`pid` and every descendant of it now."""
    try:
        process = psutil.Process(pid)
        return {pid, *(child.pid for child in process.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def answers(url: str) -> bool:
    """Whether the server at `url` answers its health check now."""
    import requests  # MLflow's dependency: loaded only where a server is started

    try:
        return requests.get(f"{url}/health", timeout=1).ok
    except requests.RequestException:
        return False


def start_server(
    backend_uri: str,
    artifacts: Path,
    *,
    port: int | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
    timeout_s: float = START_S,
) -> tuple[subprocess.Popen, str]:
    """`mlflow server` over `backend_uri` (one worker, proxied artifacts in `artifacts`) on
    127.0.0.1, in a process group of its own; (process, URL) once /health answers. Its output is
    appended to `log` (a pipe nobody reads would block it). Raises ServerDidNotStart."""
    port = port or free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts),
    ]  # fmt: skip
    # Without MLflow's job runner (huey consumers for its GenAI jobs, which the pipeline never
    # submits): eight more processes that import MLflow beside the server while it starts,
    # competing for the CPUs, and outlive it on SIGTERM.
    env = {**os.environ, JOB_EXECUTION: "false"}
    with log.open("ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=output, start_new_session=True, cwd=cwd, env=env
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if answers(url):
            return process, url
        time.sleep(POLL_S)
    exited = process.poll()
    stop_server(process)
    why = f"exited with {exited}" if exited is not None else f"no answer within {timeout_s:.0f} s"
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise ServerDidNotStart(f"mlflow server on {backend_uri} did not start ({why}): {tail}")


def stop_server(process: subprocess.Popen, grace_s: float = 30, kill: bool = False) -> set[int]:
    """SIGTERM (SIGKILL when `kill`) to the server's process group (gunicorn/uvicorn workers
    too), SIGKILL after `grace_s`; then its children that outlive it. The processes it had."""
    started = family(process.pid)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_s)
    stop_stragglers(started - {process.pid})
    return started


def stop_stragglers(pids: set[int], grace_s: float = 10) -> None:
    """Processes that outlive the server (MLflow's huey job consumers wind down on their own,
    seconds later, and may have left its group): SIGTERM, then SIGKILL after `grace_s`."""
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            alive.append(psutil.Process(pid))
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for process in still:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(still, timeout=grace_s)
