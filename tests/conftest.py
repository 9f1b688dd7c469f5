"""Shared fixtures: where the reference artifacts live, the book's configuration and its built site;
and the tiers that `make check` leaves out, given to the tests by the fixtures they use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import COMPILES, REQUIRE_ALL, in_the_background, require_module, require_shared_file

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # One switch for CI: LLAMA_REQUIRE_ALL=1 requires the browser too (tests/browser/conftest.py
    # reads LLAMA_REQUIRE_BROWSER, which also still works on its own).
    if os.environ.get(REQUIRE_ALL) == "1":
        os.environ["LLAMA_REQUIRE_BROWSER"] = "1"
    # The whole suite (no path, -k or -m given) needs the site: its build starts now, on the core
    # that collection leaves idle, rather than once the tests are collected.
    whole_suite = (config.args_source == pytest.Config.ArgsSource.TESTPATHS
                   and not config.option.keyword and not config.option.markexpr)
    if whole_suite and not config.option.collectonly:
        config.stash[BUILD] = BackgroundBuild()


# A test that uses one of these fixtures is in that tier, wherever it lives (tests/browser/ included).
TIER_OF_FIXTURE = {"built_site": "site", "browser": "browser"}


def pytest_itemcollected(item):  # before `-m` deselects by these markers
    for fixture, tier in TIER_OF_FIXTURE.items():
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(tier)


@pytest.fixture
def shared_file():
    """Return a function ``shared_file(name) -> Path`` that skips the test when the file is absent
    (fails it under ``LLAMA_REQUIRE_ALL=1``)."""
    return require_shared_file


@pytest.fixture
def transformers():
    """Hugging Face transformers, the reference the parity tests compare with; without it, only the
    tests that ask for this fixture are skipped (failed under ``LLAMA_REQUIRE_ALL=1``)."""
    return require_module("transformers")


# --- The book's site, built once per test session -------------------------------------------
#
# The build (seconds warm, a minute cold: it executes the labs and draws the figures) starts in the
# background as soon as the tests are collected, if any selected test needs it, and the tests that
# need it run last: the rest of the suite runs meanwhile, on the other core.

SITE_DIR = REPO / "site"
# The same command as `make site` in CI and in .github/workflows/pages.yml (tests/test_site_build.py
# checks that). SKIP_INSTALL: the test run already has its environment, this very interpreter.
SITE_BUILD_TARGET = "site"


@dataclass
class SiteBuild:
    command: list[str]
    returncode: int
    output: str
    site_dir: Path


class BackgroundBuild:
    """``make site`` running in a subprocess, its output going to a file (a pipe could fill up)."""

    def __init__(self) -> None:
        make = shutil.which("make")
        self.command = [make or "make", "--no-print-directory", SITE_BUILD_TARGET, "SKIP_INSTALL=1", f"PYTHON={sys.executable}"]
        self.log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self.proc = None
        self._lock = threading.Lock()  # the page visits (tests/browser/page_visits.py) wait on another thread
        self._result: SiteBuild | None = None
        if make is not None:
            # A session of its own, so that stop() reaches MkDocs and the lab kernels too.
            self.proc = subprocess.Popen(in_the_background(self.command), cwd=REPO, stdout=self.log,
                                         stderr=subprocess.STDOUT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                                         start_new_session=True)

    def result(self) -> SiteBuild:
        if self.proc is None:
            pytest.fail("`make` is not installed: the site is built with `make site`")
        with self._lock:
            if self._result is None:
                returncode = self.proc.wait()  # no timeout: a hung lab is stopped by nbclient's own (hooks/notebooks.py)
                self.log.seek(0)
                self._result = SiteBuild(self.command, returncode, self.log.read(), SITE_DIR)
            return self._result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # interrupted, or not needed: leave no build behind
            self.proc.wait()
        self.log.close()


def needs_site(item) -> bool:
    return "built_site" in getattr(item, "fixturenames", ())


def visits_a_page(item) -> bool:
    """``tests/browser/test_pages.py::test_page``, whose visit starts in the background once the site is built."""
    return getattr(item, "originalname", None) == "test_page" and "nav_page" in getattr(item, "fixturenames", ())


def copies_a_page(item) -> bool:
    return "reader_run" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after `-m`/`-k` have deselected: only the tests that will run count
def pytest_collection_modifyitems(config, items):
    # A stable partition: each group keeps its order (the examples of a page depend on theirs).
    # The tests that wait for work started in the background (the reader's copies of the pages,
    # the site) run last, so the rest of the suite runs meanwhile.
    first = [item for item in items if not needs_site(item) and not copies_a_page(item)]
    items[:] = first + [item for item in items if copies_a_page(item)] + [item for item in items if needs_site(item)]


def pytest_collection_finish(session):
    config = session.config
    if config.option.collectonly:
        return
    pages = [item.callspec.params["reader_page"] for item in session.items if copies_a_page(item)]
    if pages:
        config.stash[READER_RUNS] = BackgroundReaderRuns(pages)
    started = config.stash.get(BUILD, None)
    if any(needs_site(item) for item in session.items):
        build = config.stash[BUILD] = started or BackgroundBuild()
        visited = [item.callspec.params["nav_page"] for item in session.items if visits_a_page(item)]
        if visited:
            start_page_visits(config, build, visited)
    elif started is not None:  # started with pytest_configure, and no test needs it after all
        started.stop()
        del config.stash[BUILD]


def start_page_visits(config, build: BackgroundBuild, pages) -> None:
    """Visit ``pages`` in Chromium as soon as ``build`` is done, while the other tests run
    (tests/browser/page_visits.py); nothing starts without Chromium and Playwright (the browser
    fixture then skips the tests with its reason, or fails them in CI)."""
    import importlib.util
    from urllib.parse import urlsplit

    from page_visits import PAGE_VISITS, PageVisits  # tests/browser/, collected
    from visits import SCREENSHOTS, chromium

    if build.proc is None or chromium() is None or importlib.util.find_spec("playwright") is None:
        return

    def site_ready():
        built = build.result()
        return built.site_dir if built.returncode == 0 else None

    prefix = urlsplit(read_mkdocs_yml()["site_url"]).path or "/"
    config.stash[PAGE_VISITS] = PageVisits(pages, site_ready, prefix, SCREENSHOTS)


def pytest_unconfigure(config):
    keys = [READER_RUNS, BUILD]
    if "page_visits" in sys.modules:
        keys.append(sys.modules["page_visits"].PAGE_VISITS)  # after the build they may be waiting for
    for key in keys:
        work = config.stash.get(key, None)
        if work is not None:
            work.stop()


class BackgroundReaderRuns:
    """Each page copied the way a reader would, into a fresh interpreter (tests/test_listings.py,
    forked from one that has imported torch and transformers), one page at a time on a thread of
    its own: a copy mostly waits for its interpreter, which runs in the idle scheduling class."""

    def __init__(self, pages) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from test_listings import ReaderServer

        self.folder = Path(tempfile.mkdtemp(prefix="reader-copies-"))  # outside the repository
        self.server = ReaderServer(self.folder / "server", background=True)  # forks each page's interpreter
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.runs = {}
        for page in pages:
            self.start(page)

    def start(self, page) -> None:
        from test_listings import page_blocks

        # The blocks are made here, on the main thread (see test_listings.copy_page_like_a_reader).
        self.runs[page.path] = self.pool.submit(self._copy, page, page_blocks(page))

    def _copy(self, page, blocks):
        from test_listings import copy_page_like_a_reader

        # It takes helpers.EUID_LOCK for its own file work: never while a test runs as nobody.
        return copy_page_like_a_reader(page, self.folder / page.slug, blocks, self.server)

    def result(self, page):
        return self.runs[page.path].result()

    def stop(self) -> None:
        for run in self.runs.values():
            run.cancel()
        self.pool.shutdown(wait=True)
        self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


READER_RUNS = pytest.StashKey[BackgroundReaderRuns]()


@pytest.fixture
def reader_run(pytestconfig, reader_page):
    """``(blocks, report)`` of ``reader_page`` copied into a fresh interpreter, started at collection."""
    runs = pytestconfig.stash.get(READER_RUNS, None)
    if runs is None:  # not started at collection (a test called directly): run it now
        runs = pytestconfig.stash[READER_RUNS] = BackgroundReaderRuns([reader_page])
    if reader_page.path not in runs.runs:
        runs.start(reader_page)
    return runs.result(reader_page)


@pytest.fixture(scope="session")
def reader_server(tmp_path_factory):
    """An interpreter to fork reader's copies from (tests/test_listings.py), for a test of the main
    thread: not the background copies' one, which serves one page at a time at a lower priority."""
    from test_listings import ReaderServer

    server = ReaderServer(tmp_path_factory.mktemp("reader-server"))
    yield server
    server.stop()


BUILD = pytest.StashKey[BackgroundBuild]()


@pytest.fixture(scope="session")
def built_site(pytestconfig) -> SiteBuild:
    """The book built into ``site/`` by ``make site`` (strict), once for the whole session."""
    build = pytestconfig.stash.get(BUILD, None)
    if build is None:  # not started at collection: no test selected then seemed to need it
        build = pytestconfig.stash[BUILD] = BackgroundBuild()
    return build.result()


@pytest.fixture(scope="session")
def site_dir(built_site: SiteBuild) -> Path:
    """The built site, for tests that read it; fails them at once if the build failed."""
    if built_site.returncode != 0:
        tail = "\n".join(built_site.output.splitlines()[-15:])
        pytest.fail(f"`make site` failed (exit {built_site.returncode}):\n{tail}", pytrace=False)
    return built_site.site_dir



class _MkDocsYamlLoader(yaml.SafeLoader):
    """Reads mkdocs.yml without MkDocs: its ``!relative``/``!ENV`` tags become plain values."""


def _tag_as_value(loader, tag_suffix, node):
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return f"!{tag_suffix} {loader.construct_scalar(node)}".strip()


_MkDocsYamlLoader.add_multi_constructor("!", _tag_as_value)


def read_mkdocs_yml() -> dict:
    return yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_MkDocsYamlLoader)


@pytest.fixture(scope="session")
def mkdocs_yml() -> dict:
    """mkdocs.yml as a plain dict (nav, markdown_extensions, ...)."""
    return read_mkdocs_yml()


API_SECTION = "API reference"


@dataclass(frozen=True)
class NavPage:
    """One page of the nav. ``kind`` is "home", "api", "notebook" or "chapter"."""

    section: str | None
    title: str | None
    path: str  # relative to book/

    @property
    def kind(self) -> str:
        if self.path == "index.md":
            return "home"
        if self.section == API_SECTION:
            return "api"
        if self.path.endswith(".ipynb"):
            return "notebook"
        return "chapter"

    @property
    def url(self) -> str:
        """Path of the built page relative to the site root (``use_directory_urls``)."""
        stem = self.path.rsplit(".", 1)[0]
        if stem == "index" or stem.endswith("/index"):
            return stem[: -len("index")]
        return stem + "/"

    @property
    def slug(self) -> str:
        return self.path.rsplit(".", 1)[0].replace("/", "-")

    @property
    def source(self) -> Path:
        return REPO / "book" / self.path


def nav_pages(nav=None, section: str | None = None) -> list[NavPage]:
    """Every page of a MkDocs nav (mkdocs.yml's by default), depth first; a page's ``section`` is
    the top-level one it is in (a part of the book, "Labs", "Appendices", "API reference")."""
    if nav is None:
        nav = read_mkdocs_yml()["nav"]
    pages = []
    for item in nav:
        if isinstance(item, str):
            pages.append(NavPage(section, None, item))
            continue
        for title, value in item.items():
            if isinstance(value, list):
                pages.extend(nav_pages(value, section or title))
            else:
                pages.append(NavPage(section, title, value))
    return pages


def pytest_generate_tests(metafunc):
    # A test that takes `nav_page` runs once per page of the book; `chapter_page`, once per chapter;
    # `reader_page`, once per page a reader copies code from (Home and the chapters).
    kinds = {
        "nav_page": lambda p: True,
        "chapter_page": lambda p: p.kind == "chapter",
        "reader_page": lambda p: p.kind in ("home", "chapter"),
    }
    for name, keep in kinds.items():
        if name in metafunc.fixturenames:
            pages = [p for p in nav_pages() if keep(p)]
            metafunc.parametrize(name, [page_param(name, p) for p in pages], ids=[p.slug for p in pages])


def page_param(fixture: str, page: NavPage):
    # A reader's copy of a page runs all of its code: where that compiles, so does the test.
    if fixture == "reader_page" and page.source.is_file() and COMPILES.search(page.source.read_text("utf-8")):
        return pytest.param(page, marks=pytest.mark.compile)
    return page


@pytest.fixture(scope="session")
def book_chapters() -> list[NavPage]:
    """The chapters, in nav order (no Home, API or notebook pages)."""
    return [p for p in nav_pages() if p.kind == "chapter"]


@pytest.fixture(scope="session")
def book_pages() -> list[NavPage]:
    """Every page of the nav, in order."""
    return nav_pages()


@pytest.fixture
def source(tmp_path) -> Path:
    """A Hugging Face folder of a random one-layer model: what the refusal tests convert and load."""
    from helpers import HOSTILE_TINY, random_model

    from llama import ModelConfig, save_model

    path = tmp_path / "source"
    save_model(random_model(ModelConfig(**HOSTILE_TINY)), path)
    return path
