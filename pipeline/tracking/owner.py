"""Which process owns a run: tagged on every run, so a dead owner's runs can be told apart."""

from __future__ import annotations

import os
import socket
import sys


def process_tags() -> dict[str, str]:
    """Who is running this run: lets a later invocation tell an orphan from a live run."""
    tags = {"host": socket.gethostname(), "pid": str(os.getpid())}
    node = ray_node_id()
    return tags if node is None else {**tags, "ray_node_id": node}


def ray_node_id() -> str | None:
    """The Ray node of a job run as a Ray task (the Ray launcher), else None: several nodes may
    share a host name. Ray is only looked up, never imported, so other runs do not load it."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def process_dead(tags: dict[str, str]) -> bool:
    """Whether the process that ran a run is known to be gone (same host, no such pid)."""
    if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
        return False
    return not process_alive(int(tags["pid"]))
