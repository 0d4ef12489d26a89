"""SIGTERM (or Ctrl-C) to a sweep whose launcher runs jobs in worker processes stops it as a whole.

`hydra/launcher=joblib` runs jobs in loky workers. Left alone, SIGTERM ends the sweep's process
with 143 and the workers go on starting jobs; and loky kills every worker (SIGKILL, runs left
RUNNING) as soon as one of them exits. So the two sides agree through a small folder named by the
environment (inherited by the workers):

- each job in a worker registers its process there while it runs (`job_slot`);
- the sweep's process, on the signal (`stop_sweep`), marks the sweep stopping, sends SIGTERM to the
  workers that run a job, and waits until their jobs have unwound (runs marked KILLED);
- a worker whose job was interrupted, or that is handed a job once the sweep is stopping, does not
  return to loky (which would start the next job): it waits to be ended (`wait_to_be_ended`);
- then the sweep's process ends every worker and exits 130 with one line.

No worker exits before its job has unwound, so loky never kills one mid-job. Jobs in the sweep's
own process (the basic launcher) need none of this: their Ctrl-C/SIGTERM handling stops the sweep.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

STATE = "TRANSFER_LAB_SWEEP_STATE"  # the folder; its name carries the sweep's process id
STOPPING = "stopping"
UNWIND_S = 120  # a job's unwinding (runs marked KILLED, MLflow's queue flushed) takes seconds


# What must still happen when a stopped sweep's process ends without unwinding (os._exit: loky's
# own exit handlers would report the workers it no longer has): its sweep run is ended.
at_stop: list[Callable[[], None]] = []


def state_folder() -> Path | None:
    """The sweep's folder, where it exists: a job on another host (submitit_slurm exports the
    environment to its jobs) does not see the submitting host's /tmp and runs as a plain job."""
    folder = os.environ.get(STATE)
    return Path(folder) if folder and Path(folder).is_dir() else None


def prepare() -> Path:
    """In the sweep's process, before its launcher starts workers: the folder they inherit."""
    folder = Path(tempfile.mkdtemp(prefix=f"transfer-lab-sweep-{os.getpid()}-"))
    os.environ[STATE] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def in_worker() -> bool:
    """Whether this process is a launcher's worker of a sweep started by `python -m pipeline -m`:
    a descendant of the sweep's process. A SLURM job on the sweep's own host sees the folder too
    (sbatch exports the environment) but descends from slurmd: no one would end it, so it runs
    as a plain job, like one on another host."""
    folder = state_folder()
    if folder is None:
        return False
    name = folder.name.split("-")  # transfer-lab-sweep-<pid>-<random>, made by `prepare`
    if len(name) < 4 or not name[3].isdigit() or int(name[3]) == os.getpid():
        return False
    sweep_pid = int(name[3])
    import psutil

    try:
        return any(parent.pid == sweep_pid for parent in psutil.Process().parents())
    except psutil.Error:
        return False


def wait_to_be_ended() -> None:
    """Never return to the launcher: the sweep's process ends this worker."""
    for name in ("SIGTERM", "SIGINT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    while True:
        time.sleep(3600)


@contextlib.contextmanager
def job_slot() -> Iterator[None]:
    """A job in a launcher's worker: registered while it runs; none starts once stopping."""
    folder = state_folder()
    if folder is None or not in_worker():
        yield
        return
    if (folder / STOPPING).exists():
        wait_to_be_ended()
    slot = folder / str(os.getpid())
    slot.touch()
    try:
        yield
    finally:
        slot.unlink(missing_ok=True)


def end_interrupted_job() -> None:
    """In a worker, once an interrupted job has unwound: tell the sweep's process, then wait."""
    folder = state_folder()
    if folder is not None and in_worker():
        sys.stdout.flush()
        sys.stderr.flush()
        (folder / str(os.getpid())).unlink(missing_ok=True)
        wait_to_be_ended()


def busy_workers(folder: Path) -> list[int]:
    return [int(path.name) for path in folder.iterdir() if path.name.isdigit()]


def launcher_helper(process) -> bool:
    """loky's resource tracker. It is paused (SIGSTOP) before the workers end and killed last:
    killed first, a worker or loky's thread here relaunches it on their next message, and the
    new tracker prints a KeyError traceback for a semaphore it never saw; left running, it
    reports the workers' ends."""
    import psutil

    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


def stop_sweep(signum: int, terminal_fd: int) -> None:
    """In the sweep's process: stop the running jobs, end the workers; then the caller exits."""
    import psutil

    folder = state_folder()
    workers = psutil.Process().children(recursive=True)
    if folder is not None and folder.is_dir():
        (folder / STOPPING).touch()
        if signum != signal.SIGINT:  # Ctrl-C reached the whole process group already
            for pid in busy_workers(folder):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + UNWIND_S
        while busy_workers(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        stuck = busy_workers(folder)
        if stuck:
            os.write(
                terminal_fd, f"error: jobs in {stuck} did not unwind in {UNWIND_S} s\n".encode()
            )
        shutil.rmtree(folder, ignore_errors=True)
    helpers = [process for process in workers if launcher_helper(process)]
    workers = [process for process in workers if process not in helpers]
    signal_each(helpers, "suspend")  # messages to it wait in its pipe, unread
    signal_each(workers, "kill")
    psutil.wait_procs(workers, timeout=10)
    for finish in at_stop:
        finish()
    signal_each(helpers, "kill")  # a paused process dies on SIGKILL, reading nothing more
    psutil.wait_procs(helpers, timeout=10)


def signal_each(processes: list, action: str) -> None:
    """`action` (psutil's suspend or kill) on each process still there."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            getattr(process, action)()
