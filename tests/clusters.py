"""Real daemons for the slow tier, started in temporary folders on the loopback interface:
a throw-away PostgreSQL cluster behind an `mlflow server`, and a single-host SLURM cluster
(`.ci/slurm-cluster`). Each fixture stops what it started and checks that no process is left.

    def test_x(pg_server):             # pg_server.uri: http://127.0.0.1:<port>
        pg_server.stop_server(); pg_server.start_server()
        pg_server.stop_database(); pg_server.start_database()
        MlflowClient(pg_server.database_uri)  # postgresql://mlflow@127.0.0.1:<port>/mlflow

tests/conftest.py imports both fixtures, so every test module can ask for them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from pipeline import PROJECT_ROOT
from pipeline.tracking.server import ServerDidNotStart, family, free_port, start_server, stop_server

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15 (.ci/install-packages)
PG_USER = "postgres"  # initdb refuses root: as root, the cluster is the postgres user's
START_S = 120  # a daemon not up in this long is a failure (the server migrates a new database)


def as_database_user() -> dict:
    """subprocess arguments that run a PostgreSQL command as a user initdb accepts."""
    return {"user": PG_USER, "group": PG_USER} if os.geteuid() == 0 else {}


def listening(pid: int) -> list[str]:
    """The addresses process `pid` listens on (inet), none if it ended meanwhile."""
    try:
        sockets = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        return []
    return [s.laddr.ip for s in sockets if s.status == psutil.CONN_LISTEN]


def leftover(pids: set[int], settle: float = 10) -> list[str]:
    """The processes of `pids` still alive after `settle` seconds (a process stopped a moment
    ago may still be exiting; zombies reaped by nobody count as gone)."""
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(pid))
    psutil.wait_procs(processes, timeout=settle)
    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return alive


@dataclass
class PgTrackingServer:
    """An `mlflow server` on 127.0.0.1 over a PostgreSQL cluster in `folder` (its socket there
    too, TCP on 127.0.0.1 only); both can be stopped and started again on the same ports."""

    folder: Path
    pg_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    server: subprocess.Popen | None = None
    seen: set[int] = field(default_factory=set)  # every process started, checked at the end

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_uri(self) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the cluster extra has psycopg2.
        return f"postgresql+psycopg2://mlflow@127.0.0.1:{self.pg_port}/mlflow"

    def pg(self, *args: str) -> None:
        subprocess.run(
            [str(PG_BIN / args[0]), *args[1:]], check=True, capture_output=True, timeout=START_S,
            cwd=self.folder, **as_database_user(),
        )  # fmt: skip

    def init_database(self) -> None:
        """initdb (user `mlflow`, trust on the loopback: a throw-away cluster), start, createdb."""
        data = self.folder / "data"
        self.pg("initdb", "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8")
        self.start_database()
        self.pg("createdb", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "mlflow", "mlflow")

    def start_database(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.pg_port} -k {self.folder}"
        self.pg("pg_ctl", "start", "-w", "-D", str(self.folder / "data"), "-o", options,
                "-l", str(self.folder / "postgres.log"))  # fmt: skip
        postmaster = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
        self.seen |= family(postmaster)

    def stop_database(self) -> None:
        self.pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.folder / "data"))

    def start_server(self) -> None:
        """The server on its port (the same after a restart), its output in server.log."""
        try:
            self.server, _ = start_server(
                self.database_uri, self.folder / "artifacts", port=self.port,
                log=self.folder / "server.log", cwd=self.folder, timeout_s=START_S,
            )  # fmt: skip
        except ServerDidNotStart as error:
            pytest.fail(str(error))
        self.seen |= family(self.server.pid)

    def stop_server(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s, then its stragglers."""
        if self.server is not None:
            self.seen |= stop_server(self.server)
        self.server = None

    def close(self) -> list[str]:
        """Stop both; the processes still alive, if any (there should be none)."""
        self.stop_server()
        if (self.folder / "data" / "postmaster.pid").exists():
            self.stop_database()
        return leftover(self.seen)


def refused_postgres() -> str | None:
    """Why this machine cannot run the throw-away PostgreSQL cluster, or None."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({PG_BIN}; .ci/install-packages installs it)"
    return None


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgTrackingServer]:
    """An `mlflow server` over a new PostgreSQL database, for a test module's sweeps."""
    reason = refused_postgres()
    if reason:
        pytest.skip(reason)
    # Not under pytest's tmp folder: the postgres user must reach it (/tmp/pytest-of-root is 0700).
    folder = Path(tempfile.mkdtemp(prefix="tl-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, PG_USER, PG_USER)
    handle = PgTrackingServer(folder)
    try:
        handle.init_database()
        handle.start_server()
        yield handle
    finally:
        left = handle.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert left == [], f"processes left behind: {left}"


@dataclass
class SlurmCluster:
    """`.ci/slurm-cluster up FOLDER`: SLURM_CONF is the environment's while the fixture lasts."""

    folder: Path

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def daemons(self) -> set[int]:
        pids = set()
        for name in ("munged", "slurmctld", "slurmd"):
            pidfile = self.folder / "run" / f"{name}.pid"
            if pidfile.exists():
                pids |= family(int(pidfile.read_text().split()[0]))
        return pids

    def command(self, *args: str) -> subprocess.CompletedProcess:
        """squeue, scancel, scontrol... against this cluster."""
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)

    def queue(self) -> list[str]:
        """The job ids squeue lists (pending, running, requeued, completing)."""
        return self.command("squeue", "-h", "-o", "%i").stdout.split()


def refused_slurm() -> str | None:
    """Why this machine cannot run the single-host SLURM cluster, or None."""
    names = ("munged", "slurmctld", "slurmd", "sbatch")
    missing = [name for name in names if not shutil.which(name)]
    if missing:
        return f"{', '.join(missing)} not installed (.ci/install-packages: slurm-wlm, munge)"
    if os.geteuid() != 0:
        return "the single-host SLURM cluster runs its daemons as root (.ci/slurm-cluster)"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd in a temporary folder (short: munge's socket path is
    limited to 108 bytes); SLURM_CONF set for this module's commands."""
    reason = refused_slurm()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="tl-slurm-"))
    script = str(PROJECT_ROOT / ".ci" / "slurm-cluster")
    up = subprocess.run([script, "up", str(folder)], capture_output=True, text=True, timeout=120)
    cluster = SlurmCluster(folder)
    started = cluster.daemons()
    if up.returncode != 0:
        subprocess.run([script, "down", str(folder)], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
        last = (up.stderr.strip().splitlines() or ["no output"])[0]
        pytest.skip(f"the machine refused the SLURM daemons: {last}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        for job in cluster.queue():  # a failed test's jobs
            cluster.command("scancel", "--signal=KILL", job)
        started |= cluster.daemons()  # with the jobs' slurmstepd, if any is left
        subprocess.run([script, "down", str(folder)], capture_output=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        left = leftover(started)
        shutil.rmtree(folder, ignore_errors=True)
    assert left == [], f"processes left behind: {left}"
