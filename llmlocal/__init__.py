"""llmlocal: run quantised GGUF language models on your CPU, offline once pulled."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "pull"]


def pull(model: str, *, sha256: str | None = None, progress: bool = False):
    """Install a model (catalogue name, ``.gguf`` path or ``hf:`` reference); returns its record."""
    from . import catalog, store

    return store.pull(catalog.resolve(model, sha256=sha256), progress=progress).installed
