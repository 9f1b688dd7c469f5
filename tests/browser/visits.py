"""The visit ``test_pages.py::test_page`` makes to every page of the book (:class:`Visitor`), and
what it checks.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import unquote, urldefrag, urlsplit
from urllib.request import urlopen

from helpers import HANG_MS
from layout import DESKTOP, PHONE, layout_problems

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # No software GPU, no animation or smooth-scroll frames: nothing the checks read depends on them,
    # and with them Chromium took about a tenth more CPU over the same visits.
    "--disable-software-rasterizer", "--disable-threaded-animation", "--disable-smooth-scrolling",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def chromium() -> str | None:
    """The Chromium to drive: $CHROMIUM (e.g. google-chrome on a CI image) or the distribution's."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    return path if path and Path(path).is_file() else None


def launch(playwright):
    # Playwright hides scrollbars in headless Chromium by default; a reader's browser shows
    # them, and the layout tests check that content wider than its box scrolls visibly.
    return playwright.chromium.launch(
        executable_path=chromium(), args=CHROMIUM_ARGS, ignore_default_args=["--hide-scrollbars"],
    )


# --- the site, served as it is hosted ------------------------------------------------------------


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


class SiteServer:
    """``site_dir`` served on 127.0.0.1 under ``site_url``'s path (``url`` is the base to visit)."""

    def __init__(self, site_dir: Path, prefix: str) -> None:
        handler = functools.partial(type("Handler", (_SiteHandler,), {"prefix": prefix}), directory=str(site_dir))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{prefix}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- what a page may not do ----------------------------------------------------------------------


class PageWatch:
    """Everything a page did that a reader should never see: errors and requests leaving 127.0.0.1."""

    def __init__(self, page, origin: str):
        self.problems: list[str] = []
        self.origin = origin
        self.page = page
        self._handlers = {
            "console": self._console,
            "pageerror": lambda err: self.problems.append(f"page error: {err}"),
            "request": self._request,
            "requestfailed": lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})"),
            "response": self._response,
        }
        for event, handler in self._handlers.items():
            page.on(event, handler)

    def stop(self) -> None:
        """Record nothing more (the tab goes on to another page)."""
        for event, handler in self._handlers.items():
            self.page.remove_listener(event, handler)

    def _console(self, msg):
        if msg.type == "error":
            self.problems.append(f"console error: {msg.text}")

    def _request(self, request):
        if not request.url.startswith((self.origin + "/", "data:", "blob:", "about:")):
            self.problems.append(f"request leaving 127.0.0.1: {request.url}")

    def _response(self, response):
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")


def origin_of(url: str) -> str:
    return "/".join(url.split("/", 3)[:3])


def open_context(browser, site_url: str, **options):
    """A fresh browser context and a page in it, watched: ``(context, page, watch)``."""
    origin = origin_of(site_url)
    options.setdefault("viewport", DESKTOP)
    options.setdefault("reduced_motion", "reduce")  # the theme's transitions: frames nothing checks
    context = browser.new_context(**options)
    context.set_default_timeout(HANG_MS)
    # Nothing may leave the machine: a request to elsewhere is recorded (PageWatch), then refused.
    context.route(lambda url: not url.startswith((origin + "/", "data:", "blob:")), lambda route: route.abort())
    page = context.new_page()
    return context, page, PageWatch(page, origin)


# --- math ----------------------------------------------------------------------------------------

# Typeset math leaves no TeX delimiters in the text a reader sees.
RAW_MATH = re.compile(r"\$\$|\\\(|\\\[|(?<![\w$\\])\$[^$\s][^$\n]*?\$")

VISIBLE_TEXT_JS = """() => {
  const content = document.querySelector('.md-content').cloneNode(true);
  content.querySelectorAll('pre, code, script, style, mjx-container, .highlight, .jp-InputArea')
    .forEach((el) => el.remove());
  return content.textContent;
}"""

MATH_DONE_JS = """(rawMath) => {
  const all = [...document.querySelectorAll('.arithmatex')];
  // book/javascripts/mathjax.js loads MathJax only on a page with math (arithmatex's or a lab's).
  const hasMath = all.length > 0 || document.querySelector('.nb-math') !== null;
  if (hasMath && !(window.MathJax && MathJax.startup && MathJax.startup.document)) return false;
  if (!all.every((el) => el.querySelector('mjx-container'))) return false;
  const content = document.querySelector('.md-content').cloneNode(true);
  content.querySelectorAll('pre, code, script, style, mjx-container, .highlight, .jp-InputArea')
    .forEach((el) => el.remove());
  return !new RegExp(rawMath).test(content.textContent);
}"""


def wait_for_math(page, watch, timeout=HANG_MS):
    """Wait until MathJax has typeset the page; record a problem if raw TeX is still visible."""
    try:
        page.wait_for_function(MATH_DONE_JS, arg=RAW_MATH.pattern, timeout=timeout)
    except Exception:  # Playwright's TimeoutError: report what is still raw instead
        raw = RAW_MATH.findall(page.evaluate(VISIBLE_TEXT_JS))
        watch.problems.append(f"math not typeset: {raw[:5]} ({page.locator('.arithmatex').count()} formulas)")


# --- links ---------------------------------------------------------------------------------------


@functools.cache
def fetch(url: str) -> tuple[int, frozenset[str]]:
    """HTTP status of a page of the served site, and the ids its HTML defines."""
    try:
        with urlopen(url, timeout=HANG_MS / 1000) as response:
            html = response.read().decode("utf-8", "replace")
            return response.status, frozenset(re.findall(r'\b(?:id|name)="([^"]+)"', html))
    except HTTPError as err:
        return err.code, frozenset()


def link_problem(href: str, site_url: str, here: str, here_ids: set[str]) -> str | None:
    """What is wrong with a link of the page ``here`` (whose ids are ``here_ids``) to the served
    site: a page outside the site's path, or not there, or an anchor the target does not have."""
    if not href.startswith(site_url):
        return f"link outside the site's path: {href}"
    target, fragment = urldefrag(href)
    status, ids = fetch(target)
    if status != 200:
        return f"broken link ({status}): {href}"
    if fragment and unquote(fragment) not in (here_ids if target == here else ids):
        return f"broken anchor: {href}"
    return None


def check_links(page, watch, site_url: str):
    origin = origin_of(site_url)
    here = urldefrag(page.url).url
    # One round trip for the links and the ids of this page, not one per same-page anchor.
    hrefs, here_ids = page.evaluate("() => [[...document.querySelectorAll('a[href]')].map((a) => a.href), "
                                    "[...document.querySelectorAll('[id]')].map((e) => e.id)]")
    here_ids = set(here_ids)
    for href in sorted(set(hrefs)):
        if not href.startswith(origin + "/"):
            continue  # outside links are not followed: the tests make no outside request
        problem = link_problem(href, site_url, here, here_ids)
        if problem:
            watch.problems.append(problem)


# --- one page, as test_page checks it ------------------------------------------------------------


def save_screenshot(page, path: Path, **options) -> None:
    path.write_bytes(page.screenshot(**options))


class Visitor:
    """One tab that visits the book's pages one after another, as a reader does (``with`` closes it).

    A fresh context per page would make Chromium start a renderer, and compile MathJax and the
    theme's scripts, for every page: one tab took 174 s of CPU for the 65 pages against 235 s.
    Each visit still starts as a first visit: at desktop width, in the light palette (nothing
    kept in localStorage), and with a record that holds only this page's events.
    """

    def __init__(self, browser, site_url: str, site_dir: Path, nav) -> None:
        # nav: every page of mkdocs.yml's nav in order (tests/conftest.py's nav_pages()), the
        # book's path that reading_path.py checks the pages against.
        self.site_url, self.site_dir, self.nav = site_url, site_dir, nav
        self.context, self.page, self.watch = open_context(browser, site_url, color_scheme="light",
                                                           permissions=["clipboard-read", "clipboard-write"])
        self.context.add_init_script("try { localStorage.clear(); } catch (e) {}")
        # Material's search worker indexes the whole book (search/search_index.json, over 1 MB) at
        # every page load, though no visit searches: the 65 visits took 169-180 s of CPU with it,
        # 148 s without. The visits get the index's own settings and no document; test_pages.py's
        # search test uses the real index.
        index = json.loads((site_dir / "search/search_index.json").read_text("utf-8"))
        empty = json.dumps({**index, "docs": []})
        self.context.route(f"{site_url}search/search_index.json",
                           lambda route: route.fulfill(status=200, content_type="application/json", body=empty))

    def __enter__(self) -> Visitor:
        return self

    def __exit__(self, *exc) -> None:
        self.context.close()

    def visit(self, nav_page, screenshots: Path) -> list[str]:
        """Everything wrong with ``nav_page`` as a reader sees it: errors, outside requests, raw math,
        broken links, the book's path (reading_path.py: the nav, Home's list, where to go next, no
        raw Sphinx role), a copy button that copies a ``>>>`` example's prompts, content that does
        not fit at desktop and phone widths, a palette toggle that does nothing (chapters, labs and
        Home). Screenshots at both widths go to ``screenshots``."""
        from reading_path import path_problems  # here: it uses this module's link_problem

        page, site_url, site_dir = self.page, self.site_url, self.site_dir
        # Leaving the previous page ends its requests (aborted) before this page's record starts.
        page.goto("about:blank")
        self.watch.stop()
        self.watch = watch = PageWatch(page, origin_of(site_url))
        page.set_viewport_size(DESKTOP)
        page.goto(site_url + nav_page.url, wait_until="load")
        wait_for_math(page, watch)
        check_links(page, watch, site_url)
        watch.problems += path_problems(page, nav_page, self.nav, site_url)
        has_prompts = nav_page.path.endswith(".md") and ">>> " in nav_page.source.read_text("utf-8")
        if has_prompts:
            check_copy_button(page, watch)
        # Equations, code and tables fit their boxes or scroll visibly (layout.py), on this same visit;
        # before the full-page screenshot, which resizes the viewport and with it the scrollbars.
        watch.problems += layout_problems(page, f"/{nav_page.url}", page.viewport_size, site_url, site_dir)
        # The API reference's pages are generated alike (mkdocstrings): the palette toggle, the same
        # script on every page, is tried on the others. Every page gets its first screen: the checks
        # above read the whole page's layout from the DOM, and a full-page capture of a chapter
        # (20,000-30,000 px) took 2-4 s each, 90 s of the suite's CPU. Home is captured whole: it is
        # the README's picture.
        written = nav_page.kind != "api"
        save_screenshot(page, screenshots / f"{nav_page.slug}-desktop.png", full_page=nav_page.kind == "home")
        if written:
            check_dark_palette(page, watch, screenshots / f"{nav_page.slug}-desktop-dark.png")

        # The phone visit goes on in the palette the page is in (dark after check_dark_palette):
        # switching back restyles and lays out the whole page again (a third of a second for a
        # chapter), and what is checked at this width (layout.py) does not depend on the palette.
        page.set_viewport_size(PHONE)
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            watch.problems.append(f"page is {width}px wide on a {PHONE['width']}px phone (horizontal scrolling)")
        # First screen only: a full-page phone capture of a long chapter is ~15,000 px and slow to take.
        save_screenshot(page, screenshots / f"{nav_page.slug}-phone.png")
        watch.problems += layout_problems(page, f"/{nav_page.url}", PHONE, site_url, site_dir)
        return list(watch.problems)


def check_copy_button(page, watch) -> None:
    """The copy button of the page's first ``>>>`` example copies its code: no prompts, no outputs."""
    blocks = page.locator(".md-content .highlight:has(.gp)")
    if not blocks.count():
        watch.problems.append("the page's >>> examples are not shown with their prompts (no .gp in any code block)")
        return
    block = blocks.first
    shown = block.locator("code").text_content()
    code = [line[4:] for line in shown.splitlines() if line.startswith((">>> ", "... ")) or line in (">>>", "...")]
    block.hover()
    block.locator('button.md-code__button[data-md-type="copy"]').click()
    copied = page.evaluate("navigator.clipboard.readText()")
    # Hidden outputs leave their line breaks behind: blank lines, harmless when pasted.
    if ">>>" in copied or [ln for ln in copied.splitlines() if ln.strip()] != [ln for ln in code if ln.strip()]:
        watch.problems.append(f"the copy button of the first >>> example copied {copied[:200]!r}, not its code")


def check_dark_palette(page, watch, screenshot: Path) -> None:
    """Switch to the dark palette through the toggle a reader uses; its math must stay typeset."""
    scheme = page.evaluate("document.body.dataset.mdColorScheme")
    if scheme != "default":
        watch.problems.append(f"the page opened in the {scheme!r} palette, not the light one asked for")
    light_background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.locator('[data-md-component="palette"] label[title="Switch to dark mode"]').click()
    page.wait_for_function("document.body.dataset.mdColorScheme === 'slate'")
    if page.evaluate("getComputedStyle(document.body).backgroundColor") == light_background:
        watch.problems.append("the dark palette has the light palette's background")
    wait_for_math(page, watch)
    save_screenshot(page, screenshot)
