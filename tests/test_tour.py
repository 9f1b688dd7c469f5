"""The tour of Running the code, run exactly as the page prints it, in a fresh folder.

Every command of the section's console blocks runs in page order in an empty folder laid out
like the repository's (``benchmarks/`` is there, as in a checkout), and what it prints must match
what the page shows (``...`` matches anything). Then the claims the page makes about the outputs
are checked: the float32 GGUF file generates the model's own text, and the converted folders
carry the tokenizer.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys

import pytest
from helpers import REPO, require_shared_file, shared_data_dir

from llama.cli.main import main

pytestmark = pytest.mark.slow  # trains a model and a LoRA adapter: tens of seconds


def tour_commands() -> list[tuple[str, str]]:
    """``(command, expected output)`` of every console block of the tour section, in page order."""
    page = (REPO / "book" / "running.md").read_text("utf-8")
    section = page.split("\n## A tour in a minute\n", 1)[1].split("\n## ", 1)[0]
    steps: list[tuple[str, str]] = []
    for block in re.findall(r"<!-- tested-by: tests/test_tour.py -->\n```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], ""))
            else:
                steps[-1] = (steps[-1][0], steps[-1][1] + line + "\n")
    return steps


def test_every_console_block_of_the_tour_is_run_here():
    page = (REPO / "book" / "running.md").read_text("utf-8")
    section = page.split("\n## A tour in a minute\n", 1)[1].split("\n## ", 1)[0]
    assert section.count("```console") == section.count("<!-- tested-by: tests/test_tour.py -->") == 4
    assert len(tour_commands()) == 10


def test_the_tour_runs_as_printed_and_shows_what_the_page_says(tmp_path, monkeypatch, capsys):
    require_shared_file("tinyshakespeare.txt")
    (tmp_path / "benchmarks").symlink_to(REPO / "benchmarks", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA_DATA_DIR", str(shared_data_dir()))
    checker = doctest.OutputChecker()
    printed = {}
    for command, expected in tour_commands():
        argv = shlex.split(command)
        if argv[0] == "llama":
            assert main(argv[1:]) == 0, command
            got = capsys.readouterr().out
        else:
            assert argv[:2] == ["python", "benchmarks/finetune.py"], f"the tour runs only llama and this: {command}"
            proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                                  env={**os.environ, "LLAMA_DATA_DIR": str(shared_data_dir())}, timeout=600)
            assert proc.returncode == 0, proc.stderr
            got = proc.stdout
        assert checker.check_output(expected, got, doctest.ELLIPSIS), f"{command}\nexpected:\n{expected}\ngot:\n{got}"
        printed[command] = got
    generated = {}
    for command, out in printed.items():
        if match := re.match(r'llama generate (\S+) --prompt "ROMEO:"', command):
            generated[match.group(1)] = out
    assert set(generated) == {"runs/tour/model", "runs/tour-int8", "runs/tour.gguf"}
    # "the float32 GGUF file, holding the same numbers, generates exactly the text of runs/tour/model"
    assert generated["runs/tour.gguf"] == generated["runs/tour/model"]
    assert len(generated["runs/tour/model"].strip()) > len("ROMEO:") + 20  # it wrote something
    # "Both carry the tokenizer along"
    assert (tmp_path / "runs/tour-int8/tokenizer.json").read_bytes() == (tmp_path / "runs/tour/model/tokenizer.json").read_bytes()
