"""Every page of the book, looked at in a real browser (Chromium, headless).

Each page must load with no console error, no failed or outside request and no broken link or
anchor, with its math typeset, a copy button that copies a ``>>>`` example's code only, in both colour palettes, and fit the screen at desktop and phone
widths (layout.py), and show the book's path: the parts in the navigation, Home's list of the
chapters, where to go next after each chapter, no raw Sphinx role (reading_path.py); screenshots of every page at both widths go to test-artifacts/screenshots/
(see README.md).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from layout import DESKTOP
from reading_path import part_chapters, path_problems
from visits import Visitor, check_links, wait_for_math


def open_page(new_page, site_url, url, **options):
    page, watch = new_page(**options)
    page.goto(site_url + url, wait_until="load")
    return page, watch


# --- every page ----------------------------------------------------------------------------------


def test_page(nav_page, tab, screenshots):
    problems = tab.visit(nav_page, screenshots)
    assert not problems, "\n".join(problems)


def test_a_visit_starts_afresh_in_a_tab_the_last_one_left(browser, site_url, site_dir, screenshots, book_chapters,
                                                          book_pages):
    # test_page's visits go from page to page in one tab (visits.Visitor); what a page left
    # behind (the dark palette chosen, a phone-sized window, its console) is not the next page's:
    # the next visit records a page that opens dark as a problem (visits.check_dark_palette).
    rope = next(chapter for chapter in book_chapters if chapter.path == "rope.md")
    with Visitor(browser, site_url, site_dir, book_pages) as visitor:
        assert visitor.visit(rope, screenshots) == []
        page = visitor.page
        assert page.evaluate("document.body.dataset.mdColorScheme") == "slate"  # a visit ends in the dark palette
        page.evaluate("console.error('left behind by the last page')")
        assert visitor.watch.problems == ["console error: left behind by the last page"]
        assert visitor.visit(rope, screenshots) == []
        assert page.viewport_size["width"] < DESKTOP["width"]  # the visit ends on a phone; the next starts on a desktop


def test_broken_links_and_anchors_are_found(new_page, site_url):
    page, watch = open_page(new_page, site_url, "rope/")
    page.evaluate("""() => {
        for (const href of ['#no-such-heading', '../attention/#no-such-heading', '../no-such-page/']) {
            const a = document.createElement('a'); a.href = href; a.textContent = href;
            document.querySelector('.md-content').appendChild(a);
        }
    }""")
    check_links(page, watch, site_url)
    found = sorted(p.split(":")[0] + ": " + p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in watch.problems)
    assert found == ["broken anchor: attention/#no-such-heading", "broken anchor: rope/#no-such-heading",
                     "broken link (404): no-such-page/"], watch.problems


# --- the book's path (reading_path.py): what it finds when the path is broken ---------------------


def test_a_broken_path_is_found_on_a_chapter(new_page, site_url, book_pages):
    # RoPE's "Where to go next" links the next chapter (RMSNorm) and the RoPE lab.
    chapters = part_chapters(book_pages)
    rope = next(p for p in chapters if p.path == "rope.md")
    following = chapters[chapters.index(rope) + 1]
    page, _ = open_page(new_page, site_url, rope.url)
    next_section = "document.getElementById('where-to-go-next')"
    page.evaluate(f"""() => {{
        // Roles in prose and in a folded solution count; in a listing's source they do not.
        document.querySelector('.md-content article').insertAdjacentHTML('afterbegin',
            '<p>See :func:<code>add_lora</code> and :class:`~llama.model.Transformer`.</p>' +
            '<pre><code>#: set by :func:`listed`</code></pre>' +
            '<details><summary>Solution</summary><p>Call :meth:<code>folded</code>.</p></details>');
        const links = {next_section}.nextElementSibling;
        [...links.querySelectorAll('a')].find((a) => a.href === '{site_url + following.url}').replaceWith('next');
        links.insertAdjacentHTML('beforeend', '<a href="../no-such-page/">x</a> <a href="#no-such-heading">y</a>');
        {next_section}.parentElement.insertAdjacentHTML('beforeend', '<h2>Afterwards</h2>');
        document.querySelector('.md-footer__link--next').href = '../attention/';
    }}""")
    problems = path_problems(page, rope, book_pages, site_url)
    roles = [p for p in problems if p.startswith("raw Sphinx role")]
    assert len(roles) == 3, problems
    assert ":func:add_lora" in roles[0] and ":class:`~llama.model.Transformer`" in roles[1] and ":meth:folded" in roles[2]
    not_linked = f"'Where to go next' does not link the next chapter, {following.title} ({following.url})"
    assert sorted(p.replace(site_url, "/") for p in problems if p not in roles) == [
        not_linked,
        "'Where to go next' is not the last section (the last is 'Afterwards')",
        f"'Where to go next': broken anchor: /{rope.url}#no-such-heading",
        "'Where to go next': broken link (404): /no-such-page/",
        f"the footer's 'Next' goes to /attention/, not to the next page of the nav, /{following.url}",
    ]
    # A section without a link into the book, then no section at all.
    page.evaluate(f"{next_section}.nextElementSibling.querySelectorAll('a').forEach((a) => a.replaceWith(a.textContent))")
    assert [p for p in path_problems(page, rope, book_pages, site_url) if "Where to go next' " in p] == [
        "'Where to go next' is not the last section (the last is 'Afterwards')",
        "'Where to go next' links to no page of the book",
        not_linked,
    ]
    page.evaluate(f"{next_section}.remove()")
    assert "no 'Where to go next' section" in path_problems(page, rope, book_pages, site_url)


def test_a_broken_path_is_found_on_home(new_page, site_url, book_pages):
    page, _ = open_page(new_page, site_url, "")
    chapters = part_chapters(book_pages)
    parts = list(dict.fromkeys(p.section for p in chapters))
    first, second, last = parts[0], parts[1], parts[-1]
    moved = chapters[1]  # the second chapter of the first part, moved to the last part
    appendix = next(p for p in book_pages if p.kind == "chapter" and p not in chapters)  # no longer linked from Home
    page.evaluate("""([first, second, last, moved, appendix]) => {
        const items = [...document.querySelectorAll('.md-nav--primary > .md-nav__list > .md-nav__item')];
        const item = (title) => items.find((li) => li.querySelector(':scope > .md-nav__link').textContent.trim() === title);
        item(first).before(item(second));
        item(last).querySelector('ul').append([...item(first).querySelectorAll('a')].find((a) => a.href === moved).closest('li'));
        item(last).querySelector(':scope > .md-nav__link').style.display = 'none';
        const list = document.querySelector('.md-content ol');
        list.prepend(list.children[1]);
        document.querySelectorAll('.md-content a').forEach((a) => a.href === appendix && a.replaceWith(a.textContent));
    }""", [first, second, last, site_url + moved.url, site_url + appendix.url])
    problems = path_problems(page, book_pages[0], book_pages, site_url)
    kinds = sorted(re.sub(r" (is|has|links) \[.*", r" \1 ...", p) for p in problems)
    assert kinds == [
        f"Home does not link {[appendix.url]}",
        "Home's numbered list links ...",
        f"the left navigation does not show the part {last!r}",
        "the left navigation has ...",
        "the left navigation has ...",
        "the left navigation's top level is ...",
    ], problems
    assert any(f"under {first!r}" in p and moved.url not in p.split(", not")[0] for p in problems)
    assert any(f"under {last!r}" in p and moved.url in p.split(", not")[0] for p in problems)


# --- the RoPE chapter (the first chapter with the full set of features) -----------------------------


def test_rope_chapter_math_and_included_code(new_page, site_url):
    page, watch = open_page(new_page, site_url, "rope/")
    assert page.locator(".arithmatex").count() > 0, "the RoPE chapter has no math"
    wait_for_math(page, watch)
    assert page.locator(".md-content mjx-container").count() > 0

    text = page.locator(".md-content").inner_text()
    assert "--8<--" not in text and "[start:" not in text, "a snippet marker leaked into the page"
    # Library code included from llama/model/rope.py: highlighted by Pygments, with a copy button.
    included = page.locator(".md-content .highlight:has(code span.k:text-is('def'))")
    assert included.count() > 0, "no included function definition on the RoPE page"
    block = included.first
    assert block.locator("span.nf").count() > 0 and block.locator("span.k").count() > 0
    assert block.locator('button.md-code__button[data-md-type="copy"]').count() == 1
    assert not watch.problems, "\n".join(watch.problems)


# --- search ----------------------------------------------------------------------------------------


def search_words(site_dir: Path, urls: list[str]) -> dict[str, str]:
    """For each page, the word of its prose that the fewest other pages contain, in prose or code.

    Words are cut as the search index cuts them (Material's separator, then leading and trailing
    punctuation trimmed). The word is taken from the prose (``spm.SentencePieceProcessor(`` is one
    token in code), but counted in code too: a word in another page's code is found there as well,
    and may rank that page first.
    """
    index = json.loads((site_dir / "search/search_index.json").read_text())
    separator = re.compile(index["config"]["separator"])

    def words_of(html: str) -> set[str]:
        tokens = (re.sub(r"^\W+|\W+$", "", t).lower() for t in separator.split(re.sub(r"<[^>]+>", " ", html)))
        return {t for t in tokens if len(t) >= 5 and t.isalpha() and t.isascii()}

    prose: dict[str, set[str]] = {url: set() for url in urls}
    every: dict[str, set[str]] = {url: set() for url in urls}
    for doc in index["docs"]:
        url = doc["location"].split("#")[0]
        if url in prose:
            prose[url] |= words_of(re.sub(r"<(pre|code)\b.*?</\1>", " ", doc["text"], flags=re.S))
            every[url] |= words_of(doc["text"])
    frequency = Counter(w for ws in every.values() for w in ws)
    return {url: min(ws, key=lambda w: (frequency[w], -len(w), w)) for url, ws in prose.items() if ws}


def test_search_finds_each_chapter_by_a_word_of_its_body(new_page, site_url, site_dir, book_chapters):
    urls = [p.url for p in book_chapters]
    words = search_words(site_dir, urls)
    assert set(words) == set(urls), f"pages without searchable text: {set(urls) - set(words)}"
    page, watch = open_page(new_page, site_url, "")
    page.keyboard.press("/")  # Material's shortcut to the search box
    missing = []
    for url, word in words.items():
        page.fill("input.md-search__input", word)
        page.press("input.md-search__input", "End")  # Material searches on keyup, which fill() doesn't send
        try:
            page.wait_for_function(
                "(target) => [...document.querySelectorAll('.md-search-result__link')]"
                ".some((a) => a.href.split(/[?#]/)[0] === target)",
                arg=site_url + url,
                timeout=30_000,  # per word; only a word that is really missing waits it out
            )
        except Exception:
            missing.append(f"{word!r} does not find {url}")
    assert missing == []
    assert not watch.problems, "\n".join(watch.problems)


# --- instant navigation keeps the page's JavaScript and re-typesets the math -------------------------


def test_mathjax_is_loaded_only_by_a_page_with_math(production_page):
    """book/javascripts/mathjax.js: a page without math (Running the code) asks for no MathJax; an
    instant navigation from it to a chapter with math (Training) loads it and typesets that chapter."""
    page, watch, base = production_page
    asked = []
    page.on("request", lambda request: asked.append(request.url) if "mathjax/" in request.url else None)
    page.goto(base + "running/", wait_until="networkidle")  # idle: Material has read sitemap.xml
    assert page.locator(".arithmatex").count() == 0 and asked == []
    wait_for_math(page, watch)  # nothing to typeset: done at once
    page.evaluate("window.__stillTheSamePage = true")
    # Material rewrites the links to absolute URLs once its JavaScript runs.
    page.locator(f'.md-content a[href^="{base}training/"]').first.click()
    page.wait_for_url(f"{base}training/**")
    # The URL changes before the content is swapped: wait for the chapter's formulas, then their typesetting.
    page.wait_for_function("!!document.querySelector('.md-content .arithmatex')")
    wait_for_math(page, watch)
    assert page.evaluate("window.__stillTheSamePage === true"), "instant navigation fell back to a full load"
    assert page.locator(".md-content mjx-container").count() > 0
    assert [url.rsplit("/", 1)[-1] for url in asked][:1] == ["tex-mml-chtml.js"]
    assert not watch.problems, "\n".join(watch.problems)


def test_instant_navigation_typesets_math(production_page, book_chapters):
    page, watch, base = production_page
    page.goto(base, wait_until="networkidle")  # idle: Material has read sitemap.xml
    wait_for_math(page, watch)
    home_title = page.title()
    page.evaluate("window.__stillTheSamePage = true")
    first = book_chapters[0]
    # Material rewrites the nav's links to absolute URLs once its JavaScript runs.
    page.locator(f'.md-sidebar--primary a[href="{base + first.url}"]').first.click()
    page.wait_for_url(base + first.url)
    assert page.evaluate("window.__stillTheSamePage === true"), "instant navigation fell back to a full load"
    page.go_back()
    page.wait_for_url(base)
    # The URL changes before the content is swapped back: wait for Home's content, then its math.
    page.wait_for_function("(title) => document.title === title && !!document.querySelector('.md-content .arithmatex')",
                           arg=home_title)
    wait_for_math(page, watch)
    assert page.locator(".md-content mjx-container").count() > 0
    assert page.evaluate("window.__stillTheSamePage === true")
    assert not watch.problems, "\n".join(watch.problems)
