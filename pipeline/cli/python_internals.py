"""The one place that reaches into Python's private API (CPython 3.10+).

tests/test_internals.py checks it in a real interpreter, so that a Python upgrade that changes it
fails there, naming this module.
"""

from __future__ import annotations

import atexit


def run_exit_handlers() -> None:
    """Run what the interpreter runs at exit (functions registered with `atexit`: logging's
    flush, MLflow's queue ...), once, before a prompt `os._exit` (process.exit_promptly). Missing
    publicly: `atexit` registers and unregisters only; `atexit._run_exitfuncs` runs them."""
    atexit._run_exitfuncs()
