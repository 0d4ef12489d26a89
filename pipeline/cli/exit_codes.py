"""Every command's exit codes, in one place (docs/operations.md: exit codes). Imports nothing:
start-up reads them before anything else is loaded."""

EXIT_OK = 0
EXIT_ERROR = 1  # a run failed: marked FAILED
EXIT_CONFIG = 2  # a config or option mistake, before anything trains
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: runs marked KILLED
