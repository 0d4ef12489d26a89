"""`key=value` options of the helper commands (`pipeline.report`, `pipeline.reproduce`) read into
a dataclass, a mistake being one line that names the key and what is allowed."""

from __future__ import annotations

from dataclasses import fields

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipeline.errors import ConfigError


def allowed_keys(schema: type) -> str:
    """The schema's keys; a dict field is written `name.<name>`."""
    names = [f.name + (".<name>" if f.default_factory is dict else "") for f in fields(schema)]
    return ", ".join(names)


def parse_options(schema: type, dotlist: list[str], command: str):
    """The options as a `schema` instance; ConfigError with one line on a mistake."""
    for argument in dotlist:
        if "=" not in argument:
            allowed = allowed_keys(schema)
            raise ConfigError(f"{argument}: give options as key=value; allowed keys: {allowed}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(dotlist))
    except ConfigKeyError as error:
        key = error.full_key or error.key
        allowed = allowed_keys(schema)
        raise ConfigError(f"{key} is not a key of {command}; allowed: {allowed}") from None
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        key = getattr(error, "full_key", None)
        raise ConfigError(f"{key}: {message}" if key else message) from None
    return OmegaConf.to_object(merged)
