"""The book covers the whole package, and every chapter has what a chapter needs.

Walks mkdocs.yml's nav:

* every module ``llama/<package>/<name>.py`` is documented on its sub-package's API page
  (``book/api/<package>.md``, a page of the "API reference" section, with
  ``::: llama.<package>.<name>``) and is shown in at least one chapter (a snippet include of
  ``llama/<package>/<name>.py``);
* every chapter (a nav page that is not Home, not API reference, not a notebook) has a figure
  drawn by the library (``![...](figures/...)``), at least one example that the tests run, and an
  ``## Exercises`` section, except what ``EXEMPT`` lists, each with its reason.
"""

from __future__ import annotations

import re

import pytest
from helpers import REPO, load_book_collection
from sybil import Document

MODULES = sorted(".".join(p.relative_to(REPO / "llama").with_suffix("").parts) for p in (REPO / "llama").rglob("*.py")
                 if not p.name.startswith("_"))  # dotted below llama: model.transformer
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
    path = f"api/{module.split('.')[0]}.md"  # one page per sub-package, a section per module
    page = next((p for p in book_pages if p.kind == "api" and p.path == path), None)
    assert page is not None, f"mkdocs.yml's nav has no API page {path}"
    assert re.search(rf"^::: llama\.{re.escape(module)}\s*$", page_text(page), re.M), (
        f"{path} does not document llama.{module}: add `::: llama.{module}` to it")


@pytest.mark.parametrize("module", MODULES)
def test_module_is_shown_in_a_chapter(module, book_chapters):
    path = "llama/" + module.replace(".", "/") + ".py"
    include = re.compile(rf'--8<--\s+"{re.escape(path)}[:"]')
    chapters = [p.path for p in book_chapters if include.search(page_text(p))]
    assert chapters, f"no chapter includes code from {path} (--8<-- \"{path}:section\")"


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


# --- One path through the book: parts, Home's list, where to go next, the API's landing page ------
PARTS = ["I. The model", "II. Text in, text out", "III. Training", "IV. Adapting and shipping",
         "V. After pre-training"]
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+\.(?:md|ipynb))(?:#[^)]*)?\)")


def test_the_nav_is_home_then_the_parts_then_labs_appendices_and_api(mkdocs_yml):
    top = [next(iter(item)) if isinstance(item, dict) else item for item in mkdocs_yml["nav"]]
    assert top == ["Home", *PARTS, "Labs", "Appendices", "API reference"]


def test_home_lists_every_chapter_in_nav_order_and_links_every_other_page(book_pages):
    home = (REPO / "book" / "index.md").read_text("utf-8")
    listed = re.findall(r"^\d+\. \[([^\]]+)\]\(([^)]+\.md)\)", home, re.M)
    in_parts = [(p.title, p.path) for p in book_pages if p.section in PARTS]
    assert listed == in_parts, "Home's numbered list must be the chapters of the parts, in nav order, by their nav titles"
    linked = set(LINK.findall(home))
    others = {p.path for p in book_pages if p.section in ("Labs", "Appendices")} | {"api/index.md"}
    assert others - linked == set(), "Home must link every lab and appendix and the API reference's overview"


def test_every_chapter_of_a_part_ends_with_where_to_go_next(book_pages):
    chapters = [p for p in book_pages if p.section in PARTS]
    for page, following in zip(chapters, chapters[1:] + [None]):
        text = page.source.read_text("utf-8")
        sections = re.split(r"^## ", text, flags=re.M)
        assert sections[-1].startswith("Where to go next\n"), f"{page.path}: its last section is not 'Where to go next'"
        targets = LINK.findall(sections[-1])
        if following is not None:
            assert following.path in targets, f"{page.path}: 'Where to go next' does not link {following.path}"
        else:
            assert targets, f"{page.path}: the last chapter's 'Where to go next' links nowhere"


def test_api_overview_lists_every_module_in_page_order_with_its_docstring(book_pages):
    import ast

    overview = (REPO / "book" / "api" / "index.md").read_text("utf-8")
    rows = re.findall(r"^- \[`llama\.([\w.]+)`\]\((\w+)\.md#llama\.([\w.]+)\): (.*)$", overview, re.M)
    pages = [p for p in book_pages if p.kind == "api" and p.path != "api/index.md"]
    # Every module, in the order the pages of the nav document them, each linking its own section.
    documented = [m for page in pages for m in re.findall(r"^::: llama\.(\w+\.\w+)\s*$", page_text(page), re.M)]
    assert [module for module, _, _, _ in rows] == documented
    for module, page, anchor, line in rows:
        assert (page, anchor) == (module.split(".")[0], module)
        doc = ast.get_docstring(ast.parse((REPO / "llama" / (module.replace(".", "/") + ".py")).read_text("utf-8")))
        first = re.sub(r"``([^`]+)``", r"`\1`", doc.split("\n\n")[0].replace("\n", " ").strip())
        first = re.sub(r":(?:func|class|meth|data|attr|mod):`~?([\w.]+)`", r"`\1`", first)
        assert line == first, f"api/index.md's line for llama.{module} is not its docstring's first paragraph"
