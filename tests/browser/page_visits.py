"""The page visits of ``test_pages.py::test_page``, made in the background while the rest of the
suite runs: they start as soon as the site is built, in a process of their own (this file, run
as a script) in the idle scheduling class, and each ``test_page[...]`` then only reports its
page's problems.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from helpers import EUID_LOCK, HANG_MS, in_the_background
from visits import SiteServer, Visitor, launch

VISITING_THREADS = 2


class PageVisits:
    """The visits of ``pages``, made by another process (this file run as a script) at a lower
    priority, started when ``site_ready()`` returns the built site's folder (or ``None``: the build
    failed, and ``test_page`` reports that through its fixtures instead).

    Another process, not threads of the test run: Playwright's sync API runs Python for every
    message to Chromium, and on threads of the test run it would take the interpreter lock from
    the tests of the main thread, which run meanwhile and have the higher priority.
    """

    def __init__(self, pages, site_ready, prefix: str, screenshots: Path) -> None:
        self.results: dict[str, Future] = {page.path: Future() for page in pages}
        self._pages = list(pages)
        self._stopping = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, args=(site_ready, prefix, screenshots), daemon=True)
        self._thread.start()

    def _run(self, site_ready, prefix: str, screenshots: Path) -> None:
        try:
            site_dir = site_ready()
            if site_dir is None or self._stopping.is_set():
                raise RuntimeError("the site was not built")
            request = {"site_dir": str(site_dir), "prefix": prefix, "screenshots": str(screenshots),
                       "pages": [[page.section, page.title, page.path] for page in self._pages]}
            tests = Path(__file__).resolve().parents[1]
            env = {**os.environ, "PYTHONPATH": str(tests)}  # helpers
            with tempfile.TemporaryFile() as errors:
                with EUID_LOCK:  # started as this process's user, never as nobody (helpers.as_nobody)
                    self._proc = subprocess.Popen(in_the_background([sys.executable, __file__]), stdin=subprocess.PIPE,
                                                  stdout=subprocess.PIPE, stderr=errors, env=env, text=True)
                self._proc.stdin.write(json.dumps(request) + "\n")
                self._proc.stdin.close()
                for line in self._proc.stdout:
                    reply = json.loads(line)
                    future = self.results[reply["path"]]
                    if "error" in reply:
                        future.set_exception(RuntimeError(f"the visit failed: {reply['error']}"))
                    else:
                        future.set_result(reply["problems"])
                status = self._proc.wait()
                errors.seek(0)
                tail = errors.read().decode("utf-8", "replace").strip().splitlines()[-5:]
            # Only the pages the process never reported get this.
            raise RuntimeError(f"the visiting process ended (exit {status}) " + " / ".join(tail))
        except BaseException as err:  # every page not yet visited learns why
            self._fail_the_rest(err)

    def _fail_the_rest(self, err: BaseException) -> None:
        for future in self.results.values():
            if not future.done():
                future.set_exception(RuntimeError(f"the page was not visited: {err}"))

    def result(self, nav_page) -> list[str] | None:
        """The problems of ``nav_page``'s visit (waiting for it), or ``None`` if it is not among these visits."""
        future = self.results.get(nav_page.path)
        return None if future is None else future.result()

    def stop(self) -> None:
        self._stopping.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # the run was interrupted: leave no browser behind
        self._thread.join(timeout=HANG_MS / 1000)


PAGE_VISITS = pytest.StashKey[PageVisits]()


def visit_all(site_dir: Path, prefix: str, pages, nav, screenshots: Path, report) -> None:
    """Visit ``pages`` (of ``nav``, every page of mkdocs.yml's nav) on VISITING_THREADS threads,
    each with its own Chromium and one tab (:class:`Visitor`): a visit also waits, for MathJax,
    for the palette switch, for a screenshot.
    ``report(path, problems=None, error=None)`` is called once per page, from those threads."""
    from playwright.sync_api import sync_playwright

    todo: queue.Queue = queue.Queue()
    for page in pages:
        todo.put(page)
    server = SiteServer(site_dir, prefix)

    def work():
        with sync_playwright() as playwright:
            browser = launch(playwright)
            visitor = None
            try:
                while True:
                    try:
                        page = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        visitor = visitor or Visitor(browser, server.url, site_dir, nav)
                        report(page.path, problems=visitor.visit(page, screenshots))
                    except Exception as err:
                        report(page.path, error=repr(err))
                        if visitor is not None:  # the next page starts in a new tab
                            visitor.context.close()
                            visitor = None
            finally:
                browser.close()

    workers = [threading.Thread(target=work) for _ in range(VISITING_THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    server.close()


def main() -> None:
    """The visiting process of :class:`PageVisits`: a request on stdin, one JSON line per page on stdout."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before tests/browser/, the script's folder
    from conftest import NavPage, nav_pages  # tests/conftest.py

    request = json.loads(sys.stdin.readline())
    screenshots = Path(request["screenshots"])
    screenshots.mkdir(parents=True, exist_ok=True)
    printing = threading.Lock()

    def report(path, problems=None, error=None):
        reply = {"path": path, "problems": problems} if error is None else {"path": path, "error": error}
        with printing:
            print(json.dumps(reply), flush=True)

    pages = [NavPage(*fields) for fields in request["pages"]]
    visit_all(Path(request["site_dir"]), request["prefix"], pages, nav_pages(), screenshots, report)


if __name__ == "__main__":
    main()
