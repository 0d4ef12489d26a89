"""A Ray node lost under a sweep's job, said in one line (docs/scaling-out-ray.md).

With `+hydra.launcher.ray.remote.max_retries=0`, or once Ray's retries are spent, the Ray
launcher's `ray.get` raises NodeDiedError or WorkerCrashedError out of the sweep and Hydra prints
a long traceback. The launcher's `launch` (Hydra's public Launcher interface) is wrapped here: that
error becomes a CompactHydraException, which Hydra prints as its message alone before it exits 1.
The sweep run then ends FAILED at exit (callbacks.py), the lost job's runs are ended FAILED by the
orphan rule at the next command, which runs only the jobs that did not finish.
"""

from __future__ import annotations

import functools
import re
import time

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

NODE_ID = re.compile(r"\b[0-9a-f]{56}\b")  # a Ray node ID: 28 bytes, in hex
DEAD_NODE_WAIT_S = 10.0  # the GCS marks a killed node dead within seconds


class RayNodeLost(CompactHydraException):
    """A Ray node died while it ran a sweep's job."""


class ReportLostRayNodes(Callback):
    """Registered in conf/config.yaml. It wraps the launcher at the sweep's start, once Hydra has
    loaded its plugins: Hydra's plugin scan executes the plugin's modules again, which would
    replace a wrap made before it."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if "hydra_ray_launcher" in str(config.hydra.launcher.get("_target_", "")):
            report_lost_nodes()


def report_lost_nodes() -> None:
    """Wrap the Ray launcher's `launch`, once; nothing without the hydra-ray-launcher plugin."""
    try:
        from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
    except ImportError:
        return
    launch = RayLauncher.launch
    if getattr(launch, "reports_lost_nodes", False):
        return

    @functools.wraps(launch)
    def launch_reporting_lost_nodes(self, job_overrides, initial_job_idx):
        from ray.exceptions import NodeDiedError, WorkerCrashedError

        try:
            return launch(self, job_overrides, initial_job_idx)
        except (NodeDiedError, WorkerCrashedError) as error:
            raise RayNodeLost(lost_node_line(error)) from error

    launch_reporting_lost_nodes.reports_lost_nodes = True
    RayLauncher.launch = launch_reporting_lost_nodes


def lost_node_line(error: Exception) -> str:
    """One line: which node was lost (its ID and address), Ray's own first line, what to do."""
    said = str(error).strip().splitlines()
    detail = said[0].split(". ")[0].rstrip(".") if said else "no message"  # its first sentence
    nodes = named_nodes(NODE_ID.findall(str(error)))
    return (
        f"error: Ray node {nodes} was lost while it ran a job ({type(error).__name__}: {detail}); "
        "the sweep run ends FAILED; the same command again runs only the jobs that did not finish "
        "(HYDRA_FULL_ERROR=1 for the traceback)"
    )


def named_nodes(said: list[str]) -> str:
    """The nodes Ray's error names, else those the cluster lists as dead, with their addresses."""
    import ray

    deadline = time.monotonic() + DEAD_NODE_WAIT_S
    while True:
        try:
            nodes = ray.nodes()
        except Exception:  # the cluster itself is gone: name what the error said
            nodes = []
        dead = [node for node in nodes if not node.get("Alive", True)]
        if said or dead or time.monotonic() > deadline or not nodes:
            break
        time.sleep(0.5)
    address = {node["NodeID"]: node.get("NodeManagerAddress", "?") for node in nodes}
    ids = list(dict.fromkeys(said)) or [node["NodeID"] for node in dead]
    if not ids:
        return "(unknown: Ray names none)"
    return ", ".join(f"{node_id} ({address.get(node_id, '?')})" for node_id in ids)
