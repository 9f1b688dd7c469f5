"""Helpers shared by the test modules: random models, the book's example collector, console blocks."""

from __future__ import annotations

import contextlib
import doctest
import importlib.util
import os
import re
import shlex
from pathlib import Path

import torch

from llama import ModelConfig, Transformer
from llama.cli import main

REPO = Path(__file__).resolve().parent.parent


def random_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A seeded model in eval mode whose norm gains are random too (they start at 1, which would hide a swapped norm)."""
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_book_collection():
    """A second copy of the root conftest.py (pytest loads it as a plugin) to call its parser directly."""
    return _load("_book_collection", REPO / "conftest.py")


def load_listings():
    """hooks/listings.py, the MkDocs hook that renders library listings, to call it directly."""
    return _load("_book_listings", REPO / "hooks" / "listings.py")


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


def pb_varint(value: int) -> bytes:
    """Protobuf's base-128 varint, written independently of llama.protobuf (which only reads)."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def pb_field(number: int, value: int | bytes) -> bytes:
    """One protobuf field: an int as a varint (wire type 0), bytes length-prefixed (wire type 2)."""
    if isinstance(value, int):
        return pb_varint(number << 3) + pb_varint(value)
    return pb_varint(number << 3 | 2) + pb_varint(len(value)) + value


@contextlib.contextmanager
def as_nobody():
    """Run the block as user 65534 (nobody) when running as root, who may read and write any file.

    Only the effective uid changes (the real one stays root, to come back), so files the block
    opens are checked against nobody's rights. The paths involved must lie where nobody may go:
    pytest's tmp_path is under a folder only its owner may enter.
    """
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
