"""The book's path as a reader finds it on the built pages, checked by ``test_pages.py::test_page``
during the one visit it makes to each page (visits.Visitor):

* Home: the left navigation is mkdocs.yml's nav, item by item in its order (Home, each part with
  its chapters under it, the labs, the appendices, the API reference), the parts and their
  chapters visible; Home's numbered list links the chapters of the parts in nav order, and Home
  links every other chapter, every lab and the API reference's overview.
* every chapter of a part: its last section is "Where to go next", with at least one link into
  the book, every link of it resolves, and it links the chapter that follows in the nav; Material's
  footer "Next" goes to the page that follows in the nav.
* every page: no raw Sphinx role (``:func:`x```) in its text outside code blocks.

tests/test_completeness.py checks the same path in the Markdown; these checks see what the build
made of it (the theme's navigation, the links as the browser resolves them, the docstrings as the
API pages render them).
"""

from __future__ import annotations

import itertools
import re

from visits import link_problem

# A part is a top-level section of the nav numbered in Roman numerals, "I. The model".
PART = re.compile(r"^[IVXLC]+\. ")
NEXT_SECTION = "Where to go next"
# A role griffe_crossrefs.py did not turn into a link: in the rendered text the backticks are gone
# (Markdown made them <code>), so ":func:add_lora" counts as much as ":func:`add_lora`".
RAW_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|const):[`~\w]")


def part_chapters(nav) -> list:
    """The chapters of the parts, in nav order."""
    return [p for p in nav if p.section is not None and PART.match(p.section)]


def nav_tree(nav) -> list[tuple[str, list[str]]]:
    """The nav's top level as the sidebar shows it: (title, URLs of its pages in order) per item."""
    tree = []
    for _, group in itertools.groupby(nav, key=lambda p: ("section", p.section) if p.section else ("page", p.path)):
        pages = list(group)
        tree.append((pages[0].section or pages[0].title, [p.url for p in pages]))
    return tree


def path_problems(page, nav_page, nav, site_url: str) -> list[str]:
    """What is wrong with the book's path on ``page``, the built ``nav_page`` (``nav``: every page of
    mkdocs.yml's nav, in order)."""
    problems = raw_role_problems(page)
    if nav_page.kind == "home":
        problems += sidebar_problems(page, nav, site_url) + home_list_problems(page, nav, site_url)
    if nav_page in part_chapters(nav):
        problems += next_problems(page, nav_page, nav, site_url)
    return problems


# --- every page: no raw role -----------------------------------------------------------------------

RAW_ROLES_JS = """(pattern) => {
  // The page's text outside code blocks, folded parts included (a solution is read once opened).
  // A listing shows the source as written, and its `#:` comments name objects with roles on
  // purpose; the API pages' source views are code blocks too.
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => node.nodeType === Node.TEXT_NODE ? NodeFilter.FILTER_ACCEPT
      : node.matches('pre, script, style') ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_SKIP,
  });
  let text = '';
  for (let node; (node = walker.nextNode());) if (node.nodeType === Node.TEXT_NODE) text += node.nodeValue;
  return [...text.matchAll(new RegExp(pattern, 'g'))].slice(0, 5)
    .map((m) => text.slice(Math.max(0, m.index - 20), m.index + 40).replace(/\\s+/g, ' '));
}"""


def raw_role_problems(page) -> list[str]:
    return [f"raw Sphinx role in the page's text: ...{found}..." for found in page.evaluate(RAW_ROLES_JS, RAW_ROLE.pattern)]


# --- Home: the sidebar, and Home's list ----------------------------------------------------------

SIDEBAR_JS = """() => {
  const words = (el) => el.innerText.replace(/\\s+/g, ' ').trim();
  const items = document.querySelectorAll('.md-sidebar--primary .md-nav--primary > .md-nav__list > .md-nav__item');
  return [...items].map((item) => {
    // Home's item has two heads, a label (its table of contents, on a phone) and a link: the shown one.
    const heads = [...item.querySelectorAll(':scope > .md-nav__link')];
    const head = heads.find((h) => h.checkVisibility()) || heads[0];
    const links = [...item.querySelectorAll('a.md-nav__link')].filter((a) => !a.closest('.md-nav--secondary'));
    return {title: head ? words(head) : '', shown: !!head && head.checkVisibility(),
            pages: links.map((a) => ({url: a.href.split('#')[0], shown: a.checkVisibility()}))};
  });
}"""


def sidebar_problems(page, nav, site_url: str) -> list[str]:
    def short(url: str) -> str:
        return url[len(site_url):] if url.startswith(site_url) else url

    expected = nav_tree(nav)
    found = page.evaluate(SIDEBAR_JS)
    problems = []
    titles = [item["title"] for item in found]
    if titles != [title for title, _ in expected]:
        problems.append(f"the left navigation's top level is {titles}, not mkdocs.yml's {[t for t, _ in expected]}")
    by_title = {item["title"]: item for item in found}
    for title, urls in expected:
        item = by_title.get(title)
        if item is None:
            continue  # reported above
        shown = list(dict.fromkeys(short(p["url"]) for p in item["pages"]))
        if shown != urls:
            problems.append(f"the left navigation has {shown} under {title!r}, not mkdocs.yml's {urls}")
        if PART.match(title):
            if not item["shown"]:
                problems.append(f"the left navigation does not show the part {title!r}")
            hidden = [short(p["url"]) for p in item["pages"] if not p["shown"]]
            if hidden:
                problems.append(f"the left navigation does not show {hidden} under {title!r}")
    return problems


HOME_LINKS_JS = """() => {
  const content = document.querySelector('.md-content article') || document.querySelector('.md-content');
  const url = (a) => a.href.split('#')[0];
  return {links: [...content.querySelectorAll('a[href]')].map(url),
          listed: [...content.querySelectorAll('ol > li')].map((li) => {
            const a = li.querySelector(':scope > a[href], :scope > p > a[href]');
            return a ? url(a) : null;
          })};
}"""


def home_list_problems(page, nav, site_url: str) -> list[str]:
    found = page.evaluate(HOME_LINKS_JS)
    chapters = [site_url + p.url for p in part_chapters(nav)]
    problems = []
    if not chapters:
        problems.append("mkdocs.yml's nav has no part (a section titled 'I. ...'): Home's list has nothing to match")
    listed = [url[len(site_url):] if url and url.startswith(site_url) else url for url in found["listed"]]
    if found["listed"] != chapters:
        problems.append(f"Home's numbered list links {listed}, not the chapters of the parts in nav order "
                        f"{[url[len(site_url):] for url in chapters]}")
    # Every other page a reader starts from: the appendices, the labs, the API reference's overview.
    others = [p for p in nav if p.kind in ("chapter", "notebook") or p.path == "api/index.md"]
    missing = [p.url for p in others if site_url + p.url not in found["links"]]
    if missing:
        problems.append(f"Home does not link {missing}")
    return problems


# --- every chapter of a part: where to go next ---------------------------------------------------

NEXT_JS = """(title) => {
  const content = document.querySelector('.md-content article') || document.querySelector('.md-content');
  // A heading's text without the permalink (¶) the toc extension appends.
  const text = (h) => [...h.childNodes].filter((n) => !(n.classList && n.classList.contains('headerlink')))
    .map((n) => n.textContent).join('').trim();
  const headings = [...content.querySelectorAll('h2')];
  const section = headings.find((h) => text(h) === title);
  let links = null;
  if (section) {
    links = [];
    for (let el = section.nextElementSibling; el && el.tagName !== 'H2'; el = el.nextElementSibling) {
      links.push(...(el.matches('a[href]') ? [el] : []), ...el.querySelectorAll('a[href]'));
    }
    links = links.map((a) => a.href);
  }
  const footerNext = document.querySelector('.md-footer__link--next');
  return {headings: headings.map(text), links, footerNext: footerNext ? footerNext.href : null,
          ids: [...document.querySelectorAll('[id]')].map((el) => el.id)};
}"""


def next_problems(page, nav_page, nav, site_url: str) -> list[str]:
    found = page.evaluate(NEXT_JS, NEXT_SECTION)
    if found["links"] is None:
        return [f"no {NEXT_SECTION!r} section"]
    problems = []
    if found["headings"][-1] != NEXT_SECTION:
        problems.append(f"{NEXT_SECTION!r} is not the last section (the last is {found['headings'][-1]!r})")
    origin = "/".join(site_url.split("/", 3)[:3])
    inside = [href for href in found["links"] if href.startswith(origin + "/")]  # outside links are not followed
    if not inside:
        problems.append(f"{NEXT_SECTION!r} links to no page of the book")
    here, here_ids = site_url + nav_page.url, set(found["ids"])
    for href in dict.fromkeys(inside):
        problem = link_problem(href, site_url, here, here_ids)
        if problem:
            problems.append(f"{NEXT_SECTION!r}: {problem}")
    chapters = part_chapters(nav)
    following = chapters[chapters.index(nav_page) + 1:][:1]
    if following and site_url + following[0].url not in [href.split("#")[0] for href in inside]:
        problems.append(f"{NEXT_SECTION!r} does not link the next chapter, {following[0].title} ({following[0].url})")
    # Material's footer: the next page of the whole nav (after the last chapter, the first lab).
    after = nav[nav.index(nav_page) + 1:][:1]
    expected = site_url + after[0].url if after else None
    if found["footerNext"] != expected:
        problems.append(f"the footer's 'Next' goes to {found['footerNext']}, not to the next page of the nav, {expected}")
    return problems
