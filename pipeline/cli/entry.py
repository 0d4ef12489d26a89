"""The entry point of `python -m pipeline [overrides]`: one experiment, or a sweep with `-m`.

Until a job starts (imports, composition, TensorFlow's import) and between the jobs of a sweep,
nothing is open, so Ctrl-C ends the process at once: one line and exit 130. A KeyboardInterrupt
raised there instead can surface as an ImportError from a half-loaded extension, be swallowed by
a weak-reference callback, or make CPython end the process by SIGINT after a clean exit 130.
While a job runs, Ctrl-C raises KeyboardInterrupt as usual, so that its runs end KILLED.

A sweep whose launcher runs jobs in worker processes (`hydra/launcher=joblib`) stops as a whole
(pipeline/sweeps/stop.py): SIGTERM to the command reaches the running jobs, which end their runs
KILLED; no new job starts; the workers end; the command exits 130 with one line.
"""

import os
import signal

from pipeline.cli.exit_codes import EXIT_INTERRUPTED
from pipeline.cli.startup import TERMINAL, hold_ctrl_c


def stop_sweep(signum, frame) -> None:
    """The sweep's process: stop its workers' jobs and the workers (pipeline/sweeps/stop.py),
    end the sweep's run, then exit."""
    from pipeline.interrupts import signal_reason
    from pipeline.sweeps.stop import stop_sweep as stop_workers

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # one stop at a time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_workers(signum, TERMINAL)
    reason = signal_reason(signum)
    line = f"error: interrupted ({reason}); the sweep stopped: no new job, running jobs KILLED\n"
    os.write(TERMINAL, line.encode())
    os._exit(EXIT_INTERRUPTED)


def multirun(argv: list[str]) -> bool:
    """Whether the command line asks for a sweep (`-m`)."""
    return any(arg in ("-m", "--multirun") for arg in argv)


def main(argv: list[str]) -> None:
    """Compose and check the command line, then run Hydra's app; exits the process."""
    if multirun(argv):
        from pipeline.sweeps.sequential_options import expose_plugin
        from pipeline.sweeps.stop import prepare

        expose_plugin()  # hydra/sweeper=sequential, before Hydra lists its plugins
        prepare()
        signal.signal(signal.SIGINT, stop_sweep)
        signal.signal(signal.SIGTERM, stop_sweep)
    else:
        hold_ctrl_c()  # held already since the package's import; again for runpy.run_module

    from pipeline.cli.preflight import exit_if_invalid
    from pipeline.config import register_configs

    register_configs()  # the schema, for composing (and checking) the command line first
    exit_if_invalid(argv)  # a config mistake is one line, before anything starts
    from pipeline.cli.app import main as app
    from pipeline.cli.process import exit_promptly

    try:
        app()
    except SystemExit as done:  # Hydra's way to end, whatever the job did
        exit_promptly(done.code)
    exit_promptly(0)
