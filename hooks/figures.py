"""MkDocs hook: draw the book's figures with the library, on every build.

Every ``figures/<name>.py`` at the repository root defines ``FIGURES``, a dict literal from an SVG
file name to a function that takes no argument and returns a matplotlib ``Figure`` made with
``llama`` code. Each figure is added to the site as ``figures/<file name>``, so a chapter in
``book/`` shows it with ``![what it shows](figures/rope-frequencies.svg)``. Figures are never
committed: a figure cannot drift from the code, and a figure function that raises fails the build.

Speed: figures are drawn by worker processes (this file, run as a script) while MkDocs renders the
pages, and kept in ``.cache/figures/<key>/``, where the key hashes everything a figure can depend
on here: its module, ``figures/_*.py`` helpers, ``llama/**/*.py``, this hook and matplotlib's
version. (Data files read by a figure are not in the key: delete ``.cache/figures`` after changing
one.) ``mkdocs serve`` therefore redraws only after a code change.

Phones: a figure scaled down to a 390 px screen has text about 5 px high. Each ``<img>`` of a
figure gets ``--readable-width``, the width at which its smallest text is ``READABLE_TEXT_PX``
high; on narrow screens the stylesheet keeps the image at least that wide, in a box that scrolls.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.figures")

FIGURES_DIR = "figures"  # both the source folder at the root and the URL folder in the site
CACHE_DIR = ".cache/figures"
WORKERS = max(1, min(2, os.cpu_count() or 1))
READABLE_TEXT_PX = 9

_running: list[tuple[subprocess.Popen, list[str]]] = []
_used_keys: set[str] = set()
_svg_paths: dict[str, Path] = {}  # figure file name -> the cached SVG
_readable_widths: dict[Path, int] = {}

# Matplotlib draws text as glyph outlines scaled by fontsize / 100 (`scale(0.0833 -0.0833)` is
# 8.33 pt), in user units of points that the viewBox counts too.
_GLYPH_SCALE = re.compile(r"scale\((0\.\d+) -\1\)")
_VIEWBOX_WIDTH = re.compile(r'viewBox="[-\d.]+ [-\d.]+ ([\d.]+) ')
_FIGURE_IMG = re.compile(r'<img\b(?![^>]*\bstyle=)[^>]*\bsrc="(?:\.\./)*figures/([^"/]+\.svg)"')


def figure_names(path: Path) -> list[str]:
    """The keys of the ``FIGURES = {...}`` literal, read without importing the module (and torch)."""
    for node in ast.parse(path.read_text("utf-8"), str(path)).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "FIGURES" for t in targets):
                if not isinstance(node.value, ast.Dict) or not all(
                    isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.value.keys
                ):
                    raise PluginError(f"{path}: FIGURES must be a dict literal with string keys")
                return [k.value for k in node.value.keys]
    raise PluginError(f"{path} must define FIGURES = {{'name.svg': function, ...}}")


def cache_key(root: Path, module: Path) -> str:
    digest = hashlib.sha256(version("matplotlib").encode())
    inputs = [module, Path(__file__), *(root / FIGURES_DIR).glob("_*.py"), *(root / "llama").rglob("*.py")]
    for path in sorted(set(inputs)):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def on_files(files, config):
    root = Path(config.config_file_path).parent
    on_shutdown()  # workers of a previous build that failed before on_env (under `mkdocs serve`)
    jobs: list[dict] = []
    seen: dict[str, str] = {}
    _used_keys.clear()
    _svg_paths.clear()
    _readable_widths.clear()
    for module in sorted((root / FIGURES_DIR).glob("*.py")):
        if module.name.startswith("_"):
            continue  # helpers shared by figure modules
        key = cache_key(root, module)
        _used_keys.add(key)
        for name in figure_names(module):
            if not name.endswith(".svg") or "/" in name:
                raise PluginError(f"{module.name}: figure name {name!r} must be a plain *.svg file name")
            if name in seen:
                raise PluginError(f"figure {name!r} is defined by both {seen[name]} and {module.name}")
            seen[name] = module.name
            uri = f"{FIGURES_DIR}/{name}"
            if files.get_file_from_path(uri) is not None:
                raise PluginError(f"book/{uri} exists: figures are drawn at build time, delete the file")
            svg = root / CACHE_DIR / key / name
            _svg_paths[name] = svg
            if not svg.is_file():
                jobs.append({"module": str(module), "name": name, "out": str(svg)})
            # The file is written by a worker before on_env; MkDocs copies it after that.
            files.append(File.generated(config, uri, abs_src_path=str(svg)))
    for batch in (jobs[i::WORKERS] for i in range(WORKERS)):
        if batch:
            proc = subprocess.Popen(
                [sys.executable, __file__, json.dumps(batch)],
                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            _running.append((proc, [job["name"] for job in batch]))
    return files


def on_env(env, config, files):
    failures = []
    while _running:
        proc, names = _running.pop()
        output, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"drawing {', '.join(names)} failed:\n{output}")
        elif output.strip():
            log.debug(output.strip())
    if failures:
        raise PluginError("\n".join(failures))
    cache = Path(config.config_file_path).parent / CACHE_DIR
    for old in cache.iterdir() if cache.is_dir() else []:
        if old.name not in _used_keys:
            shutil.rmtree(old, ignore_errors=True)  # drawn from code that no longer exists
    return env


def readable_width(svg: Path) -> int | None:
    """CSS px at which the figure's smallest text is READABLE_TEXT_PX high (None: it has no text)."""
    text = svg.read_text("utf-8")
    sizes = [100 * float(scale) for scale in _GLYPH_SCALE.findall(text)]
    view = _VIEWBOX_WIDTH.search(text)
    if not sizes or view is None:
        return None
    return math.ceil(READABLE_TEXT_PX * float(view.group(1)) / min(sizes))


def on_post_page(output, page, config):
    # After on_env, so every figure has been drawn.
    def add_width(match):
        svg = _svg_paths.get(match.group(1))
        if svg is None:
            return match.group(0)
        if svg not in _readable_widths:
            _readable_widths[svg] = readable_width(svg)
        width = _readable_widths[svg]
        return match.group(0) if width is None else f'{match.group(0)} style="--readable-width: {width}px"'

    return _FIGURE_IMG.sub(add_width, output)


def on_shutdown():
    while _running:
        proc, _ = _running.pop()
        proc.kill()
        proc.wait()


def _draw(batch: list[dict]) -> None:
    """Worker: import each figure module and write its SVGs (run as ``python figures.py JOBS``)."""
    import importlib.util
    import time

    import matplotlib

    matplotlib.use("Agg")  # no display, and the fastest backend to start
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "llama-from-scratch"  # stable element ids between builds
    # The repository root (`import llama` without an install) and figures/ (shared helpers).
    sys.path[:0] = [os.getcwd(), str(Path(os.getcwd()) / FIGURES_DIR)]
    modules = {}
    for job in batch:
        path = Path(job["module"])
        if path not in modules:
            spec = importlib.util.spec_from_file_location(f"_book_figures.{path.stem}", path)
            modules[path] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[path])
        start = time.perf_counter()
        fig = modules[path].FIGURES[job["name"]]()
        if not isinstance(fig, Figure):
            raise TypeError(f"{path.name}: {job['name']} returned {type(fig).__name__}, not a matplotlib Figure")
        out = Path(job["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        # No timestamp in the SVG: the same code gives the same bytes.
        fig.savefig(tmp, format="svg", metadata={"Date": None}, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(out)  # atomic: a half-written SVG is never cached
        print(f"figure {job['name']} drawn in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    _draw(json.loads(sys.argv[1]))
