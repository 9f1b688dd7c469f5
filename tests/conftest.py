"""Shared fixtures: where the reference artifacts live, the book's configuration and its built site;
and the tiers that `make check` leaves out, given to the tests by the fixtures they use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import yaml
from filelock import FileLock
from helpers import COMPILES, REPO, REQUIRE_ALL, require_module, require_shared_file


def pytest_configure(config):
    # One switch for CI: LLAMA_REQUIRE_ALL=1 requires the browser too (tests/browser/conftest.py
    # reads LLAMA_REQUIRE_BROWSER, which also still works on its own).
    if os.environ.get(REQUIRE_ALL) == "1":
        os.environ["LLAMA_REQUIRE_BROWSER"] = "1"


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


# --- The book's site, built once per test run ------------------------------------------------

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


def build_site() -> SiteBuild:
    """``make site``, its output kept for the tests to show (seconds warm, a minute cold: it
    executes the labs and draws the figures)."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("`make` is not installed: the site is built with `make site`")
    command = [make, "--no-print-directory", SITE_BUILD_TARGET, "SKIP_INSTALL=1", f"PYTHON={sys.executable}"]
    # No timeout: a hung lab is stopped by nbclient's own (hooks/notebooks.py).
    proc = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    return SiteBuild(command, proc.returncode, proc.stdout, SITE_DIR)


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> SiteBuild:
    """The book built into ``site/`` by ``make site`` (strict), once for the whole run.

    Under pytest-xdist each worker has its own session: the first worker to need the site builds
    it, holding a lock in the folder all the workers' temporary folders share, and leaves the
    result there; the others wait for the lock and read that result (pytest-xdist's documented
    pattern for a session fixture shared between workers).
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build_site()
    shared = tmp_path_factory.getbasetemp().parent  # this run's, one per run
    record = shared / "site-build.json"
    with FileLock(shared / "site-build.lock"):
        if not record.is_file():
            record.write_text(json.dumps({**asdict(build_site()), "site_dir": str(SITE_DIR)}), "utf-8")
        fields = json.loads(record.read_text("utf-8"))
    return SiteBuild(**{**fields, "site_dir": Path(fields["site_dir"])})


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
