"""Composition checked before Hydra runs anything, so that a config mistake is one line.

Hydra reports a bad override in several lines plus a hint about stack traces. Here the command
line's overrides are composed with Hydra's own compose API first (every value of a sweep too) and
each composition's values are checked (pipeline/validation.py); a mistake comes back as one line
that names the key or option and what is allowed, before TensorFlow is imported.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from typing import get_type_hints

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline import PROJECT_ROOT
from pipeline.cli.guard import full_errors
from pipeline.cli.hydra_internals import INFO_FLAGS, parse_command_line
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.sweeps.launchers import check_launcher
from pipeline.sweeps.sequential_options import SequentialOptions, check_variant, chosen_options
from pipeline.tracking.environment import check_mlflow_environment
from pipeline.validation import check_config


def schema_keys(full_key: str) -> list[str]:
    """The keys the schema allows beside `full_key` (e.g. every key of `dataset`)."""
    node: object = Config
    for part in full_key.split(".")[:-1]:
        node = get_type_hints(node).get(part) if is_dataclass(node) else None
    return sorted(f.name for f in fields(node)) if is_dataclass(node) else []


def unknown_key(key: str) -> str:
    allowed = schema_keys(key)
    return f"{key} is not a config key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")


def extra_keys(node: object, schema: type, prefix: str = "") -> list[str]:
    """Keys that `+key=value` added beyond the schema (Hydra lets `+` through struct mode)."""
    declared = {f.name for f in fields(schema)}
    hints = get_type_hints(schema)
    extra = []
    for key in node:
        full = f"{prefix}{key}"
        if key not in declared:
            extra.append(full)
        elif is_dataclass(hints[key]) and OmegaConf.is_dict(node[key]):
            extra += extra_keys(node[key], hints[key], f"{full}.")
    return extra


def one_line(error: Exception) -> str:
    """The first line of an OmegaConf/Hydra error, with the key and what is allowed."""
    if isinstance(error, MissingConfigException) and error.options:
        group, _, wanted = (error.missing_cfg_file or "").partition("/")
        return f"{group}={wanted} is not an option; allowed: {', '.join(error.options)}"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    key = getattr(cause, "full_key", None)
    message = str(cause).splitlines()[0]
    if key and "not in" in message:
        return unknown_key(key)
    return f"{key}: {message}" if key else message


def sweep_values(override: Override) -> list[str]:
    """A sweep's values; an interval's (Optuna's `interval(0.001, 0.1)`) are its two ends."""
    if override.is_interval_sweep():
        interval = override.value()
        ends = [interval.start, interval.end]
        return [str(end) for end in ends]
    return list(override.sweep_string_iterator())


def variants(overrides: list[str]) -> list[list[str]]:
    """One override list per sweep value (the other sweeps at their first value)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [o.input_line.split("=", 1)[0] for o in parsed]
    values = [sweep_values(o) if o.is_sweep_override() else None for o in parsed]
    base = [
        o.input_line if v is None else f"{k}={v[0]}"
        for o, k, v in zip(parsed, keys, values, strict=True)
    ]
    lists = [base]
    for index, sweep in enumerate(values):
        for value in (sweep or [])[1:]:
            lists.append([*base[:index], f"{keys[index]}={value}", *base[index + 1 :]])
    return lists


def check_composition(argv: list[str], config_name: str = "config") -> str | None:
    """None when the command line composes; else one line that says what is wrong."""
    args = parse_command_line(argv)
    if any(getattr(args, flag, None) for flag in INFO_FLAGS):
        return None
    overrides = [o for o in args.overrides if o not in hydra_overrides(args)]
    try:
        candidates = variants(overrides)
    except OverrideParseException as error:
        return f"{' '.join(overrides)}: {str(error).splitlines()[0]}"
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        launcher, sweeper = "basic", None
        if args.multirun:
            try:
                launcher = launcher_choice([*candidates[0], *hydra_overrides(args)], config_name)
                hydra = [*candidates[0], *hydra_overrides(args)]
                sweeper = sweeper_options(hydra, overrides, config_name)
            except ConfigError as error:
                return str(error)
        tracked = False
        for candidate in candidates:
            try:
                cfg = compose(config_name, overrides=candidate)
                with retired_keys_unsaid():
                    config = OmegaConf.to_object(cfg)
            except (ConfigCompositionException, OmegaConfBaseException) as error:
                return one_line(error)
            for key in extra_keys(cfg, Config):
                return unknown_key(key)
            try:
                check_config(config)
                check_launcher(launcher, config)
                if sweeper is not None:
                    check_variant(sweeper, list(config.stages), config.tracking.enabled)
            except ConfigError as error:
                return str(error)
            tracked = tracked or config.tracking.enabled
    if tracked:  # once for the whole command: the environment is the same for every job
        try:
            check_mlflow_environment()
        except ConfigError as error:
            return str(error)
    return None


@contextmanager
def retired_keys_unsaid() -> Iterator[None]:
    """The job warns about retired keys (config.read_old_names) in Hydra's log; this check, which
    runs before it, does not say it first."""
    logger = logging.getLogger("pipeline.config")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def hydra_overrides(args) -> list[str]:
    return [o for o in args.overrides if o.lstrip("+~").startswith("hydra")]


def launcher_choice(overrides: list[str], config_name: str = "config") -> str:
    """The sweep's launcher (`hydra/launcher=...`, else the config's); ConfigError when it is not
    installed. Other mistakes in `hydra.*` overrides are left to Hydra's own report."""
    try:
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as error:
        group, _, wanted = (error.missing_cfg_file or "").rpartition("/")
        if group != "hydra/launcher":
            return "basic"
        raise ConfigError(
            f"{group}={wanted} is not an option; allowed: {', '.join(error.options or [])} "
            "(submitit and ray: pip install -e '.[cluster]')"
        ) from error
    except (ConfigCompositionException, OmegaConfBaseException):
        return "basic"
    return str(cfg.hydra.runtime.choices.get("hydra/launcher") or "basic")


def sweeper_options(
    overrides: list[str], task: list[str], config_name: str = "config"
) -> SequentialOptions | None:
    """hydra/sweeper=sequential's options, checked (ConfigError), else None; other sweepers and
    other mistakes in `hydra.*` overrides are left to Hydra."""
    try:
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except (ConfigCompositionException, OmegaConfBaseException):
        return None
    return chosen_options(cfg.hydra, task)


def exit_if_invalid(argv: list[str]) -> None:
    """Exit 2 with one line when the command line does not compose.

    HYDRA_FULL_ERROR=1 leaves the report to Hydra, with its traceback.
    """
    if full_errors():
        return
    problem = check_composition(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
