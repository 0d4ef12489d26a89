"""The single-host SLURM cluster (`.ci/slurm-cluster`) listens on the loopback only: slurm.conf's
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny make slurmctld, slurmd and a job's slurmstepd
bind the address the node's name resolves to (127.0.0.1) instead of 0.0.0.0; munged has only its
Unix socket. Without them both daemons listened on 0.0.0.0 (seen with `ss -ltnp`)."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import psutil
import pytest

from tests.clusters import SlurmCluster, listening

pytestmark = pytest.mark.slow


def step_daemon(folder: Path, timeout_s: float = 60) -> psutil.Process:
    """The slurmstepd of the job running `sleep` in `folder` (bounded in time): the parent of
    that `sleep`, found by its working folder, which no other cluster's job shares."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in psutil.process_iter(["name", "cwd"]):
            if process.info["name"] == "sleep" and process.info["cwd"] == str(folder):
                parent = process.parent()
                while parent is not None and parent.name() != "slurmstepd":
                    parent = parent.parent()
                if parent is not None:
                    return parent
        time.sleep(0.5)
    pytest.fail(f"no job ran `sleep` in {folder} within {timeout_s} s")


def test_the_slurm_daemons_and_a_jobs_step_daemon_listen_on_the_loopback_only(
    tmp_path, slurm_cluster: SlurmCluster
):
    submitted = slurm_cluster.command(
        "sbatch", "--parsable", "--time=1", f"--chdir={tmp_path}", "--wrap", "sleep 60"
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        step = step_daemon(tmp_path)
        pids = slurm_cluster.daemons() | {step.pid}
        names = {pid: psutil.Process(pid).name() for pid in pids if psutil.pid_exists(pid)}
        found = {f"{names.get(pid)} {pid}": listening(pid) for pid in pids}
        daemons = [k for k, addresses in found.items() if k.split()[0] in ("slurmctld", "slurmd")]
        assert len(daemons) == 2 and all(found[k] for k in daemons), found
        beyond = {
            k: addresses
            for k, addresses in found.items()
            if not all(ipaddress.ip_address(a).is_loopback for a in addresses)
        }
        assert beyond == {}, f"listening beyond the loopback: {beyond}"
        munged = [k for k in found if k.startswith("munged")]
        assert munged and all(found[k] == [] for k in munged), "munged: its Unix socket only"
    finally:
        slurm_cluster.command("scancel", "--signal=KILL", job)
