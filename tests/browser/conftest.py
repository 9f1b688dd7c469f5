"""Browser fixtures: the built site served on 127.0.0.1, and a headless Chromium to look at it.

The site is served under the same path as in production (``site_url``'s path, e.g.
``/llama-from-scratch/``), so relative links, the search index and Material's instant navigation
behave as they will on the hosted book.

Chromium is the distribution's package (``apt-get install chromium``), driven by Playwright
through ``executable_path``: one Chromium per test process (each pytest-xdist worker has its own). Without it these tests are skipped, unless ``LLAMA_REQUIRE_BROWSER=1``
(set by .ci/run), in which case they fail.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import HANG_MS
from layout import DESKTOP
from visits import SCREENSHOTS, PageWatch, SiteServer, Visitor, chromium, launch, open_context


@pytest.fixture(scope="session")
def site_url(site_dir, mkdocs_yml):
    """Base URL of the built site, served by a thread of this process; e.g. http://127.0.0.1:PORT/llama-from-scratch/."""
    server = SiteServer(site_dir, urlsplit(mkdocs_yml["site_url"]).path or "/")
    yield server.url
    server.close()


def _unavailable(reason: str):
    if os.environ.get("LLAMA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and LLAMA_REQUIRE_BROWSER=1 requires the browser tests", pytrace=False)
    pytest.skip(f"{reason} (install it with `apt-get install chromium`, or run .ci/run)")


@pytest.fixture(scope="session")
def browser():
    if chromium() is None:
        _unavailable("Chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, site_url):
    """``new_page(**context_options) -> (page, watch)``: a fresh browser context each time."""
    contexts = []

    def make(**options):
        context, page, watch = open_context(browser, site_url, **options)
        contexts.append(context)
        return page, watch

    yield make
    for context in contexts:
        context.close()


class Tab:
    """One :class:`visits.Visitor` that visits page after page (``test_page``), as a reader does: a
    fresh context per page made Chromium start a renderer and compile MathJax and the theme's
    scripts for every page. A visit that raises leaves its tab behind: the next page starts in a new one."""

    def __init__(self, browser, site_url: str, site_dir: Path, nav) -> None:
        self._open = lambda: Visitor(browser, site_url, site_dir, nav)
        self._visitor: Visitor | None = None

    def visit(self, nav_page, screenshots: Path) -> list[str]:
        self._visitor = self._visitor or self._open()
        try:
            return self._visitor.visit(nav_page, screenshots)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._visitor is not None:
            self._visitor.context.close()
            self._visitor = None


@pytest.fixture(scope="session")
def tab(browser, site_url, site_dir, book_pages):
    """The tab ``test_page`` visits its page in, shared by the visits this process makes."""
    tab = Tab(browser, site_url, site_dir, book_pages)
    yield tab
    tab.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def production_page(browser, site_dir, mkdocs_yml):
    """``(page, watch, base_url)`` for a page that browses the book at its real address, ``site_url``.

    Material's instant navigation only engages for URLs listed in sitemap.xml, whose host it
    rewrites to the current one but not the port, so it cannot engage on 127.0.0.1:PORT. Here the
    browser answers every request for ``site_url`` from ``site/`` itself (Playwright routing):
    nothing is sent over the network, and anything else is refused.
    """
    base = mkdocs_yml["site_url"]
    prefix = urlsplit(base).path

    def answer(route):
        url = urlsplit(route.request.url)
        if not route.request.url.startswith(base):
            route.abort()
            return
        path = Path(site_dir) / url.path[len(prefix):]
        if path.is_dir():
            path = path / "index.html"
        if path.is_file():
            route.fulfill(path=path)
        else:
            route.fulfill(status=404, body="not found")

    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(HANG_MS)
    context.route("**/*", answer)
    page = context.new_page()
    origin = "/".join(base.split("/", 3)[:3])
    yield page, PageWatch(page, origin), base
    context.close()
