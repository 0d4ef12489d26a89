"""`python -m pipeline [overrides]`: one experiment, or a sweep with `-m`.

Until a job starts (imports, composition, TensorFlow's import) and between the jobs of a sweep,
nothing is open, so Ctrl-C ends the process at once: one line and exit 130. A KeyboardInterrupt
raised there instead can surface as an ImportError from a half-loaded extension, be swallowed by
a weak-reference callback, or make CPython end the process by SIGINT after a clean exit 130.
While a job runs, Ctrl-C raises KeyboardInterrupt as usual, so that its runs end KILLED.
"""

import os
import signal

EXIT_INTERRUPTED = 130
TERMINAL = os.dup(2)  # stderr as it was: TensorFlow's import captures fd 2 for a while


def exit_at_once(signum, frame) -> None:
    os.write(TERMINAL, b"error: interrupted outside a job; nothing was running\n")
    os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, exit_at_once)
    import sys

    from pipeline.config import register_configs
    from pipeline.preflight import exit_if_invalid

    register_configs()  # the schema, for composing (and checking) the command line first
    exit_if_invalid(sys.argv[1:])  # a config mistake is one line, before anything starts
    from pipeline.cli import main

    main()
