"""Browser fixtures: the built site served on 127.0.0.1, and a headless Chromium to look at it.

The site is served under the same path as in production (``site_url``'s path, e.g.
``/llama-from-scratch/``), so relative links, the search index and Material's instant navigation
behave as they will on the hosted book.

Chromium is the distribution's package (``apt-get install chromium``), driven by Playwright
through ``executable_path``. Without it these tests are skipped, unless ``LLAMA_REQUIRE_BROWSER=1``
(set by .ci/run), in which case they fail.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import HANG_MS

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}


class _SiteHandler(SimpleHTTPRequestHandler):
    prefix = "/"

    def translate_path(self, path):
        # Only URLs under the site's prefix exist, as on the hosted site.
        path = urlsplit(path).path
        if not path.startswith(self.prefix):
            return str(Path(self.directory) / "__outside_the_site__")
        return super().translate_path("/" + path[len(self.prefix):])

    def log_message(self, format, *args):  # keep the test output readable
        pass


@pytest.fixture(scope="session")
def site_url(site_dir, mkdocs_yml):
    """Base URL of the built site, served by a thread of this process; e.g. http://127.0.0.1:PORT/llama-from-scratch/."""
    prefix = urlsplit(mkdocs_yml["site_url"]).path or "/"
    handler = functools.partial(type("Handler", (_SiteHandler,), {"prefix": prefix}), directory=str(site_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}{prefix}"
    server.shutdown()
    server.server_close()


def _chromium() -> str | None:
    # CHROMIUM may name another Chromium-based browser (e.g. google-chrome on a CI image).
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    return path if path and Path(path).is_file() else None


def _unavailable(reason: str):
    if os.environ.get("LLAMA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and LLAMA_REQUIRE_BROWSER=1 requires the browser tests", pytrace=False)
    pytest.skip(f"{reason} (install it with `apt-get install chromium`, or run .ci/run)")


@pytest.fixture(scope="session")
def browser():
    executable = _chromium()
    if executable is None:
        _unavailable("Chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        # Playwright hides scrollbars in headless Chromium by default; a reader's browser shows
        # them, and the layout tests check that content wider than its box scrolls visibly.
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, ignore_default_args=["--hide-scrollbars"],
        )
        yield browser
        browser.close()


class PageWatch:
    """Everything a page did that a reader should never see: errors and requests leaving 127.0.0.1."""

    def __init__(self, page, origin: str):
        self.problems: list[str] = []
        self.origin = origin
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))
        page.on("request", self._request)
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})"))
        page.on("response", self._response)

    def _console(self, msg):
        if msg.type == "error":
            self.problems.append(f"console error: {msg.text}")

    def _request(self, request):
        if not request.url.startswith((self.origin + "/", "data:", "blob:", "about:")):
            self.problems.append(f"request leaving 127.0.0.1: {request.url}")

    def _response(self, response):
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")


@pytest.fixture
def new_page(browser, site_url):
    """``new_page(**context_options) -> (page, watch)``: a fresh browser context each time."""
    contexts = []
    origin = site_url.split("/", 3)
    origin = "/".join(origin[:3])

    def make(**options):
        options.setdefault("viewport", DESKTOP)
        context = browser.new_context(**options)
        context.set_default_timeout(HANG_MS)
        # Nothing may leave the machine: a request to elsewhere is recorded (PageWatch), then refused.
        context.route(lambda url: not url.startswith((origin + "/", "data:", "blob:")), lambda route: route.abort())
        contexts.append(context)
        page = context.new_page()
        return page, PageWatch(page, origin)

    yield make
    for context in contexts:
        context.close()


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
