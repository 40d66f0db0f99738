"""Where llmlocal keeps things. Every function reads the environment at call time."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The llmlocal home: ``$LLMLOCAL_HOME``, else the platform's user data directory."""
    env = os.environ.get("LLMLOCAL_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("llmlocal", appauthor=False))


def blobs_dir() -> Path:
    """Verified model files, named by content: ``sha256-<hex>.gguf``; partials beside them."""
    return home() / "blobs"


def manifests_dir() -> Path:
    """One small JSON file per installed model name, pointing at its blob."""
    return home() / "manifests"


def locks_dir() -> Path:
    return home() / "locks"


def user_catalog_path() -> Path:
    """The user's catalogue, adding to or overriding the bundled models.toml."""
    return home() / "models.toml"


def config_path() -> Path:
    return home() / "config.toml"


def history_path() -> Path:
    """Chat REPL line history."""
    return home() / "chat_history"


def offline() -> bool:
    """True when the user asked for no network at all (``LLMLOCAL_OFFLINE=1``)."""
    return os.environ.get("LLMLOCAL_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
