"""Ctrl-C or SIGTERM before a job starts: one line and exit 130 (the why is in __main__'s
docstring). Without the hold, SIGTERM during the seconds of imports ends the process with 143 and
no line, and Ctrl-C there prints a traceback.

`python -m pipeline` imports this package before it runs `pipeline/__main__.py`; the package
installs the handler at its first line, so the window where a KeyboardInterrupt could surface
as a traceback is only the interpreter's own start-up and runpy's search for the package.
"""

import os
import signal
import sys

from pipeline.cli.exit_codes import EXIT_INTERRUPTED

# The commands the project ships: each holds interrupts from its package's first line.
COMMANDS = ("pipeline", "pipeline.report", "pipeline.reproduce", "pipeline.replicate")
TERMINAL = os.dup(2)  # stderr as it was: TensorFlow's import captures fd 2 for a while


def exit_at_once(signum, frame) -> None:
    os.write(TERMINAL, b"error: interrupted outside a job; nothing was running\n")
    os._exit(EXIT_INTERRUPTED)


def module_python_m_is_locating() -> str | None:
    """The module named by `python -m NAME` while runpy locates it (it sets sys.argv[0] to "-m"
    meanwhile, as Python's docs say), else None."""
    if sys.argv[:1] != ["-m"]:
        return None
    options = sys.orig_argv[1:]
    for index, option in enumerate(options):
        if option == "-m":
            return options[index + 1] if index + 1 < len(options) else None
        if option.startswith("-m"):
            return option[2:]
    return None


def hold_interrupts() -> None:
    """Ctrl-C and SIGTERM exit at once, in one line, until a command sets its own handlers."""
    signal.signal(signal.SIGINT, exit_at_once)
    signal.signal(signal.SIGTERM, exit_at_once)
