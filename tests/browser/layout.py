"""What "the page fits the screen" means, checked by ``test_pages.py::test_page`` on every page, on
a desktop (1280 px) and on a phone (390 px), during the one visit it makes to each page.

A display equation, a code block or a table wider than the text column must scroll in its own
box with a scrollbar the reader can see; content cut off behind a hidden scrollbar, or spilling
out of the column, fails. On a phone, a listing's copy button must not cover its code, and the
text in the book's figures must be readable: the image is shown wide enough for its smallest text
to be at least ``MIN_FIGURE_TEXT_PX`` high, inside a box that scrolls visibly if that is wider
than the screen.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

DESKTOP = {"width": 1280, "height": 800}  # the new_page fixture's default viewport
PHONE = {"width": 390, "height": 844}
MIN_FIGURE_TEXT_PX = 9

# JavaScript shared by both checks: does this element's box scroll sideways with a scrollbar
# a reader can see? A scrollbar takes room (offsetHeight - clientHeight > its borders) unless it
# is an overlay or hidden (`scrollbar-width: none`, a zero-height ::-webkit-scrollbar); a
# transparent thumb is hidden as well.
VISIBLE_SCROLLBAR_JS = """
function visibleScrollbar(box) {
  const style = getComputedStyle(box);
  if (!["auto", "scroll"].includes(style.overflowX)) return false;
  if (style.scrollbarWidth === "none") return false;
  const thumb = style.scrollbarColor.split(/\\s(?![^(]*\\))/)[0];
  if (/^rgba\\(.*,\\s*0\\)$/.test(thumb) || thumb === "transparent") return false;
  const borders = parseFloat(style.borderTopWidth) + parseFloat(style.borderBottomWidth);
  return box.offsetHeight - box.clientHeight - borders > 0;
}
"""

OVERFLOWS_JS = "() => {" + VISIBLE_SCROLLBAR_JS + """
  const column = document.querySelector(".md-content article") || document.querySelector(".md-content");
  const found = [];
  const items = [
    // MathJax's hidden copy of a formula for screen readers (mjx-assistive-mml) is clipped on
    // purpose; only what is drawn on screen counts.
    ...[...column.querySelectorAll("mjx-container[display]")]
      .filter((el) => !el.closest("mjx-assistive-mml")).map((el) => ["equation", el]),
    // Material's code blocks are pre > code (the code element scrolls); notebook cells are a bare pre.
    ...[...column.querySelectorAll("pre")].map((pre) => ["code block", pre.querySelector(":scope > code") || pre]),
    ...[...column.querySelectorAll("table")].map((el) => ["table", el]),
  ];
  const columnRight = column.getBoundingClientRect().right - parseFloat(getComputedStyle(column).paddingRight);
  for (const [kind, el] of items) {
    if (!el.getClientRects().length) continue;  // not displayed (a closed <details>, a hidden tab)
    // The box that shows the element: itself or its nearest ancestor that clips or scrolls.
    let box = el;
    while (box !== column && getComputedStyle(box).overflowX === "visible") box = box.parentElement;
    let overflow, why;
    if (box === column) {
      overflow = Math.max(el.scrollWidth - el.clientWidth, el.getBoundingClientRect().right - columnRight);
      why = "spills out of the text column";
    } else {
      overflow = box.scrollWidth - box.clientWidth;
      why = visibleScrollbar(box) ? null : `cut off (overflow-x: ${getComputedStyle(box).overflowX}, no visible scrollbar)`;
    }
    if (overflow > 1 && why) {
      let text = el.textContent;
      // An equation's textContent is its drawn glyphs (none: CSS content); its MathML reads better.
      if (kind === "equation") text = el.querySelector("mjx-assistive-mml")?.textContent || text;
      found.push({kind, text: text.replace(/\\s+/g, " ").trim().slice(0, 70), overflow: Math.round(overflow), why});
    }
  }
  return found;
}
"""

# Each figure drawn by figures/*.py: its URL, its width on the page, and whether it sits in a box
# that scrolls visibly.
FIGURES_JS = "() => {" + VISIBLE_SCROLLBAR_JS + """
  return [...document.querySelectorAll('.md-content img[src$=".svg"]')]
  .filter((img) => new URL(img.src).pathname.includes("/figures/"))
  .map((img) => ({
    src: img.src,
    width: img.getBoundingClientRect().width,
    scrolls: img.parentElement.scrollWidth > img.parentElement.clientWidth + 1 && visibleScrollbar(img.parentElement),
  }));
}
"""

# Code text under a listing's copy button (Material's .md-code__nav, at the block's top right),
# before the reader scrolls the block sideways.
COPY_BUTTON_OVERLAPS_JS = """() => {
  const found = [];
  for (const nav of document.querySelectorAll(".md-content pre > .md-code__nav")) {
    const button = nav.getBoundingClientRect();
    const code = nav.parentElement.querySelector(":scope > code");
    const texts = code ? document.createTreeWalker(code, NodeFilter.SHOW_TEXT) : null;
    while (texts && texts.nextNode()) {
      if (!texts.currentNode.data.trim()) continue;
      const range = document.createRange();
      range.selectNodeContents(texts.currentNode);
      const under = [...range.getClientRects()].some((r) =>
        r.right > button.left && r.left < button.right && r.bottom > button.top && r.top < button.bottom);
      if (under) { found.push(code.textContent.replace(/\\s+/g, " ").trim().slice(0, 70)); break; }
    }
  }
  return found;
}"""

# Matplotlib writes text as glyph outlines scaled by fontsize / 100: `scale(0.0833 -0.0833)` is
# 8.33 pt ("small") in the SVG's user units (points, which the viewBox counts).
GLYPH_SCALE = re.compile(r"scale\((0\.\d+) -\1\)")
VIEWBOX = re.compile(r'viewBox="[-\d.]+ [-\d.]+ ([\d.]+) [\d.]+"')


def smallest_text(svg: str) -> tuple[float, float]:
    """(smallest font size, viewBox width) of a matplotlib SVG, both in its user units."""
    sizes = [100 * float(s) for s in GLYPH_SCALE.findall(svg)]
    return (min(sizes) if sizes else float("inf")), float(VIEWBOX.search(svg).group(1))


def figure_problems(page, site_url: str, site_dir: Path) -> list[str]:
    problems = []
    prefix = urlsplit(site_url).path
    for figure in page.evaluate(FIGURES_JS):
        path = unquote(urlsplit(figure["src"]).path)[len(prefix):]
        font, view_width = smallest_text((site_dir / path).read_text("utf-8"))
        shown = font * figure["width"] / view_width
        if shown < MIN_FIGURE_TEXT_PX:
            problems.append(f"figure {path}: smallest text {shown:.1f}px high ({figure['width']:.0f}px wide)")
        elif figure["width"] > PHONE["width"] and not figure["scrolls"]:
            problems.append(f"figure {path}: {figure['width']:.0f}px wide, in a box with no visible scrollbar")
    return problems


def layout_problems(page, where: str, viewport: dict, site_url: str, site_dir: Path) -> list[str]:
    """Everything that does not fit ``page`` as shown now, at ``viewport`` (already set); at phone
    width also the copy buttons and the figures' text. ``where`` names the page in the messages."""
    problems = [
        f"{where} at {viewport['width']}px: {o['kind']} {o['text']!r} is {o['overflow']}px wider than "
        f"its box and {o['why']}"
        for o in page.evaluate(OVERFLOWS_JS)
    ]
    if viewport["width"] == PHONE["width"]:
        at = f"{where} at {PHONE['width']}px"
        problems += [f"{at}: the copy button covers code text in {t!r}" for t in page.evaluate(COPY_BUTTON_OVERLAPS_JS)]
        problems += [f"{at}: {p}" for p in figure_problems(page, site_url, site_dir)]
    return problems
