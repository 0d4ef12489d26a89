"""A network namespace whose only interface is `lo`, for daemons that will not bind the loopback
alone (Ray 2.60's gcs_server and raylet; docs/scaling-out-ray.md: Loopback only). Its commands are
the docs' own: `unshare --net sh -c 'ip link set lo up && exec sleep infinity' &` keeps it, and
`nsenter --net=/proc/PID/ns/net COMMAND` runs a command in it; `serve_tracking` starts
an `mlflow server` so."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import copy_store

HOLD = ["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep infinity"]

# Run inside the namespace: psutil reads a process's sockets from the caller's /proc/net.
LISTENING = """
import json, sys, psutil
found = {}
for pid in map(int, sys.argv[1:]):
    try:
        sockets = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        continue
    found[pid] = [s.laddr.ip for s in sockets if s.status == psutil.CONN_LISTEN]
print(json.dumps({"interfaces": sorted(psutil.net_if_addrs()), "listening": found}))
"""


@dataclass
class Namespace:
    """`prefix` runs a command in the namespace; empty, with `refused` saying why, where the
    machine refuses namespaces (the commands then run on the host's network)."""

    holder: subprocess.Popen | None
    refused: str | None = None

    @property
    def prefix(self) -> list[str]:
        return [] if self.holder is None else ["nsenter", f"--net={self.path}"]

    @property
    def path(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"

    def holds(self, pid: int) -> bool:
        """Whether process `pid` is in this namespace."""
        try:
            return os.readlink(f"/proc/{pid}/ns/net") == os.readlink(self.path)
        except OSError:
            return False

    def listening(self, pids: list[int]) -> dict:
        """Each process's listening inet addresses and the namespace's interfaces, read inside."""
        command = [*self.prefix, sys.executable, "-c", LISTENING, *map(str, pids)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)

    def close(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait(timeout=30)


def open_namespace() -> Namespace:
    """A namespace with only `lo` (up), or a Namespace saying why none could be made."""
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return Namespace(None, f"no network namespace: {', '.join(missing)} not installed")
    holder = subprocess.Popen(HOLD, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until `sleep` runs: lo is up, the namespace is ready
        if holder.poll() is not None:
            reason = holder.stderr.read().strip().splitlines()[-1:] or ["no reason given"]
            return Namespace(None, f"no network namespace (unshare --net: {reason[0]})")
        try:
            if Path(f"/proc/{holder.pid}/cmdline").read_text().startswith("sleep"):
                return Namespace(holder)
        except OSError:
            pass
        time.sleep(0.05)
    holder.kill()
    holder.wait(timeout=30)
    return Namespace(None, "no network namespace: unshare --net did not start within 30 s")


def on_loopback(address: str, interfaces: list[str]) -> bool:
    """A loopback address, or a wildcard one where the only interface is the loopback."""
    ip = ipaddress.ip_address(address)
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip.is_loopback or (ip.is_unspecified and interfaces == ["lo"])


@dataclass
class TrackingServer:
    url: str  # what the sweeps log to (inside the namespace)
    store: str  # its SQLite backend, which the tests read: no network needed
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Until the server answers /health, inside the namespace (bounded: 180 s, for a loaded machine).
HEALTHY = """
import sys, time, urllib.request
deadline = time.monotonic() + 180
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(sys.argv[1] + "/health", timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
"""


@contextmanager
def serve_tracking(folder: Path, template: Path, namespace: Namespace) -> Iterator[TrackingServer]:
    """`mlflow server` on 127.0.0.1 in `namespace`, its SQLite backend in `folder` a copy of the
    migrated store `template` (a PostgreSQL-backed one can replace it: sweeps need only its URL);
    killed at the end, with its workers."""
    store = copy_store(template, folder / "server.db")
    port = free_port()
    command = [
        *namespace.prefix, sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", store,
        "--artifacts-destination", str(folder / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no huey job runners
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        healthy = subprocess.run([*namespace.prefix, sys.executable, "-c", HEALTHY, url])
        assert healthy.returncode == 0, "mlflow server did not answer within 180 s"
        yield TrackingServer(url, store, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # with its uvicorn workers
        process.wait(timeout=30)
