"""Peak resident memory of a whole process tree, for the benches that run the pipeline as a command.

`ru_maxrss` sees one process at a time; a job's children (MLflow, data loaders, launchers) count
too, so the tree's resident set sizes are summed, sampled every `interval_s`.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading

import psutil


class PeakTreeMemory:
    """The largest sum of RSS over a process and its descendants while it runs, in MiB."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def tree_rss(self) -> int:
        total = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # ended between listing and reading
                total += process.memory_info().rss
        return total

    def sample(self) -> None:
        while not self.done.is_set():
            try:
                self.peak_bytes = max(self.peak_bytes, self.tree_rss())
            except psutil.Error:
                return
            self.done.wait(self.interval_s)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak_bytes / 2**20


def run_measured(command: list[str], **popen) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command to completion, capturing its output; (result, peak tree RSS in MiB)."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    ) as process:
        memory = PeakTreeMemory(process.pid)
        stdout, stderr = process.communicate()
        peak = memory.stop()
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    return done, peak
