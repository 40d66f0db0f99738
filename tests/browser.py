"""A real headless Chromium for tests of what a person sees: the HTML report now, a web UI later.

Debian's Chromium is driven through Playwright's Python package (its own browser builds cannot be
downloaded here, and CI installs the distribution's). Every request the pages make is recorded,
and any that would leave the machine is aborted, so a test can assert that a page needs no network
and a page that does cannot reach it.

Use it through the ``browser_page`` fixture (registered in conftest.py)::

    def test_page(browser_page, tmp_path):
        browser_page.page.goto(path.as_uri())
        assert browser_page.network_requests() == []
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Quiet and hermetic: no sandbox (CI runs as root, where Chromium's sandbox refuses to start), no
# GPU, and none of the background traffic a fresh profile would start (updates, sync, QUIC probes).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
# What a page may load without touching the network.
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


def chromium_path() -> str:
    """The browser to drive: ``LLMLOCAL_TEST_CHROMIUM``, else Debian's ``/usr/bin/chromium``."""
    return os.environ.get("LLMLOCAL_TEST_CHROMIUM", "/usr/bin/chromium")


@dataclass
class BrowserPage:
    """A fresh page in its own browser context, and every request made from that context."""

    page: Any  # playwright.sync_api.Page
    # Every URL the pages asked for, in order, including those then refused: Chromium reports a
    # request before its Content-Security-Policy or our routing blocks it.
    requests: list[str] = field(default_factory=list)
    # URL -> why it failed: "csp" when the page's own policy refused it,
    # "net::ERR_BLOCKED_BY_CLIENT.Inspector" (refused through the DevTools protocol) when this fixture did.
    failed: dict[str, str] = field(default_factory=dict)

    # Origins (``http://127.0.0.1:PORT``) a page may reach: the llmlocal server under test, which
    # serves the page. Every other origin stays refused.
    allowed_origins: set[str] = field(default_factory=set)

    def allow_origin(self, base: str) -> None:
        """Let the pages reach ``base`` (scheme://host:port of a server on this machine), and nothing else."""
        self.allowed_origins.add(base.rstrip("/"))

    def is_local(self, url: str) -> bool:
        return url.startswith(LOCAL_SCHEMES) or _origin(url) in self.allowed_origins

    def network_requests(self) -> list[str]:
        """The requested URLs that are not local (http, https, ws, ...) and not to an allowed
        origin: a self-contained page has none."""
        return [url for url in self.requests if not self.is_local(url)]


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


@pytest.fixture(scope="module")
def _chromium() -> Iterator[Any]:
    """One browser per test module (starting Chromium costs about a second); each test gets its own
    context. Not per session: Playwright's sync API keeps an asyncio loop marked running in the
    main thread while it is started, and later tests that call asyncio.run() (the server's load
    test) would fail.

    Playwright's launch() gives the browser a new, empty profile directory of its own and deletes it
    on close, so no test sees another run's cookies, cache or history.
    """
    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)) and shutil.which(path) is None:
        pytest.fail(f"Chromium not found at {path}: the browser tests need it. Install it with "
                    "`apt-get install chromium` (.ci/run does this when run as root), or point "
                    "LLMLOCAL_TEST_CHROMIUM at a Chromium binary", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright's Python package: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(_chromium) -> Iterator[BrowserPage]:
    """A page in a fresh context (no shared cache or storage) whose requests are all recorded."""
    context = _chromium.new_context(viewport={"width": 1200, "height": 900}, service_workers="block",
                                    accept_downloads=True)
    recorded = BrowserPage(page=None)
    # On the context, not the page: it also sees popups and frames the page opens.
    context.on("request", lambda request: recorded.requests.append(request.url))
    context.on("requestfailed", lambda request: recorded.failed.__setitem__(request.url, request.failure or "?"))

    def refuse(route: Any) -> None:
        route.abort("blockedbyclient")

    # Recorded first (the request event fires before routing), then refused: a page that tries
    # the network fails its test instead of reaching whatever answers.
    context.route(lambda url: not recorded.is_local(url), refuse)
    recorded.page = context.new_page()
    try:
        yield recorded
    finally:
        context.close()


def output_dir() -> Path:
    """``test-output/`` at the repository root, for screenshots a person looks at (ignored by git)."""
    out = Path(__file__).resolve().parent.parent / "test-output"
    out.mkdir(exist_ok=True)
    return out
