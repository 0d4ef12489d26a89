"""Keep secrets out of MLflow: params, tags and the logged config are shared with everyone who
can open the UI. Values of keys that look like credentials, and passwords in URIs, are masked."""

from __future__ import annotations

import re

MASK = "***"
SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|credential|private[_-]?key)", re.I
)
URI_USERINFO = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]+):(?P<password>[^@/\s]+)@", re.I
)


def redact_text(text: str) -> str:
    """`https://user:token@host` -> `https://user:***@host`, anywhere in the text."""
    return URI_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redact_value(key: str, value: object) -> object:
    if SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in (None, ""):
        return MASK
    return redact_text(value) if isinstance(value, str) else value


def redact_tree(tree: object, key: str = "") -> object:
    """A copy of a nested config with every secret-looking value masked."""
    if isinstance(tree, dict):
        return {k: redact_tree(v, f"{key}.{k}" if key else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact_tree(v, key) for v in tree]
    return redact_value(key, tree)
