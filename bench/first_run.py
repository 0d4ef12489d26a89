"""The default experiment's first run (cold: an empty store, so the backbone is pretrained) and a
later one (warm: the backbone reused), and where their seconds go.

Run from the project root with the project's virtual environment active:

    python bench/first_run.py               # 1 cold and 1 warm run, and the import probe
    python bench/first_run.py --repeats 3   # 3 of each, alternating (a fresh store per cold run)

Every run is a whole process, `python -m pipeline tracking.uri=<a throwaway SQLite store>`, run
through this file (`--child`), which notes at every log line of the run the wall time and the CPU
time of the process (user + system, all its threads: `time.process_time`). On a shared machine
whose load is far above its CPU count the wall times are inflated by waiting for a CPU, and the
CPU seconds too, less (TensorFlow's thread pools spin while they wait): neither is a quiet
machine's wall time. Compare the parts with one another and cold with warm, within one result.

Printed and written to bench/results/first_run.json: per run wall and CPU seconds and peak RSS
(of the process, like `/usr/bin/time -v`'s "Maximum resident set size"); the parts of a run
between its milestones (start-up: Python, Hydra, imports and the target data; the store, fresh or
not; the source data; each pretraining epoch; saving the backbone; each stage; the exit), each in
wall and CPU seconds; the import probe (each big package imported alone in a fresh process, CPU
seconds); the load average before and after; and the test accuracies, so that the runs are seen
to compute the same numbers. The goal (issue 21 item 5): a cold first run <= 60 s on a quiet
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_result  # bench/record.py, beside this script

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COLD_GOAL_S = 60.0
# A log message that opens a part of a run -> the part's name; the first part runs from the
# process's start to the first of these.
MILESTONES = (
    (re.compile(r"^dataset "), "store, backbone look-up, source data"),
    (re.compile(r"^pretraining "), "pretraining epoch 1"),
    (re.compile(r"^pretrain \S+ epoch (\d+)/(\d+)"), "pretraining epoch {next}"),
    (re.compile(r"^stage scratch"), "scratch"),
    (re.compile(r"^stage feature_extraction"), "feature_extraction"),
    (re.compile(r"^stage fine_tune"), "fine_tune, summary"),
)
IMPORTS = ("tensorflow", "keras", "mlflow", "hydra", "sklearn", "mlxtend.data", "scipy.stats")
# TensorFlow's settings that change its speed (threads, oneDNN), recorded when set.
TF_SETTINGS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS")
ROW = re.compile(r"^(scratch|feature_extraction|fine_tune)\s+\S+\s+(\S+)\s+\d+\s+\S+")


# --- the child: one pipeline run with its log lines timed ----------------------------------------


def child(marks_file: Path, argv: list[str]) -> None:
    """Run `python -m pipeline argv` in this process, noting (message, wall, CPU) at each log
    record; the marks go to `marks_file` at exit, whatever the exit code."""
    import atexit
    import runpy

    started_wall = float(os.environ["BENCH_STARTED"])
    marks: list[tuple[str, float, float]] = [("python", time.time(), time.process_time())]
    original = logging.Logger.callHandlers

    def noting(self, record):  # Hydra replaces the handlers; this sees every record still
        marks.append((record.getMessage(), time.time(), time.process_time()))
        return original(self, record)

    logging.Logger.callHandlers = noting

    def dump() -> None:
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        marks.append(("exit", time.time(), time.process_time()))
        payload = {"started": started_wall, "marks": marks, "peak_rss_mib": rss_mib}
        marks_file.write_text(json.dumps(payload))

    atexit.register(dump)
    sys.argv = ["pipeline", *argv]
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)


# --- the parent ------------------------------------------------------------------------------


def parts_of(marks: list, started: float) -> dict[str, dict[str, float]]:
    """{part: {"wall": s, "cpu": s}} from one run's marks (the first part from the process's
    start, in wall time, and from 0 CPU seconds)."""
    points = [("start-up: Python, Hydra, imports, target data", started, 0.0)]
    for message, wall, cpu in marks[1:]:
        for pattern, name in MILESTONES:
            found = pattern.match(message)
            if found:
                if "{next}" in name:
                    epoch, epochs = int(found.group(1)), int(found.group(2))
                    last = epoch == epochs
                    name = "saving the backbone" if last else name.format(next=epoch + 1)
                if name not in {p[0] for p in points}:
                    points.append((name, wall, cpu))
    points.append(("", marks[-1][1], marks[-1][2]))
    return {
        points[i][0]: {
            "wall": points[i + 1][1] - points[i][1],
            "cpu": points[i + 1][2] - points[i][2],
        }
        for i in range(len(points) - 1)
    }


def run_once(kind: str, store: Path, work: Path, tag: str) -> dict:
    """One measured `python -m pipeline` into `store`; its figures."""
    marks_file = work / f"{tag}.marks.json"
    out = work / f"{tag}.log"
    argv = [f"tracking.uri=sqlite:///{store}", f"hydra.run.dir={work / 'out' / tag}"]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(marks_file), *argv]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["BENCH_STARTED"] = repr(time.time())
    start = time.perf_counter()
    with out.open("w") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(out.read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command)} exited {code}:\n{tail}")
    found = json.loads(marks_file.read_text())
    accuracy = {m[1]: float(m[2]) for m in map(ROW.match, out.read_text().splitlines()) if m}
    figures = {
        "kind": kind,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "parts": parts_of(found["marks"], found["started"]),
        "test_accuracy": accuracy,
        "load_average": os.getloadavg(),
    }
    line = f"  {tag:<8} {figures['wall_s']:6.1f} s wall  {figures['cpu_s']:6.1f} CPU s  "
    line += f"{figures['peak_rss_mib']:5.0f} MiB  load {figures['load_average'][0]:.1f}"
    print(line, flush=True)
    return figures


def import_probe() -> dict[str, float]:
    """CPU seconds to import each package alone, in a fresh process each (Python's own start-up
    measured apart, as `python -c pass`)."""
    seconds = {}
    for name in ("(python -c pass)", *IMPORTS):
        code = "pass" if name.startswith("(") else f"import {name}"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, _, usage = os.wait4(process.pid, 0)
        seconds[name] = usage.ru_utime + usage.ru_stime
    return seconds


def breakdown(runs: list[dict]) -> str:
    """Median wall and CPU seconds per part, cold and warm side by side."""
    lines = [f"{'part':<46} {'cold wall':>9} {'cold CPU':>9} {'warm wall':>9} {'warm CPU':>9}"]
    names = list(dict.fromkeys(n for r in runs for n in r["parts"]))
    for name in names:
        cells = []
        for kind in ("cold", "warm"):
            values = [r["parts"][name] for r in runs if r["kind"] == kind and name in r["parts"]]
            for key in ("wall", "cpu"):
                median = statistics.median(v[key] for v in values) if values else None
                cells.append(f"{median:9.1f}" if median is not None else f"{'-':>9}")
        lines.append(f"{name:<46} {' '.join(cells)}")
    return "\n".join(lines)


def bench(repeats: int, work: Path) -> None:
    print(f"work folder {work}; load average before {os.getloadavg()[0]:.1f}", flush=True)
    runs = []
    for i in range(1, repeats + 1):
        store = work / f"store{i}" / "mlflow.db"
        runs.append(run_once("cold", store, work, f"cold{i}"))
        runs.append(run_once("warm", store, work, f"warm{i}"))
    probe = import_probe()
    print("\nimports alone, CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in probe.items()))
    print("\nwhere the seconds go (median over runs)\n" + breakdown(runs))
    for kind in ("cold", "warm"):
        mine = [r for r in runs if r["kind"] == kind]
        wall = statistics.median(r["wall_s"] for r in mine)
        cpu = statistics.median(r["cpu_s"] for r in mine)
        print(f"{kind}: median {wall:.1f} s wall, {cpu:.1f} CPU s; test accuracy "
              f"{mine[0]['test_accuracy']}")  # fmt: skip
    cold_cpu = statistics.median(r["cpu_s"] for r in runs if r["kind"] == "cold")
    warm_cpu = statistics.median(r["cpu_s"] for r in runs if r["kind"] == "warm")
    print(f"cold / warm (the baseline: the same run with its backbone cached), CPU s: "
          f"{cold_cpu / warm_cpu:.2f}")  # fmt: skip
    print(
        f"goal: cold first run <= {COLD_GOAL_S:.0f} s on a quiet 2-core CPU; here (load "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs) it took {cold_cpu:.1f} CPU s"
    )
    write_result(
        "first_run",
        {"runs": runs, "imports_cpu_s": probe, "cold_goal_s": COLD_GOAL_S},
        repeats,
        command="python -m pipeline tracking.uri=<throwaway store>",
        environment={k: os.environ[k] for k in TF_SETTINGS if k in os.environ},
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="cold and warm runs of each")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, stores)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="bench-first-run-"))
    try:
        bench(args.repeats, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
