"""Collect the book's examples and the package's docstring examples as tests (Sybil).

In ``book/**/*.md``:

* a ```` ```pycon ```` fence (or a ```` ```python ```` fence whose body starts with ``>>>``) is a
  doctest, compared with ELLIPSIS and NORMALIZE_WHITESPACE;
* any other ```` ```python ```` / ```` ```py ```` fence is executed as plain code;
* info strings may carry attributes (```` ```python title="check.py" ````);
* fences indented inside Material admonitions (``??? success "Solution"``) count the same;
* a fence whose body is a snippet include (``--8<-- "llama/rope.py:freqs"``) is skipped: that code
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
"""

from __future__ import annotations

import re
from doctest import ELLIPSIS, NORMALIZE_WHITESPACE

from sybil import Sybil
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer
from sybil.parsers.markdown.skip import SkipParser
from sybil.parsers.rest import DocTestParser

FLAGS = ELLIPSIS | NORMALIZE_WHITESPACE

# The whole info string: language, then optional attributes such as title="...".
INFO = re.compile(r"[ \t]*(?P<language>[^\s{]*)[ \t]*(?P<attributes>[^\n]*)$\n", re.MULTILINE)
PYTHON = {"python", "py", "pycon"}
SNIPPET = re.compile(r"^\s*-{1,2}8<-{1,2}\s", re.MULTILINE)


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
            if language == "pycon" or source.lstrip().startswith(">>>"):
                examples = list(self.doctest(source, document.path))
                if not examples:
                    raise ValueError(
                        f"{document.path}, line {document.line_column(region.start)}: "
                        "a pycon fence without any >>> example"
                    )
                for example in examples:
                    example.adjust(region, source)
                    yield example
            else:
                region.parsed = source
                region.evaluator = self.python
                yield region


book = Sybil(parsers=[BookCodeParser(), SkipParser()], patterns=["*.md"], path="book", name="book")
package = Sybil(parsers=[DocTestParser(optionflags=FLAGS)], patterns=["*.py"], path="llama", name="docstrings")

pytest_collect_file = (book + package).pytest()
