"""Who this process is in a search: alone (`local`), or in keras-tuner's distributed mode the
`chief` (runs the oracle) or a `worker` (runs trials), as keras-tuner's environment says.
No keras_tuner import: the entry point asks before deciding to load it."""

from __future__ import annotations

import os

from pipeline.errors import ConfigError

ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def role() -> str:
    """`local`, or in keras-tuner's distributed mode `chief` (runs the oracle) or `worker`."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    missing = [name for name in ENV if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"distributed search: KERASTUNER_ORACLE_IP is set but not {missing}")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def tuner_id() -> str:
    return os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
