"""What the domain code needs of signals: Ctrl-C and SIGTERM raise KeyboardInterrupt while a job
runs (`interrupts_unwind`), an interrupt that Python swallowed is raised again at the next batch
or trial (`raise_if_interrupted`), and a run that ends after one is KILLED (`interrupt_received`).

Nothing of the process's set-up lives here (TensorFlow's import, seeds, the exit): see
pipeline/cli/process.py.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.errors import TrackingLost

# The reason of the interrupt received while a job runs (see `interrupts_unwind`), kept so that
# one Python swallowed can be raised again.
received_interrupts: list[str] = []


def signal_reason(signum: int) -> str:
    """How the one-line errors name an interrupt: `Ctrl-C`, `signal SIGTERM`."""
    return "Ctrl-C" if signum == signal.SIGINT else f"signal {signal.Signals(signum).name}"


def raise_keyboard_interrupt(signum: int, frame) -> None:
    """Ctrl-C and SIGTERM (a scheduler's stop, `kill`) unwind: runs end KILLED, not RUNNING."""
    reason = signal_reason(signum)
    received_interrupts.append(reason)
    raise KeyboardInterrupt(reason)


def raise_if_interrupted(cause: BaseException | None = None) -> None:
    """Raise again an interrupt that Python swallowed.

    A KeyboardInterrupt raised inside a weak-reference callback or a `__del__` (TensorFlow and
    Keras run many of them when a trial's session is cleared) is reported as unraisable and lost;
    training would go on. One raised inside an extension can come out as another error (`cause`).
    Keras callbacks call this after every batch (see model.py), the search between trials.
    """
    if received_interrupts:
        raise KeyboardInterrupt(received_interrupts[-1]) from cause


def interrupt_received() -> bool:
    """Whether Ctrl-C or SIGTERM came while the job ran: whatever error ends a run then, the run
    was interrupted (KILLED), not failed."""
    return bool(received_interrupts)


def quiet_after_interrupt(hook: Callable[..., None]) -> Callable[..., None]:
    """`hook` (`sys.unraisablehook` or `sys.excepthook`) for a job: once Ctrl-C or SIGTERM came,
    an error that C code prints instead of raising (`PyErr_WriteUnraisable` calls the first hook,
    `PyErr_Print` the second) is the interrupt's echo and is not printed: a KeyboardInterrupt lost
    in a weak-reference callback, or the SystemError that an import cut short inside TensorFlow's
    C++ becomes (seen in CI: `<built-in function __import__> returned a result with an exception
    set`). The interrupt is raised again and the command ends in one line. Before one, errors
    print as usual."""

    def quiet(*report) -> None:
        if not received_interrupts:
            hook(*report)

    return quiet


@contextmanager
def interrupts_unwind() -> Iterator[None]:
    """SIGTERM and Ctrl-C raise KeyboardInterrupt while the block runs, every time (see
    `raise_if_interrupted`); the old handlers come back after (`python -m pipeline` ends at once
    on Ctrl-C outside a job: see pipeline/__main__.py)."""
    received_interrupts.clear()
    previous_term = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    previous_int = signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    previous_unraisablehook, previous_excepthook = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = quiet_after_interrupt(previous_unraisablehook)
    sys.excepthook = quiet_after_interrupt(previous_excepthook)
    try:
        yield
    except TrackingLost:
        raise  # says whether it was interrupted
    except Exception as error:
        raise_if_interrupted(cause=error)  # the interrupt, come out as another error
        raise
    finally:
        sys.unraisablehook = previous_unraisablehook
        sys.excepthook = previous_excepthook
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
        received_interrupts.clear()
