"""MkDocs hook: make the labs (``book/*.ipynb``, rendered and executed by mkdocs-jupyter) safe to cache
and to navigate to.

1. mkdocs-jupyter caches an executed notebook under a key made of the notebook and its own
   options only, so after a change to ``llama/`` it would serve the old outputs, and a lab broken by
   that change would still build. Here the cache folder is named after a hash of ``llama/**/*.py``:
   a library change re-executes every lab, and cache folders of older code are removed.
2. Every notebook page carries nbconvert's MathJax 2 block, which points at a CDN and, after an
   instant navigation, calls ``MathJax.Hub.Config`` on our MathJax 3 and throws. It is removed;
   book/javascripts/mathjax.js typesets notebook math instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.notebooks")

PLUGIN = "mkdocs-jupyter"
CACHE_ROOT = ".cache/mkdocs-jupyter"
NB_MATHJAX2 = re.compile(r"\s*<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)


def library_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / "llama").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def on_config(config):
    plugin = config.plugins.get(PLUGIN)
    if plugin is None:
        return config
    root = Path(config.config_file_path).parent
    key = library_hash(root)
    # mkdocs-jupyter resolves cache_dir against the working directory; `make` runs from the root.
    plugin.config["cache_dir"] = f"{CACHE_ROOT}/{key}"
    cache_root = root / CACHE_ROOT
    for old in cache_root.iterdir() if cache_root.is_dir() else []:
        if old.is_dir() and old.name != key:
            shutil.rmtree(old, ignore_errors=True)
        elif old.is_file():
            old.unlink()  # entries of the plugin's default, unkeyed layout
    return config


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    html, count = NB_MATHJAX2.subn("", html)
    if count != 1:
        # A warning fails `mkdocs build --strict`: if mkdocs-jupyter changes its template, we want
        # to hear about it rather than ship a page that loads MathJax 2 from a CDN.
        log.warning("notebook %s: expected one MathJax 2 block to remove, found %d", page.file.src_uri, count)
    return html
