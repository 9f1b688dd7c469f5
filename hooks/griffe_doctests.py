"""Griffe extension (loaded by mkdocstrings): show docstring ``>>>`` examples as ``pycon`` code.

A docstring example written outside an ``Examples:`` section reaches Markdown as a paragraph:
prompts and outputs run together, and an output such as ``[b'ow', b'low']`` under a line ending
in ``]`` reads as a Markdown reference link (which fails the strict build). Wrapping each run of
``>>>`` lines with its output in a ``pycon`` fence renders it like the chapters' examples:
highlighted, with a copy button that copies only the code. Only the rendered text changes; the
tests run the examples from the source (Sybil, see ../conftest.py).
"""

from __future__ import annotations

import re

import griffe

FENCE = re.compile(r"^\s*(```|~~~)")


def fence_examples(text: str) -> str:
    out: list[str] = []
    in_fence = in_example = False
    indent = ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if in_example and (not stripped or not line.startswith(indent)):
            out.append(indent + "```")
            in_example = False
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and not in_example and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(indent + "```pycon")
            in_example = True
        out.append(line)
    if in_example:
        out.append(indent + "```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_examples(obj.docstring.value)
