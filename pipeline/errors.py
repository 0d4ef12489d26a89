"""Errors that the entry point reports in one line, without a traceback."""


class ConfigError(ValueError):
    """A composition that cannot run: names the offending key or value and what is allowed."""


def require(condition: bool, message: str) -> None:
    """ConfigError(message) unless `condition`: the checks of validation.py read as rules."""
    if not condition:
        raise ConfigError(message)


class SearchError(RuntimeError):
    """A search that cannot give a best trial (none succeeded, or too many failed in a row)."""


class TrackingLost(RuntimeError):
    """The store stopped taking writes while the command ran: the command stops, saying why
    (no later stage could log either). `interrupted`: Ctrl-C or SIGTERM came first."""

    interrupted = False


class StoreUnwritable(TrackingLost):
    """A SQLite store that could be written when the command started no longer can (the disk
    filled up, the file or its file system turned read-only). `problem` names the cause and file;
    `interrupt` the Ctrl-C or signal that came first, if one did (exit 130, else 1)."""

    def __init__(self, problem: str, interrupt: str | None = None):
        self.interrupted = interrupt is not None
        what = f"interrupted ({interrupt}) and " if self.interrupted else ""
        super().__init__(
            f"{what}{problem}: the command stopped; runs it could not end stay RUNNING until the "
            "next command on that store ends them FAILED"
        )


class TrackingUnreachable(TrackingLost):
    """The tracking server stopped answering while the command ran: it stops, saying so.

    The runs it had open stay RUNNING on the server; the next command on that store ends them
    FAILED (the orphan sweep). `interrupted`: Ctrl-C or SIGTERM came first (exit 130, else 1).
    """

    def __init__(self, uri: str, cause: BaseException):
        self.interrupted = isinstance(cause, KeyboardInterrupt)
        what = f"interrupted ({cause or 'Ctrl-C'}) and " if self.interrupted else ""
        super().__init__(
            f"{what}the tracking server {uri} is unreachable: this command's runs are left RUNNING "
            "there (the next command on that store ends them FAILED)"
        )
