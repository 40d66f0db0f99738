"""The user's settings: ``<home>/config.toml``.

A missing file means the defaults. A file that is there but unreadable, not TOML, or holds an
unknown key or a value of the wrong kind is an error naming the file: a typo must not quietly
put the default model in place of the one the user chose.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from . import paths, tabular
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Config:
    """What config.toml sets; None where it says nothing."""

    default_model: str | None = None


_KEYS = ("default_model",)


def parse_config(text: str, source: str) -> Config:
    """Parse config.toml text; raise ConfigError naming ``source``, the key and the problem."""
    try:
        data = tabular.loads_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"invalid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(source, f"unknown key(s) {unknown}; allowed: {list(_KEYS)}")
    model = data.get("default_model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ConfigError(source, f"must be a non-empty string (a model name, .gguf path or hf: "
                          f"reference), got {model!r}", key="default_model")
    return Config(default_model=model.strip() if model is not None else None)


def load_config() -> Config:
    """The home's config.toml, or the defaults when there is none."""
    path = paths.config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # no config (or no home) yet
        return Config()
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    return parse_config(text, str(path))
