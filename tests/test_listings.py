"""A reader who copies a chapter's code blocks in page order into a fresh interpreter gets working code.

For every chapter (and the home page), the reader's copy is built the way the site shows it:

* each library listing as ``hooks/listings.py`` expands it (imports above the code, docstrings
  removed); a listing titled "(excerpt)" is shown for reading only and is not copied;
* each ```` ```python ```` block as it is;
* each ```` ```pycon ```` block without its prompts and outputs, one statement at a time (as typed
  at a ``>>>`` prompt); a statement whose shown output is a traceback may raise;
* exercise solutions inside ``??? success`` admonitions, dedented, like any other block.

The copy runs in one new interpreter started in an empty folder outside the repository (the
package is found on ``PYTHONPATH``, as an installed package would be), with the blocks executed
one after the other in one namespace, compiled by one ``codeop.Compile`` as the interactive prompt does
(so ``from __future__`` imports carry over). The test fails on every block that raises, naming the
page line, the listing and the exception. Outputs are not compared here: the book's doctests
(conftest.py) do that.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import HANG_SECONDS, REPO, load_listings, shared_data_dir

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
TRACEBACK = "Traceback (most recent call last):"


listings = load_listings()


def reader_blocks(markdown: str, page: str) -> list[dict]:
    """The blocks a reader copies, in page order: ``{"where", "what", "statements": [{"line", "source", "may_raise"}]}``."""
    blocks = []
    shown: set[str] = set()
    parser = doctest.DocTestParser()
    for fence in FENCE.finditer(markdown):
        line = markdown.count("\n", 0, fence.start()) + 1
        indent = fence["indent"]
        body = "".join(ln[len(indent):] if ln.startswith(indent) else ln for ln in fence["body"].splitlines(True))
        language = (fence["info"].split() or [""])[0].lower()
        where = f"book/{page}:{line}"
        if listings.ANY_INCLUDE.search(body):
            includes = [(m["path"], m["section"]) for ln in body.splitlines() if (m := listings.INCLUDE.match(ln))]
            _, code, excerpt = listings.render_fence(fence["info"], includes, shown)
            if not excerpt:
                what = "listing " + " + ".join(f"{p}:{s}" for p, s in includes)
                blocks.append({"where": where, "what": what, "statements": [{"line": line + 1, "source": code + "\n", "may_raise": False}]})
        elif language == "pycon" or (language in {"python", "py"} and body.lstrip().startswith(">>>")):
            statements = [
                {"line": line + 1 + example.lineno, "source": example.source, "may_raise": example.want.startswith(TRACEBACK)}
                for example in parser.get_examples(textwrap.dedent(body))
            ]
            blocks.append({"where": where, "what": "pycon block", "statements": statements})
        elif language in {"python", "py"}:
            blocks.append({"where": where, "what": "python block", "statements": [{"line": line + 1, "source": textwrap.dedent(body), "may_raise": False}]})
    return blocks


# Runs in the fresh interpreter, with two arguments: the JSON list of blocks and where to write the report.
RUNNER = r"""
import codeop, json, sys, traceback


def run_blocks(blocks_file, report_file):
    blocks = json.load(open(blocks_file, encoding="utf-8"))
    compile_like_the_prompt = codeop.Compile()  # remembers `from __future__` imports, as the REPL does
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    failures = []
    for block in blocks:
        for statement in block["statements"]:
            try:
                code = compile_like_the_prompt(statement["source"], f"<{block['where']}>", "exec")
                exec(code, namespace)
            except BaseException as err:
                if statement["may_raise"]:
                    continue
                failures.append({
                    "where": block["where"], "what": block["what"], "line": statement["line"],
                    "error": traceback.format_exception_only(type(err), err)[-1].strip(),
                    "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:]),
                })
                break  # the rest of this block depends on the failed statement
    with open(report_file, "w", encoding="utf-8") as f:
        json.dump({"blocks": len(blocks), "failures": failures}, f)


run_blocks(sys.argv[1], sys.argv[2])
"""


def reader_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "LLAMA_DATA_DIR": str(shared_data_dir().resolve()), "MPLBACKEND": "Agg"}


def run_like_a_reader(blocks: list[dict], folder: Path) -> dict:
    """Run ``blocks`` in a fresh interpreter in ``folder / "reader"`` (empty) and return its report."""
    work = folder / "reader"
    work.mkdir()  # empty: nothing in it can shadow a module the examples import
    (folder / "blocks.json").write_text(json.dumps(blocks), "utf-8")
    report = folder / "report.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder / "blocks.json"), str(report)],
        cwd=work, env=reader_env(), capture_output=True, text=True, timeout=HANG_SECONDS,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and report.is_file(), f"the reader's interpreter crashed (exit {proc.returncode}):\n{output[-4000:]}"
    return json.loads(report.read_text("utf-8"))


def describe(failure: dict) -> str:
    return f"{failure['where']} ({failure['what']}, line {failure['line']}): {failure['error']}"


def page_blocks(page) -> list[dict]:
    """``page``'s blocks as a reader copies them (its listings rendered by hooks/listings.py)."""
    return reader_blocks(page.source.read_text("utf-8"), page.path)


def copy_page_like_a_reader(page, folder: Path) -> tuple[list[dict], dict]:
    """``(blocks, report)``: ``page``'s blocks, and what running them in a fresh interpreter gave."""
    folder.mkdir(parents=True)
    assert not folder.resolve().is_relative_to(REPO), "the copy must run outside the repository"
    blocks = page_blocks(page)
    return blocks, run_like_a_reader(blocks, folder)


@pytest.mark.slow  # a fresh interpreter per page
def test_copied_chapter_runs(reader_page, tmp_path):
    blocks, report = copy_page_like_a_reader(reader_page, tmp_path / reader_page.slug)
    assert report["blocks"] == len(blocks)
    assert report["failures"] == [], (
        f"{len(report['failures'])} of {len(blocks)} blocks of {reader_page.path} fail when copied in page order "
        "into a fresh interpreter:\n" + "\n".join(describe(f) for f in report["failures"])
        + "\n\nfirst traceback:\n" + report["failures"][0]["traceback"]
    )


# --- the copy itself, on a small page ---------------------------------------------------------------

SAMPLE = '''\
# Sample

```python title="llama/model/norm.py"
--8<-- "llama/model/norm.py:rmsnorm"
```

```pycon
>>> norm = RMSNorm(4)
>>> norm(torch.ones(4)).shape
torch.Size([4])
>>> norm(torch.ones(3))
Traceback (most recent call last):
RuntimeError: ...
```

??? success "Solution"

    ```python
    assert undefined_name
    ```

```python title="llama/model/transformer.py"
--8<-- "llama/model/transformer.py:forward"
```
'''


def test_reader_blocks_follow_the_page():
    blocks = reader_blocks(SAMPLE, "sample.md")
    assert [(b["where"], b["what"]) for b in blocks] == [
        ("book/sample.md:3", "listing llama/model/norm.py:rmsnorm"),
        ("book/sample.md:7", "pycon block"),
        ("book/sample.md:18", "python block"),
    ], "the excerpt (Transformer.forward) must not be copied"
    listing, pycon, solution = blocks
    assert listing["statements"][0]["source"].startswith("import torch\nfrom torch import nn\n")
    assert [s["source"] for s in pycon["statements"]] == ["norm = RMSNorm(4)\n", "norm(torch.ones(4)).shape\n", "norm(torch.ones(3))\n"]
    assert [s["may_raise"] for s in pycon["statements"]] == [False, False, True]
    assert solution["statements"][0]["source"] == "assert undefined_name\n"


@pytest.mark.slow  # a fresh interpreter
def test_runner_reports_exactly_the_failing_block(tmp_path):
    report = run_like_a_reader(reader_blocks(SAMPLE, "sample.md"), tmp_path)
    assert [(f["where"], f["line"], f["error"]) for f in report["failures"]] == [
        ("book/sample.md:18", 19, "NameError: name 'undefined_name' is not defined"),
    ]


MODULE = '''\
"""A module."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

LIMIT = 3


def _helper(x):
    return x


# --8<-- [start:one]
@dataclass
class Box(Base):
    r"""A box: $\\frac{a}{b}$.

    More text.
    """

    items: Sequence[int] = field(default_factory=list)

    # --8<-- [start:size]
    def size(self, scale: float = LIMIT) -> float:
        """Its size."""
        # comments stay
        return math.sqrt(_helper(len(self.items))) * scale
    # --8<-- [end:size]
# --8<-- [end:one]


class Base:
    pass
'''


def test_listing_imports_what_it_uses_and_drops_docstrings(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/mod.py").write_text(MODULE)
    listing = listings.render_listing("pkg/mod.py", "one", {"math"}, root=tmp_path)
    assert not listing.is_excerpt and listing.title == "pkg/mod.py"
    assert listing.code == textwrap.dedent('''\
        from dataclasses import dataclass, field
        from typing import Sequence
        from pkg.mod import Base, LIMIT, _helper

        @dataclass
        class Box(Base):
            items: Sequence[int] = field(default_factory=list)

            def size(self, scale: float = LIMIT) -> float:
                # comments stay
                return math.sqrt(_helper(len(self.items))) * scale''')
    assert listing.binds == {"Box", "Base", "LIMIT", "_helper", "dataclass", "field", "Sequence"}
    again = listings.render_listing("pkg/mod.py", "one", {"math"} | listing.binds, root=tmp_path)
    assert again.code.startswith("@dataclass"), "names shown by an earlier listing are not imported twice"


def test_section_inside_a_class_is_an_excerpt(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/mod.py").write_text(MODULE)
    listing = listings.render_listing("pkg/mod.py", "size", set(), "Sizes", root=tmp_path)
    assert listing.is_excerpt and listing.title == "Sizes · Box.size (excerpt)"
    assert listing.code == "def size(self, scale: float = LIMIT) -> float:\n    # comments stay\n    return math.sqrt(_helper(len(self.items))) * scale"
    assert listing.binds == frozenset()


def test_missing_section_names_the_include(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/mod.py").write_text(MODULE)
    page = '```python\n--8<-- "pkg/mod.py:sise"\n```\n'
    with pytest.raises(listings.ListingError, match=r'ch\.md: --8<-- "pkg/mod.py:sise": pkg/mod.py has no section "sise" \(its sections: one, size\)'):
        listings.expand_page(page, tmp_path, "ch.md")
    with pytest.raises(listings.ListingError, match="there is no file pkg/nope.py"):
        listings.expand_page(page.replace("mod.py", "nope.py"), tmp_path, "ch.md")
