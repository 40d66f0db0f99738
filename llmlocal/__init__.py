"""llmlocal: run quantised GGUF language models on your CPU, offline once pulled."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["__version__", "pull", "load", "index", "LocalModel", "DocumentIndex"]

if TYPE_CHECKING:
    from .api import DocumentIndex, LocalModel, index, load


def pull(model: str, *, sha256: str | None = None, progress: bool = False):
    """Install a model (catalogue name, ``.gguf`` path or ``hf:`` reference); returns its record."""
    from . import catalog, store

    return store.pull(catalog.resolve(model, sha256=sha256), progress=progress).installed


def __getattr__(name: str):
    # load and LocalModel live in api.py, imported on first use: `import llmlocal` (and so every
    # CLI start, which reads __version__ from here) stays free of the loader, store and runtime.
    if name in ("load", "LocalModel", "index", "DocumentIndex"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'llmlocal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
