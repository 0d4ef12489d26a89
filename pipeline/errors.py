"""Errors that the entry point reports in one line, without a traceback."""


class ConfigError(ValueError):
    """A composition that cannot run: names the offending key or value and what is allowed."""
