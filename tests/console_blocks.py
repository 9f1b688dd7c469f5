"""Run a chapter's ```console blocks: each ``$ llama ...`` line through the CLI, output compared."""

from __future__ import annotations

import doctest
import re
import shlex

from llama.cli import main


def console_blocks(markdown: str) -> list[list[tuple[str, str]]]:
    """Each ```console block as a list of (command, expected output) pairs."""
    blocks = []
    for block in re.findall(r"```console\n(.*?)```", markdown, flags=re.S):
        steps: list[tuple[str, str]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], ""))
            else:
                command, out = steps[-1]
                steps[-1] = (command, out + line + "\n")
        blocks.append(steps)
    return blocks


def run_console_blocks(markdown: str, capsys) -> None:
    """Run every command of every block in the current folder; ``...`` in the output matches anything."""
    blocks = console_blocks(markdown)
    assert blocks, "no console block found"
    checker = doctest.OutputChecker()
    for steps in blocks:
        for command, expected in steps:
            argv = shlex.split(command)
            assert argv[0] == "llama", command
            assert main(argv[1:]) == 0, command
            got = capsys.readouterr().out
            assert checker.check_output(expected, got, doctest.ELLIPSIS), f"{command}\nexpected:\n{expected}\ngot:\n{got}"
