"""The book covers the whole package, and every chapter has what a chapter needs.

Walks mkdocs.yml's nav:

* every module ``llama/<name>.py`` has an API page (a page of the "API reference" section with
  ``::: llama.<name>``) and is shown in at least one chapter (a snippet include of ``llama/<name>.py``);
* every chapter (a nav page that is not Home, not API reference, not a notebook) has a figure
  drawn by the library (``![...](figures/...)``), at least one example that the tests run, and an
  ``## Exercises`` section, except what ``EXEMPT`` lists, each with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import load_book_collection
from sybil import Document

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (REPO / "llama").glob("*.py") if not p.stem.startswith("_"))
FIGURE = re.compile(r"!\[[^\]]*\]\(figures/[^)\s]+\.svg\)|<img\b[^>]*\bsrc=\"figures/[^\"]+\"")
EXERCISES = re.compile(r"^## Exercises\s*$", re.MULTILINE)
# Pages of the nav that are not about a piece of the model: {page: {requirement: why it does not apply}}.
EXEMPT = {
    "running.md": {"figure": "a setup page (install, run the tests, fetch the data): it explains no idea a figure could show"},
    "failures.md": {"figure": "a table of bad inputs and the messages they get: there is nothing to draw"},
    "benchmarks.md": {"figure": "a record of measured runs; the chapters that draw conclusions from them have the figures",
                      "exercises": "a record of measured runs; the exercises are in the chapters it serves"},
}


collection = load_book_collection()


def page_text(page) -> str:
    return page.source.read_text("utf-8") if page.source.is_file() else ""


def test_every_nav_page_exists(nav_page):
    assert nav_page.source.is_file(), f"mkdocs.yml's nav lists {nav_page.path}, which is not in book/"


@pytest.mark.parametrize("module", MODULES)
def test_module_has_an_api_page(module, book_pages):
    pages = [p.path for p in book_pages if p.kind == "api" and re.search(rf"^::: llama\.{module}\s*$", page_text(p), re.M)]
    assert pages, f"no page of the API reference documents llama.{module}: add book/api/{module}.md (`::: llama.{module}`) to the nav"


@pytest.mark.parametrize("module", MODULES)
def test_module_is_shown_in_a_chapter(module, book_chapters):
    include = re.compile(rf'--8<--\s+"llama/{module}\.py[:"]')
    chapters = [p.path for p in book_chapters if include.search(page_text(p))]
    assert chapters, f"no chapter includes code from llama/{module}.py (--8<-- \"llama/{module}.py:section\")"


def exempt(page, requirement: str) -> None:
    reason = EXEMPT.get(page.path, {}).get(requirement)
    if reason:
        pytest.skip(f"{page.path} needs no {requirement}: {reason}")


def test_exemptions_name_pages_of_the_nav(book_chapters):
    chapters = {p.path for p in book_chapters}
    assert set(EXEMPT) <= chapters, f"EXEMPT names pages that are not chapters of the nav: {set(EXEMPT) - chapters}"
    assert all(set(reasons) <= {"figure", "example", "exercises"} and all(reasons.values()) for reasons in EXEMPT.values())


def test_chapter_has_a_figure(chapter_page):
    exempt(chapter_page, "figure")
    assert FIGURE.search(page_text(chapter_page)), f"{chapter_page.path} shows no figure from figures/ (see hooks/figures.py)"


def test_chapter_has_an_executed_example(chapter_page):
    exempt(chapter_page, "example")
    document = Document.parse(str(chapter_page.source), collection.BookCodeParser())
    assert document.regions, f"{chapter_page.path} has no example that the tests run (```pycon or ```python)"


def test_chapter_has_exercises(chapter_page):
    exempt(chapter_page, "exercises")
    assert EXERCISES.search(page_text(chapter_page)), f"{chapter_page.path} has no '## Exercises' section"
