"""Every code block in the book is either library code or an example that the test suite runs.

The rule, for each fenced block in ``book/**/*.md``:

* ```` ```python ```` whose body is only snippet includes of ``llama/`` (``--8<-- "llama/model/rope.py:freqs"``):
  library code, tested where it lives;
* ```` ```pycon ```` (``>>>`` examples) or ```` ```python ```` with plain code: must be collected by the
  Sybil parser in ../conftest.py, and so run by pytest;
* any other language (``bash``, ``console``, ``text``, ...) must be preceded by a comment saying
  why it is not run here: ``<!-- tested-by: tests/test_cli.py -->`` (the named test file must
  exist and run that command) or ``<!-- not-executed: the reason -->``.

A block that fits none of these fails ``test_every_block_is_run_or_accounted_for``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, load_book_collection
from sybil import Document

BOOK = REPO / "book"
MARKER = re.compile(r"<!--\s*(?P<kind>tested-by|not-executed):\s*(?P<value>.*?)\s*-->\s*\Z")
INCLUDE_LINE = re.compile(r'^-{1,2}8<-{1,2}\s+"(?P<path>[^":]+)(?::[^"]*)?"\s*$')


collection = load_book_collection()


def markdown_files() -> list[Path]:
    return sorted(BOOK.rglob("*.md"))


def classify(document: Document, fence, collected_starts: set[int]) -> str | None:
    """Why this fence is fine, or None if it isn't."""
    language = fence.lexemes["language"].lower()
    source = fence.lexemes["source"]
    if collection.is_snippet_include(source):
        lines = [line.strip() for line in source.splitlines() if line.strip()]
        paths = [INCLUDE_LINE.match(line) for line in lines]
        if language in {"python", "py"} and all(paths) and all(m["path"].startswith("llama/") for m in paths):
            return "library code"
        return None
    if language in collection.PYTHON:
        inside = any(fence.start <= start < fence.end for start in collected_starts)
        return "example" if inside else None
    before = document.text[: fence.start].rstrip()
    last_line = before.splitlines()[-1].strip() if before else ""
    marker = MARKER.search(last_line)
    if marker is None or not marker["value"]:
        return None
    if marker["kind"] == "tested-by":
        return "tested elsewhere" if (REPO / marker["value"]).is_file() else None
    return "not executed"


def inventory(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, info string, verdict)`` for every fence of a Markdown file."""
    document = Document.parse(str(path), collection.BookCodeParser())
    collected_starts = {region.start for _, region in document.regions}
    rows = []
    for fence in collection.all_fences(document):
        line = document.text.count("\n", 0, fence.start) + 1
        info = (fence.lexemes["language"] + " " + fence.lexemes["attributes"]).strip()
        rows.append((line, info, classify(document, fence, collected_starts)))
    return rows


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(BOOK)))
def test_every_block_is_run_or_accounted_for(path):
    bad = [f"{path.relative_to(REPO)}:{line}: ```{info}" for line, info, verdict in inventory(path) if verdict is None]
    assert bad == [], (
        "code blocks that are neither an example the tests run nor a snippet include of llama/ "
        "(see this file's docstring for the rule):\n" + "\n".join(bad)
    )


def test_the_book_has_examples():
    verdicts = [verdict for path in markdown_files() for _, _, verdict in inventory(path)]
    assert verdicts.count("example") > 0


# --- the parser itself, on a document that has every case ------------------------------------------

SAMPLE = '''\
# Sample

```python title="llama/model/rope.py"
--8<-- "llama/model/rope.py:freqs"
```

```pycon
>>> x = 40
>>> x + 2
42
```

```python title="check.py"
y = x + 1
```

??? success "Solution"

    ```pycon
    >>> y
    41
    ```

1. A list item with a nested solution:

    ??? success "Solution"

        ```python
        assert y == 41
        ```

<!-- tested-by: tests/test_book.py -->
```bash
make test
```

<!-- not-executed: output shown for reading -->
```text
42
```

```bash
rm -rf /
```

```yaml
--8<-- "mkdocs.yml"
```
'''


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.md"
    path.write_text(SAMPLE)
    return path


def test_parser_collects_every_kind_of_example(sample):
    document = Document.parse(str(sample), collection.BookCodeParser())
    lines = [document.text.count("\n", 0, region.start) + 1 for _, region in document.regions]
    # pycon x2 (one per >>>), titled python, indented pycon in a solution, doubly indented python
    assert lines == [8, 9, 13, 20, 28]


def test_parser_runs_examples_in_one_namespace(sample):
    document = Document.parse(str(sample), collection.BookCodeParser())
    for example in document:
        example.evaluate()  # raises on a failed example
    assert document.namespace["y"] == 41


def test_parser_reports_a_wrong_output(sample):
    sample.write_text(SAMPLE.replace("\n42\n```\n\n```python", "\n43\n```\n\n```python"))
    document = Document.parse(str(sample), collection.BookCodeParser())
    failures = []
    for example in document:
        try:
            example.evaluate()
        except Exception as err:  # Sybil's SybilFailure for doctests
            failures.append(str(err))
    assert len(failures) == 1 and "43" in failures[0] and "42" in failures[0]


def test_inventory_flags_unaccounted_blocks(sample):
    verdicts = {line: verdict for line, _, verdict in inventory(sample)}
    assert verdicts == {
        3: "library code", 7: "example", 13: "example", 19: "example", 28: "example",
        33: "tested elsewhere", 38: "not executed", 42: None, 46: None,
    }


def test_tested_by_must_name_an_existing_file(sample):
    sample.write_text(SAMPLE.replace("tests/test_book.py", "tests/test_nothing_here.py"))
    assert dict((line, v) for line, _, v in inventory(sample))[33] is None


def test_indented_fence_is_dedented_before_running():
    text = textwrap.dedent(
        """\
        ??? success "Solution"

            ```python
            if True:
                z = 1
            ```
        """
    )
    document = Document(text, "inline.md")
    for region in collection.BookCodeParser()(document):
        document.add(region)
    for example in document:
        example.evaluate()
    assert document.namespace["z"] == 1


def test_every_row_of_the_failures_page_names_tests_that_exist():
    """book/failures.md: each row's last column names the test files that keep it true."""
    rows = [line for line in (BOOK / "failures.md").read_text("utf-8").splitlines()
            if line.startswith("| ") and not line.startswith("| what goes wrong") and not line.startswith("| ---")]
    assert len(rows) > 40
    for row in rows:
        named = re.findall(r"`(tests/[\w/]+\.py)`", row.rstrip(" |").rsplit(" | ", 1)[-1])
        assert named, f"a row of book/failures.md names no test: {row}"
        missing = [path for path in named if not (REPO / path).is_file()]
        assert not missing, f"book/failures.md names {missing}, which do not exist: {row}"
