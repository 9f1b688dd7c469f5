"""MkDocs hook: execute the labs (``book/*.ipynb``) in parallel, cache them by the code they run,
and make their pages safe to navigate to.

1. With ``execute: true`` mkdocs-jupyter runs the notebooks one after the other (one kernel start
   and one ``import torch`` each) and caches the result by the notebook and its own options only, so
   after a change to ``llama/`` it would serve old outputs and a lab broken by that change would
   still build. This hook takes over the execution when the plugin's ``execute`` is true: it runs
   the labs concurrently, one kernel per CPU, as soon as the file list is known (while the chapters
   render), with errors failing the build (``allow_errors`` false) and the kernel's working directory
   in ``book/``. The executed copy is stored in ``.cache/labs/`` under a hash of the notebook and of
   ``llama/**/*.py``, and is what the plugin renders (with its own execution switched off).
2. Links in a lab's Markdown cells are written like a chapter's (``[RoPE](rope.md#why)``), but
   mkdocs-jupyter leaves them as they are, pointing at ``.md`` files the site doesn't have. They are
   rewritten to the pages' URLs here, and a link to a missing page fails the strict build.
3. Every notebook page carries nbconvert's MathJax 2 block, which points at a CDN and, after an
   instant navigation, calls ``MathJax.Hub.Config`` on our MathJax 3 and throws. It is removed;
   book/javascripts/mathjax.js typesets notebook math instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority

log = logging.getLogger("mkdocs.hooks.notebooks")

PLUGIN = "mkdocs-jupyter"
CACHE_DIR = ".cache/labs"
MD_LINK = re.compile(r'href="(?![a-z][a-z0-9+.-]*:|/|#)([^"#]+\.md)(#[^"]*)?"')
NB_MATHJAX2 = re.compile(r"\s*<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)

_execute = False
_allow_errors = False
_kernel = ""
_pool: ThreadPoolExecutor | None = None
_pending: dict[str, Future] = {}


def on_config(config):
    global _execute, _allow_errors, _kernel
    plugin = config.plugins.get(PLUGIN)
    _execute = bool(plugin and plugin.config["execute"])
    if _execute:
        plugin.config["execute"] = False  # done here instead, see the module docstring
        _allow_errors = plugin.config["allow_errors"]
        _kernel = plugin.config["kernel_name"]
    return config


def library_hash(root: Path) -> bytes:
    digest = hashlib.sha256()
    for path in sorted((root / "llama").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.digest()


def execute(source: Path, target: Path, kernel: str, allow_errors: bool) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(source, as_version=4)
    client = NotebookClient(
        notebook, kernel_name=kernel, allow_errors=allow_errors, timeout=600,
        resources={"metadata": {"path": str(source.parent)}},  # the kernel runs in book/
    )
    client.execute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    nbformat.write(notebook, tmp)
    tmp.replace(target)  # atomic: a half-written notebook is never cached


def on_files(files, config):
    global _pool
    _pending.clear()
    if not _execute:
        return files
    root = Path(config.config_file_path).parent
    code = library_hash(root)
    cache = root / CACHE_DIR
    used = set()
    _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="lab")
    for file in files:
        if not file.src_uri.endswith(".ipynb"):
            continue
        source = Path(file.abs_src_path)
        key = hashlib.sha256(code + source.read_bytes()).hexdigest()[:20]
        target = cache / f"{source.stem}-{key}.ipynb"
        used.add(target.name)
        if not target.is_file():
            _pending[file.src_uri] = _pool.submit(
                execute, source, target, _kernel, _allow_errors
            )
        file.abs_src_path = str(target)  # mkdocs-jupyter renders the executed copy
    for old in cache.glob("*.ipynb") if cache.is_dir() else []:
        if old.name not in used:
            old.unlink()  # executed with code or a notebook that no longer exists
    _pool.shutdown(wait=False)
    return files


@event_priority(100)  # before mkdocs-jupyter's on_pre_page, which reads the executed copy
def on_pre_page(page, config, files):
    future = _pending.pop(page.file.src_uri, None)
    if future is not None:
        try:
            future.result()
        except Exception as err:  # nbclient's CellExecutionError carries the cell and traceback
            raise PluginError(f"lab {page.file.src_uri} failed to run:\n{err}") from None
    return page


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    html = MD_LINK.sub(lambda m: _page_link(m, page, files), html)
    html, count = NB_MATHJAX2.subn("", html)
    if count != 1:
        # A warning fails `mkdocs build --strict`: if mkdocs-jupyter changes its template, we want
        # to hear about it rather than ship a page that loads MathJax 2 from a CDN.
        log.warning("notebook %s: expected one MathJax 2 block to remove, found %d", page.file.src_uri, count)
    return html


def _page_link(match: re.Match, page, files) -> str:
    target = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), match[1]))
    file = files.get_file_from_path(target)
    if file is None:
        log.warning("notebook %s links to %s, which is not a page of the book", page.file.src_uri, match[1])
        return match[0]
    return f'href="{file.url_relative_to(page.file)}{match[2] or ""}"'


def on_shutdown():
    for future in _pending.values():
        future.cancel()
