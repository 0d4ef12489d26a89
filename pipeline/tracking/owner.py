"""Which process owns a run: tagged on every run, so a dead owner's runs can be told apart."""

from __future__ import annotations

import os
import socket


def process_tags() -> dict[str, str]:
    """Who is running this run: lets a later invocation tell an orphan from a live run."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


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
