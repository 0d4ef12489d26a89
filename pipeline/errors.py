"""Errors that the entry point reports in one line, without a traceback."""


class ConfigError(ValueError):
    """A composition that cannot run: names the offending key or value and what is allowed."""


class SearchError(RuntimeError):
    """A search that cannot give a best trial (none succeeded, or too many failed in a row)."""
