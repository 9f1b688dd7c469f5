"""MkDocs hook: show a benchmark's results file in a page, so a measured table has one source.

A benchmark run with ``--save`` writes its table, with the command and the machine it ran on, to
``benchmarks/results/<name>.md``. A page shows that file with a line of its own:

    <!-- results: benchmarks/results/decode.md -->

and this hook puts the file's text in its place before Markdown runs (a ``.txt`` file, such as a
sample a run wrote, goes inside a ``text`` fence the same way). The numbers are never typed
into a page, so two pages that show the same results cannot disagree, and a new run of the
benchmark changes every page that shows it. A missing file fails the build, naming the page.

Prose that quotes one figure takes it from the JSON the benchmark stored, in the middle of a
sentence:

    median <!-- result: benchmarks/results/train-quality.json val_bpb_median .3f --> bits per byte

is ``median 2.171 bits per byte``. The value is found by a path of ``/``-separated steps: a key of
an object, an index of a list (``-1`` the last), or ``key=value`` (several joined by ``&``) to pick the one object of
a list whose fields have those values, as in ``name=muon&steps=300/val_bpb`` for a line of a
``.jsonl`` file (read as a list of its lines). The last word is a format spec of Python's
``format()`` (``.3f``, ``,.0f``, ``.0%``). A path that finds nothing, or more than one object, fails
the build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

try:  # the tests import this module without MkDocs' plugin machinery being needed
    from mkdocs.exceptions import PluginError
except ImportError:  # pragma: no cover
    PluginError = RuntimeError  # type: ignore[misc,assignment]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = re.compile(r"^<!-- results: (?P<path>benchmarks/results/[-\w.]+\.(?:md|txt)) -->[ \t]*$", re.M)
RESULT = re.compile(r"<!-- result: (?P<path>benchmarks/results/[-\w.]+\.jsonl?) (?P<key>[^\n]+?) "
                    r"(?P<format>[^\s>]+) -->")


def render_results(markdown: str, page: str = "?") -> str:
    """``markdown`` with each ``<!-- results: FILE -->`` line replaced by that file's text, and each
    ``<!-- result: FILE PATH FORMAT -->`` by the value PATH finds in FILE, formatted.

    Args:
        markdown: the page's Markdown source.
        page: the page's name, for the error messages.

    Returns:
        The Markdown with every marker replaced.

    Raises:
        PluginError: a file is missing, a path finds no value or several, or the format does not apply.
    """

    def include(match: re.Match) -> str:
        path = ROOT / match["path"]
        if not path.is_file():
            raise PluginError(f"{page}: {match['path']} not found: run the benchmark that writes it with --save")
        return path.read_text(encoding="utf-8").rstrip("\n")

    def quote(match: re.Match) -> str:
        value = lookup(match["path"], match["key"], page)
        try:
            return format(value, match["format"])
        except (TypeError, ValueError) as e:
            raise PluginError(f"{page}: {match['path']} {match['key']}: format {match['format']!r} does not apply "
                              f"to {value!r} ({e}): use a format spec such as .3f") from None

    return RESULT.sub(quote, RESULTS.sub(include, markdown))


def lookup(file: str, key: str, page: str = "?"):
    """The value that the ``/``-separated ``key`` finds in the JSON (or JSON Lines) ``file``.

    Args:
        file: the file's path from the repository root.
        key: steps such as ``val_bpb_runs/0`` or ``name=muon&steps=300/val_bpb``.
        page: the page's name, for the error messages.

    Returns:
        The value found.

    Raises:
        PluginError: the file is missing, or a step finds nothing, or more than one object.
    """
    path = ROOT / file
    if not path.is_file():
        raise PluginError(f"{page}: {file} not found: run the benchmark that writes it")
    text = path.read_text(encoding="utf-8")
    value = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
    for step in key.split("/"):
        if "=" in step and isinstance(value, list):
            wanted = dict(pair.split("=", 1) for pair in step.split("&"))
            found = [v for v in value if isinstance(v, dict) and all(str(v.get(k)) == w for k, w in wanted.items())]
            if len(found) != 1:
                raise PluginError(f"{page}: {file}: {len(found)} objects have {step} (in {key}): the path must "
                                  "pick exactly one; add a field=value with &")
            value = found[0]
        elif isinstance(value, list) and re.fullmatch(r"-?\d+", step) and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            raise PluginError(f"{page}: {file} has no {step!r} (in {key}): check the path against the file")
    return value


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (MkDocs' hook signature)
    return render_results(markdown, page.file.src_path)
