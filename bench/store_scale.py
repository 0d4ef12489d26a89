"""The read side at scale: the report, sweep resume, the orphan sweep and reproduce's lookup over
studies of 100, 1,000 and 5,000 experiment runs, on SQLite and through an `mlflow server`.

    python bench/store_scale.py                          # sizes 100 1000 5000, both backends
    python bench/store_scale.py --sizes 100 1000 --repeats 3 --backends sqlite
    python bench/store_scale.py --server-backend postgresql://u:p@127.0.0.1/db  # a loaded store
    python bench/store_scale.py --docs docs/benchmarks-store.md   # the table from the last JSON

The stores are built by `bench/big_store.py` (MLflow's client, the pipeline's shape, cached).
Timed, per size and backend: `python -m pipeline.report` as a command (wall time, peak RSS of its
process tree, store queries), a sweep job's resume check (`finished_experiment_run`, the
`sweep.skip_finished` lookup, per job), start-up (opening the tracker: the store check and the
orphan sweep), the orphan sweep alone and `pipeline.reproduce`'s run lookup. Queries are counted
as SQL statements (SQLAlchemy's `before_cursor_execute` event) on SQLite and as HTTP requests
through a server. Printed: medians, query counts and the growth exponent between sizes (the
slope of log time over log runs: 1 is linear). Written: bench/results/store_scale.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import big_store  # noqa: E402
from bench.memory import run_measured  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "store_scale.json"
GOALS = {  # operation: (backend or None for both, limit, unit) at the size the issue names
    ("report", "sqlite", 1000): 10.0,
    ("report", "server", 1000): 30.0,
    ("resume_check", None, 5000): 0.050,
    ("page_open", "sqlite", 1000): 3.0,  # 250 variants; the 200
}
RSS_GOAL_MIB = 1024
JOBS = 20  # resume checks per measurement: half of configurations that finished, half new


class Counter:
    """SQL statements run in this process and HTTP requests it sent, while installed."""

    def __init__(self):
        self.sql = self.http = 0

    @contextmanager
    def counting(self):
        from requests.adapters import HTTPAdapter
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def on_sql(*_args):
            self.sql += 1

        send = HTTPAdapter.send

        def counted_send(adapter, *args, **kwargs):
            self.http += 1
            return send(adapter, *args, **kwargs)

        event.listen(Engine, "before_cursor_execute", on_sql)
        HTTPAdapter.send = counted_send
        try:
            yield self
        finally:
            HTTPAdapter.send = send
            event.remove(Engine, "before_cursor_execute", on_sql)

    @property
    def queries(self) -> int:
        return self.sql + self.http


def child_report(uri: str, out: str, read: str = "bulk") -> None:
    """`python -m pipeline.report` in this process, with its queries counted (the child side);
    `read="search_runs"`: every run read through pages of `search_runs` (the baseline: how the
    report read a database store before `mlflow_internals.runs_bulk`)."""
    from pipeline.report.__main__ import main

    if read == "search_runs":
        from pipeline.tracking import query

        query.runs_bulk = lambda *_args: None

    counter = Counter()
    with counter.counting():
        code = main([f"tracking_uri={uri}", f"out={out}", "log_to_mlflow=false"])
    print(json.dumps({"exit": code, "queries": counter.queries}))


def time_report(uri: str, workdir: Path, read: str = "bulk") -> dict:
    out = workdir / "report"
    command = [sys.executable, __file__, "--child-report", uri, str(out), read]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done, peak = run_measured(command, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"report failed: {done.stderr[-2000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    html, data = out / "report.html", out / "report.json"
    return {
        "seconds": seconds,
        "cpu_s": cpu,  # on a busy machine, nearer to a quiet machine's wall time than wall time
        "queries": child["queries"],
        "peak_rss_mib": peak,
        "html_mib": html.stat().st_size / 2**20,
        "json_mib": data.stat().st_size / 2**20,
        "html": str(html),
    }


def timed(operation, counter: Counter) -> tuple[float, int]:
    before = counter.queries
    start = time.perf_counter()
    operation()
    return time.perf_counter() - start, counter.queries - before


def in_process(uri: str, size: int, counter: Counter) -> dict[str, tuple[float, int]]:
    """Resume check per job, start-up, orphan sweep and reproduce's lookup, timed here."""
    from mlflow.tracking import MlflowClient

    from pipeline.config import TrackingConfig
    from pipeline.tracking.mlflow_tracker import MlflowTracker
    from pipeline.tracking.query import StoreReader, experiment_id
    from pipeline.tracking.reports import open_run
    from pipeline.tracking.runs import mark_orphans

    client = MlflowClient(uri)
    reader = StoreReader(client, [experiment_id(client, big_store.EXPERIMENT)])
    hashes = [big_store.digest("config", v, 1) for v in range(0, size // big_store.SEEDS, 7)]
    hashes = hashes[: JOBS // 2] + [big_store.digest("new", j) for j in range(JOBS // 2)]
    cfg = TrackingConfig(uri=uri, experiment_name=big_store.EXPERIMENT)

    def resume() -> None:
        for digest in hashes:
            reader.finished_experiment_run(digest)

    def startup() -> None:
        with MlflowTracker(cfg):
            pass

    stage_run = reader.first("tags.stage = 'fine_tune'")

    def reproduce_lookup() -> None:
        found, parent = open_run(uri, stage_run.run_id)
        found.invocation(parent)

    seconds, queries = timed(resume, counter)
    return {
        "resume_check": (seconds / len(hashes), round(queries / len(hashes))),
        "startup": timed(startup, counter),
        "orphan_sweep": timed(lambda: mark_orphans(client, reader, 600.0), counter),
        "reproduce_lookup": timed(reproduce_lookup, counter),
    }


def page_open(html: str, workdir: Path) -> tuple[float, float]:
    """Seconds headless Chromium takes to start, load and lay out the page (an upper bound of
    opening it in a running browser), and the same for a blank page (the browser's own start)."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return math.nan, math.nan

    def load(url: str) -> float:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]
        command += [f"--user-data-dir={workdir / 'profile'}", url]
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, timeout=120, check=True)
        return time.perf_counter() - start

    blank = load("about:blank")
    return load(Path(html).as_uri()), blank


def measure(uri: str, size: int, backend: str, args, workdir: Path) -> list[dict]:
    rows: dict[str, list] = {}
    counter, load = Counter(), os.getloadavg()[0]
    stamp = {"measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    with counter.counting():
        in_process(uri, size, counter)  # warm-up: imports, the server's first requests
    for _ in range(args.repeats):
        if args.baseline and backend == "sqlite":  # through a server both read the same way
            base = time_report(uri, workdir, "search_runs")
            rows.setdefault("report_search_runs", []).append(
                (base["seconds"], base["queries"], base)
            )
        report = time_report(uri, workdir)
        rows.setdefault("report", []).append((report["seconds"], report["queries"], report))
        with counter.counting():
            for name, (seconds, queries) in in_process(uri, size, counter).items():
                rows.setdefault(name, []).append((seconds, queries, {}))
    if backend == "sqlite":
        page, blank = page_open(report["html"], workdir)
        rows["page_open"] = [(page, 0, {"blank_page_s": blank})]
    stamp["load_1min"] = [load, os.getloadavg()[0]]  # a shared machine's, at start and end
    return [summary(size, backend, name, values) | stamp for name, values in rows.items()]


def summary(size: int, backend: str, operation: str, values: list) -> dict:
    seconds = [s for s, _, _ in values]
    row = {"runs": size, "backend": backend, "operation": operation}
    row |= {"seconds": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}
    row["queries"] = values[-1][1]
    extra = values[-1][2]
    for key in ("peak_rss_mib", "html_mib", "json_mib", "cpu_s", "blank_page_s"):
        if key in extra:
            row[key] = max(v[2][key] for v in values)
    return row


def exponents(rows: list[dict]) -> list[dict]:
    """log-log slope of seconds (and of queries) between consecutive sizes, per operation."""
    out = []
    keys = sorted({(r["backend"], r["operation"]) for r in rows})
    for backend, operation in keys:
        series = sorted((r for r in rows if (r["backend"], r["operation"]) == (backend, operation)),
                        key=lambda r: r["runs"])  # fmt: skip
        for a, b in itertools.pairwise(series):
            scale = math.log(b["runs"] / a["runs"])
            entry = {"backend": backend, "operation": operation, "from": a["runs"], "to": b["runs"]}
            timed_ok = a["seconds"] > 0 and b["seconds"] > 0  # nan compares False too
            entry["time"] = math.log(b["seconds"] / a["seconds"]) / scale if timed_ok else None
            entry["queries"] = (
                math.log(b["queries"] / a["queries"]) / scale
                if a["queries"] > 0 and b["queries"] > 0
                else None
            )
            out.append(entry)
    return out


def goals(rows: list[dict]) -> list[dict]:
    out = []
    for (operation, backend, size), limit in GOALS.items():
        for row in rows:
            if (row["operation"], row["runs"]) == (operation, size) and backend in (
                None,
                row["backend"],
            ):
                # opening a page: in a running browser, so the browser's own start is taken off
                seconds = row["seconds"] - row.get("blank_page_s", 0.0)
                out.append({**row, "goal_s": limit, "measured_s": seconds, "met": seconds <= limit})
    for row in rows:
        if row["operation"] == "report" and row["runs"] == 5000 and "peak_rss_mib" in row:
            out.append({**row, "goal_rss_mib": RSS_GOAL_MIB, "met": row["peak_rss_mib"] <= 1024})
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("mlflow", "sqlalchemy", "matplotlib", "jinja2", "scipy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def backend_uri(backend: str, db: Path, server_backend: str | None, workdir: Path):
    """The URI to read, inside a context that runs the server when there is one."""
    if backend == "sqlite":
        return nullcontext(f"sqlite:///{db}")
    from bench.report import mlflow_server

    return mlflow_server(server_backend or f"sqlite:///{db}", workdir)


def run(args) -> dict:
    rows, load = [], os.getloadavg()[0]
    for size in args.sizes:
        db = big_store.store(size)
        for backend in args.backends:
            with tempfile.TemporaryDirectory(prefix="bench-store-scale-") as tmp:
                workdir = Path(tmp)
                with backend_uri(backend, db, args.server_backend, workdir) as uri:
                    found = measure(uri, size, backend, args, workdir)
            rows += found
            for row in found:
                print_row(row)
    return {
        "bench": "store_scale",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or platform.node()}",
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": load, "end": os.getloadavg()[0]},  # a shared machine's
        "repeats": args.repeats,
        "versions": versions(),
        "server_backend": "postgresql" if args.server_backend else "sqlite",
        "figures": rows,
        "exponents": exponents(rows),
        "goals": goals(rows),
    }


def print_row(row: dict) -> None:
    extra = f" peak RSS {row['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in row else ""
    extra += f" CPU {row['cpu_s']:.1f} s" if "cpu_s" in row else ""
    print(
        f"{row['runs']:>6} {row['backend']:<7} {row['operation']:<17} "
        f"{row['seconds']:9.4f} s  {row['queries']:>6} queries{extra}",
        flush=True,
    )


def baseline_ratios(rows: list[dict]) -> list[str]:
    """The report over its same-run baseline (every run read through search_runs), per size."""
    lines = []
    for base in (r for r in rows if r["operation"] == "report_search_runs"):
        key = ("report", base["backend"], base["runs"])
        for row in (r for r in rows if (r["operation"], r["backend"], r["runs"]) == key):
            lines.append(
                f"- report / report_search_runs, {row['runs']:,} runs ({row['backend']}): wall "
                f"{row['seconds'] / base['seconds']:.2f}, CPU {row['cpu_s'] / base['cpu_s']:.2f}"
            )
    return lines


def print_summary(result: dict) -> None:
    print("\ngrowth exponents (1 = linear): operation backend sizes: time, queries")
    for e in result["exponents"]:
        t = "-" if e["time"] is None else f"{e['time']:.2f}"
        q = "-" if e["queries"] is None else f"{e['queries']:.2f}"
        print(f"  {e['operation']:<17} {e['backend']:<7} {e['from']}->{e['to']}: {t}, {q}")
    for line in baseline_ratios(result["figures"]):
        print(line)
    for goal in result["goals"]:
        limit = f"{goal['goal_s']} s" if "goal_s" in goal else f"{goal['goal_rss_mib']} MiB RSS"
        print(f"goal {goal['operation']} {goal['backend']} {goal['runs']} <= {limit}: "
              f"{'met' if goal['met'] else 'NOT met'}")  # fmt: skip


def docs_table(result: dict) -> str:
    """The Markdown table of a result: sizes x operations x backends."""
    lines = [
        "| runs | backend | operation | median s | min s | max s | queries | CPU s "
        "| peak RSS MiB | measured (load) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(result["figures"], key=lambda r: (r["operation"], r["backend"], r["runs"])):
        rss = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else ""
        cpu = f"{r['cpu_s']:.1f}" if "cpu_s" in r else ""
        when = r.get("measured", "")
        if "load_1min" in r:
            when += " ({:.1f} -> {:.1f})".format(*r["load_1min"])
        lines.append(
            f"| {r['runs']:,} | {r['backend']} | {r['operation']} | {r['seconds']:.4g} | "
            f"{r['min']:.4g} | {r['max']:.4g} | {r['queries']} | {cpu} | {rss} | {when} |"
        )
    return "\n".join(lines)


PAGE = """# Benchmarks: the store at scale

Generated by `python bench/store_scale.py --docs docs/benchmarks-store.md` from
`bench/results/store_scale.json` ({date}; {cpu_count} CPUs, {machine}; median of {repeats};
{versions}; one-minute load average {load}). Stores are built by `bench/big_store.py`:
experiment runs of 4 seeds each, three stage runs of 100 epochs of four metrics, a search of
five trials in one invocation of ten, all nested under sweep runs. `queries` counts SQL
statements (SQLite) or HTTP requests (server) of one operation; `resume_check` is per job;
`page_open` is headless Chromium started on report.html until its DOM is dumped (a blank page:
`blank_page_s` in the JSON; the goal is checked on the difference, the page in a running browser).
`measured (load)`: when the row's size and backend were measured, with the one-minute load average
at the start and the end of that measurement (the machine is shared; `CPU s` is the maximum over
the repeats).

{table}

Growth exponents between sizes (slope of log seconds over log runs; 1 is linear, 0 constant):

{exponents}

The report against its baseline measured in the same run (`--baseline`: every run read through
pages of `search_runs`, as before `mlflow_internals.runs_bulk`; below 1 is faster):

{ratios}

Goals (issue 24):

{goals}

How to read it: `report` is `python -m pipeline.report` as a command, wall time from start to exit
(imports included), with the CPU seconds of its process (`CPU s`); on a shared machine whose load
average is far above its CPU count, the CPU seconds are the nearer estimate of a quiet machine's
wall time. Through a server, the server's own work is in the wall time only. Sizes missing from the
table were not measured (`nice -n 10 python bench/big_store.py --runs 5000` builds that store:
about an hour on a quiet 2-core machine, hours on a loaded one; an interrupted build resumes after
its last finished sweep).
"""


def merged(old: dict, new: dict) -> dict:
    """`new`'s rows over `old`'s (same size, backend, operation); exponents and goals again."""
    key = ("runs", "backend", "operation")
    fresh = {tuple(r[k] for k in key) for r in new["figures"]}
    rows = [r for r in old["figures"] if tuple(r[k] for k in key) not in fresh] + new["figures"]
    dates = sorted({old["date"], new["date"]})
    out = {**new, "date": " and ".join(dates), "figures": rows}
    return out | {"exponents": exponents(rows), "goals": goals(rows)}


def write_page(result: dict, path: Path) -> None:
    """The docs page, every figure from the bench's JSON."""
    exps = [
        f"- {e['operation']} ({e['backend']}), {e['from']:,} -> {e['to']:,} runs: time "
        f"{'-' if e['time'] is None else format(e['time'], '.2f')}, queries "
        f"{'-' if e['queries'] is None else format(e['queries'], '.2f')}"
        for e in result["exponents"]
    ]
    marks = []
    for g in goals(result["figures"]):  # from the figures, with today's goals
        limit = f"<= {g['goal_s']} s" if "goal_s" in g else f"peak RSS <= {g['goal_rss_mib']} MiB"
        got = f"{g['peak_rss_mib']:.0f} MiB" if "goal_rss_mib" in g else f"{g['measured_s']:.4g} s"
        if "cpu_s" in g:
            got += f" ({g['cpu_s']:.1f} CPU s)"
        verdict = "met" if g["met"] else "NOT met"
        marks.append(
            f"- {g['operation']}, {g['backend']}, {g['runs']:,} runs, {limit}: {got}, {verdict}"
        )
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    fields = {k: result[k] for k in ("date", "cpu_count", "machine", "repeats")}
    load = result.get("load_average_1min", {})
    start, end = load.get("start", math.nan), load.get("end", math.nan)
    fields["load"] = f"{start:.1f} at the start, {end:.1f} at the end"
    text = PAGE.format(
        **fields,
        versions=versions,
        table=docs_table(result),
        exponents="\n".join(exps),
        ratios="\n".join(baseline_ratios(result["figures"])) or "- not measured in this run",
        goals="\n".join(marks),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"written: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "server"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server-backend", help="the server's backend store URI (holding the "
                        "study already); default: the SQLite file")  # fmt: skip
    parser.add_argument("--docs", type=Path, help="write the docs page from the last JSON")
    parser.add_argument("--merge", action="store_true", help="replace only the rows measured now "
                        "in the existing JSON")  # fmt: skip
    parser.add_argument("--baseline", action="store_true", help="also time the report reading "
                        "every run through search_runs, in the same run (SQLite)")  # fmt: skip
    parser.add_argument("--child-report", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_report:
        return child_report(*args.child_report)
    if args.docs:
        return write_page(json.loads(RESULTS.read_text()), args.docs)
    if not set(args.backends) <= {"sqlite", "server"} or args.repeats < 1:
        parser.error("--backends takes sqlite and/or server; --repeats must be >= 1")
    result = run(args)
    if args.merge and RESULTS.is_file():
        result = merged(json.loads(RESULTS.read_text()), result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
