"""MkDocs hook: draw the book's figures with the library, on every build.

Every ``figures/<name>.py`` at the repository root defines ``FIGURES``, a dict from an SVG file
name to a function that takes no argument and returns a matplotlib ``Figure`` made with ``llama``
code. Each figure is rendered to SVG in memory and added to the site as ``figures/<file name>``,
so a chapter in ``book/`` shows it with ``![what it shows](figures/rope-frequencies.svg)``.

Figures are never committed: a figure that no longer matches the code cannot exist, and a figure
function that raises fails the build.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, and the fastest backend to start
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from mkdocs.structure.files import File  # noqa: E402

log = logging.getLogger("mkdocs.hooks.figures")

FIGURES_DIR = "figures"  # both the source folder at the root and the URL folder in the site

# Same input, same bytes: no timestamp in the SVG and stable element ids, so rebuilding
# doesn't change files that didn't change.
SVG_METADATA = {"Date": None}
matplotlib.rcParams["svg.hashsalt"] = "llama-from-scratch"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_book_figures.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fresh_llama(root: Path) -> None:
    # Under `mkdocs serve` this process outlives many builds: drop the cached `llama` modules
    # so that a figure reflects the library as it is now, not as it was at the first build.
    for name in [n for n in sys.modules if n == "llama" or n.startswith("llama.")]:
        del sys.modules[name]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def render(make) -> bytes:
    """Call a figure function and return its SVG bytes."""
    fig = make()
    if not isinstance(fig, Figure):
        raise TypeError(f"{make!r} returned {type(fig).__name__}, expected a matplotlib Figure")
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="svg", metadata=SVG_METADATA, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def on_files(files, config):
    root = Path(config.config_file_path).parent
    _fresh_llama(root)
    seen: dict[str, Path] = {}
    for path in sorted((root / FIGURES_DIR).glob("*.py")):
        if path.name.startswith("_"):
            continue  # helpers shared by figure modules
        figures = getattr(_load(path), "FIGURES", None)
        if not isinstance(figures, dict):
            raise TypeError(f"{path.relative_to(root)} must define FIGURES = {{'name.svg': function, ...}}")
        for name, make in figures.items():
            if not name.endswith(".svg") or "/" in name:
                raise ValueError(f"{path.relative_to(root)}: figure name {name!r} must be a plain *.svg file name")
            if name in seen:
                raise ValueError(f"figure {name!r} is defined by both {seen[name].name} and {path.name}")
            seen[name] = path
            uri = f"{FIGURES_DIR}/{name}"
            if files.get_file_from_path(uri) is not None:
                raise ValueError(f"book/{uri} exists: figures are drawn at build time, delete the file")
            start = time.perf_counter()
            files.append(File.generated(config, uri, content=render(make)))
            log.debug("figure %s drawn in %.2f s", uri, time.perf_counter() - start)
    return files
