"""Collect the book's examples and the package's docstring examples as tests (Sybil).

In ``book/**/*.md``:

* a ```` ```pycon ```` fence (or a ```` ```python ```` fence whose body starts with ``>>>``) is a
  doctest, compared with ELLIPSIS and NORMALIZE_WHITESPACE;
* any other ```` ```python ```` / ```` ```py ```` fence is executed as plain code;
* info strings may carry attributes (```` ```python title="check.py" ````);
* fences indented inside Material admonitions (``??? success "Solution"``) count the same;
* a fence whose body is a snippet include (``--8<-- "llama/model/rope.py:freqs"``) is skipped: that code
  is tested where it lives, in ``llama/``, and tests/test_listings.py runs the listing the hook
  hooks/listings.py makes of it.

A Sybil skip directive in an HTML comment skips the examples up to ``<!-- skip: end -->`` when
its condition (evaluated in the page's namespace) holds, and pytest reports the reason; the
chapters use it for examples that need a downloaded file::

    <!-- skip: start if(path is None, reason="stories260K.bin not found: run `llama download stories260K`") -->

All examples of one page share one namespace, in page order. ``>>>`` examples in the docstrings of
``llama/*.py`` are collected too (so do not also pass ``--doctest-modules``: they would run twice).

``tests/test_book.py`` checks that every fence in the book is either collected here or accounted
for, so nothing that looks like an example is silently left out.

The examples of a fence that runs ``torch.compile`` (directly or through ``CompiledDecoder``) are
marked ``compile``, like the tests that do. Every test so marked is skipped, with the reason, where
torch.compile has no C++ compiler, or fails there under ``LLAMA_REQUIRE_ALL=1`` (tests/helpers.py).
"""

from __future__ import annotations

import os
import re
import sys

# The suite runs several processes at once on few cores (the site build and its labs, the reader's
# copies, training ranks, the tests themselves). GNU OpenMP's threads spin while they wait for
# work by default, burning the cores the other processes need: three test processes run side by
# side on this 2-core machine took 76 s of CPU that way and 40 s with passive waiting. Set before
# torch is imported, here and in every process the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One thread per process: pytest-xdist already runs one test per core, and a test often starts
# another interpreter beside it. Two threads per process on two busy cores wait on each other at
# every parallel operation: the suite took 372 s that way and 332 s with one. A test that wants
# more sets them itself (``--threads``); results do not depend on it (the tests' runs use one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
from doctest import ELLIPSIS, NORMALIZE_WHITESPACE
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer
from sybil.parsers.markdown.skip import SkipParser
from sybil.parsers.rest import DocTestParser

# tests/helpers.py, the one home of the skip-or-fail rule for optional tools; pytest puts tests/ on
# sys.path too, when it imports the test modules, so both find the same module.
TESTS = str(Path(__file__).resolve().parent / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
import helpers  # noqa: E402

FLAGS = ELLIPSIS | NORMALIZE_WHITESPACE

# The whole info string: language, then optional attributes such as title="...".
INFO = re.compile(r"[ \t]*(?P<language>[^\s{]*)[ \t]*(?P<attributes>[^\n]*)$\n", re.MULTILINE)
PYTHON = {"python", "py", "pycon"}
SNIPPET = re.compile(r"^\s*-{1,2}8<-{1,2}\s", re.MULTILINE)

# (document path, start) of every example that belongs to a fence which compiles.
compiling_examples: set[tuple[str, int]] = set()


def all_fences(document):
    """Every fenced code block of a Markdown document, whatever its language (a Sybil region each)."""
    return RawFencedCodeBlockLexer(info_pattern=INFO)(document)


def is_snippet_include(source: str) -> bool:
    return bool(SNIPPET.search(source))


class BookCodeParser:
    """Sybil parser for the fences described in the module docstring."""

    def __init__(self, optionflags: int = FLAGS) -> None:
        self.doctest = DocTestStringParser(DocTestEvaluator(optionflags))
        self.python = PythonEvaluator()

    def __call__(self, document):
        for region in all_fences(document):
            language = region.lexemes["language"].lower()
            source = region.lexemes["source"]
            if language not in PYTHON or is_snippet_include(source):
                continue
            compiles = bool(helpers.COMPILES.search(source))
            if language == "pycon" or source.lstrip().startswith(">>>"):
                examples = list(self.doctest(source, document.path))
                if not examples:
                    raise ValueError(
                        f"{document.path}, line {document.line_column(region.start)}: "
                        "a pycon fence without any >>> example"
                    )
                for example in examples:
                    example.adjust(region, source)
                    if compiles:
                        compiling_examples.add((document.path, example.start))
                    yield example
            else:
                region.parsed = source
                region.evaluator = self.python
                if compiles:
                    compiling_examples.add((document.path, region.start))
                yield region


book = Sybil(parsers=[BookCodeParser(), SkipParser()], patterns=["*.md"], path="book", name="book")
package = Sybil(parsers=[DocTestParser(optionflags=FLAGS)], patterns=["*.py"], path="llama", name="docstrings")

pytest_collect_file = (book + package).pytest()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(items):
    for item in items:
        example = getattr(item, "example", None)  # a Sybil item
        if example is not None and (example.path, example.start) in compiling_examples:
            item.add_marker(pytest.mark.compile)


def pytest_runtest_setup(item):
    if item.get_closest_marker("compile"):
        helpers.require_cpp_compiler()


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (`make test`): one pytest-xdist worker per core this process may run on.
    pytest-xdist's own count (psutil's) is of the machine's cores, including those a container or
    ``taskset`` keeps the tests off."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or not hasattr(os, "sched_getaffinity"):
        return None  # pytest-xdist's own: the variable it reads, or its count where Linux's call is missing
    return len(os.sched_getaffinity(0))

