"""MLflow's settings from the environment (`MLFLOW_*`), checked before a store is opened.

MLflow reads most of them only when it first needs them, some on its own logging thread: there a
value it cannot convert (`MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=abc`) ends the thread, and every
wait for a queued write then blocks for ever. Each variable MLflow declares is read here through
MLflow's own definition of it, so a value MLflow would refuse is one line before any run starts:
in the command line's check (pipeline/cli/preflight.py), and again where a store is opened.
"""

from __future__ import annotations

import os

from pipeline.errors import ConfigError

BOOLEANS = "true, false, 1 or 0 (any case)"


def mlflow_variables() -> list:
    """The environment variables that MLflow declares (mlflow.environment_variables)."""
    import mlflow.environment_variables as declared

    values = vars(declared).values()  # the variables, and the classes that define them
    return [value for value in values if hasattr(value, "get_raw") and not isinstance(value, type)]


def allowed(variable) -> str:
    kind = getattr(variable, "type", None)
    if kind is bool:
        return BOOLEANS
    return {int: "an integer", float: "a number"}.get(kind, getattr(kind, "__name__", str(kind)))


def check_mlflow_environment() -> None:
    """Raise ConfigError naming the first `MLFLOW_*` variable whose value MLflow cannot read.

    With no `MLFLOW_*` variable set there is nothing to read, and MLflow is not imported."""
    if not any(name.startswith("MLFLOW_") for name in os.environ):
        return
    for variable in mlflow_variables():
        if variable.name not in os.environ:
            continue
        try:
            variable.get()
        except ValueError:
            value = os.environ[variable.name]
            raise ConfigError(
                f"{variable.name}={value!r} in the environment: MLflow needs {allowed(variable)} "
                "there; set it so, or unset it"
            ) from None
