"""MkDocs hook: serve MathJax 3 from the site itself, never from a CDN.

`npm ci` puts MathJax in ``node_modules/mathjax`` (version pinned in package-lock.json); this hook
adds the files the browser needs to the build as generated files under ``assets/vendor/mathjax``.
Nothing is copied into ``book/``, and ``mkdocs serve`` serves them the same way.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

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

