"""MkDocs hook: serve MathJax 3 from the site itself, never from a CDN.

`npm ci` puts MathJax in ``node_modules/mathjax`` (version pinned in package-lock.json); this hook
adds the files the browser needs to the build as generated files under ``assets/vendor/mathjax``.
Nothing is copied into ``book/``, and ``mkdocs serve`` serves them the same way.

It also removes the MathJax 2 block that mkdocs-jupyter puts into every notebook page: that block
points at a CDN, and after an instant navigation it calls ``MathJax.Hub.Config`` on our MathJax 3,
which throws. Notebook math is typeset by ``book/javascripts/mathjax.js`` instead.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.vendor_assets")

# MathJax finds its extensions and fonts relative to the URL of its own script, so the layout
# under es5/ is kept. Only what the tex-mml-chtml combined component loads on demand is listed:
# globbing the whole package would add ~20 MB and any README.md would become a page.
MATHJAX_SRC = "node_modules/mathjax/es5"
MATHJAX_DEST = "assets/vendor/mathjax"
MATHJAX_FILES = [
    "tex-mml-chtml.js",
    "input/tex/extensions/**/*.js",
    "output/chtml/fonts/woff-v2/*.woff",
    "ui/*.js",
    "a11y/*.js",
    "sre/**/*",
]

NB_MATHJAX2 = re.compile(r"\s*<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)


def on_files(files, config):
    src_dir = Path(config.config_file_path).parent / MATHJAX_SRC
    if not src_dir.is_dir():
        # An exception, not a warning: without MathJax every formula would show as raw TeX.
        raise FileNotFoundError(f"{src_dir} is missing: run `npm ci` (or `make install`) first")
    for pattern in MATHJAX_FILES:
        matched = sorted(p for p in src_dir.glob(pattern) if p.is_file())
        if not matched:
            raise FileNotFoundError(f"{src_dir}/{pattern} matched no file: has the MathJax layout changed?")
        for path in matched:
            uri = f"{MATHJAX_DEST}/{path.relative_to(src_dir).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    html, count = NB_MATHJAX2.subn("", html)
    if count != 1:
        # A warning fails `mkdocs build --strict`: if mkdocs-jupyter changes its template, we
        # want to hear about it rather than ship a page that loads MathJax 2 from a CDN.
        log.warning("notebook %s: expected one MathJax 2 block to remove, found %d", page.file.src_uri, count)
    return html
