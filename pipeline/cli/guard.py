"""How a job ends, seen from the command line: one clear line and an exit code, never a hang.

Config mistakes exit 2; Ctrl-C and SIGTERM exit 130 after the runs are marked KILLED; other errors
exit 1 after the runs are marked FAILED. Inside a sweep a failed job returns NaN instead, so that
the other jobs go on (Hydra's basic sweeper re-raises a job's exception and stops the sweep).
Set HYDRA_FULL_ERROR=1 for the traceback.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable

from pipeline.cli.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED
from pipeline.errors import ConfigError, TrackingLost
from pipeline.sweeps.job import in_sweep
from pipeline.sweeps.stop import end_interrupted_job, in_worker, job_slot

log = logging.getLogger(__name__)


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def fail(message: str, code: int) -> float:
    """Print one line; end the process, or in a sweep return NaN so the sweep goes on.

    An interrupted job in a launcher's worker waits there to be ended by the sweep's process: a
    SystemExit would go back to the launcher as the job's result and the worker would start the
    next job.
    """
    if not (code == EXIT_INTERRUPTED and in_worker()):  # the sweep's process says it, once
        print(f"error: {message}", file=sys.stderr)
    if in_sweep() and code != EXIT_INTERRUPTED:
        return math.nan
    if code == EXIT_INTERRUPTED and in_sweep():
        end_interrupted_job()  # in a launcher's worker: never returns (no next job starts there)
    sys.exit(code)


def run_guarded(job: Callable[[], float]) -> float:
    """Run `job`, turning its failure into one line and an exit code."""
    with job_slot():  # in a launcher's worker: the sweep's process can stop it (sweeps/stop.py)
        return guarded(job)


def guarded(job: Callable[[], float]) -> float:
    try:
        return job()
    except ConfigError as error:
        if full_errors():
            raise
        return fail(str(error), EXIT_CONFIG)
    except TrackingLost as error:
        if full_errors():
            raise
        return fail(str(error), EXIT_INTERRUPTED if error.interrupted else EXIT_ERROR)
    except KeyboardInterrupt as interrupt:
        if full_errors():
            raise
        reason = str(interrupt) or "Ctrl-C"
        return fail(f"interrupted ({reason}); runs marked KILLED", EXIT_INTERRUPTED)
    except Exception as error:
        if full_errors():
            raise
        log.debug("job failed", exc_info=True)
        detail = f"{type(error).__name__}: {error}".splitlines()[0]
        hint = "runs marked FAILED; HYDRA_FULL_ERROR=1 for the traceback"
        return fail(f"{detail} ({hint})", EXIT_ERROR)
