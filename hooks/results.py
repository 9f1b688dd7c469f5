"""MkDocs hook: show a benchmark's results file in a page, so a measured table has one source.

A benchmark run with ``--save`` writes its table, with the command and the machine it ran on, to
``benchmarks/results/<name>.md``. A page shows that file with a line of its own:

    <!-- results: benchmarks/results/decode.md -->

and this hook puts the file's text in its place before Markdown runs. The numbers are never typed
into a page, so two pages that show the same results cannot disagree, and a new run of the
benchmark changes every page that shows it. A missing file fails the build, naming the page.
"""

from __future__ import annotations

import re
from pathlib import Path

try:  # the tests import this module without MkDocs' plugin machinery being needed
    from mkdocs.exceptions import PluginError
except ImportError:  # pragma: no cover
    PluginError = RuntimeError  # type: ignore[misc,assignment]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = re.compile(r"^<!-- results: (?P<path>benchmarks/results/[-\w.]+\.md) -->[ \t]*$", re.M)


def render_results(markdown: str, page: str = "?") -> str:
    """``markdown`` with each ``<!-- results: FILE -->`` line replaced by that file's text."""

    def include(match: re.Match) -> str:
        path = ROOT / match["path"]
        if not path.is_file():
            raise PluginError(f"{page}: {match['path']} not found: run the benchmark that writes it with --save")
        return path.read_text(encoding="utf-8").rstrip("\n")

    return RESULTS.sub(include, markdown)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (MkDocs' hook signature)
    return render_results(markdown, page.file.src_path)
