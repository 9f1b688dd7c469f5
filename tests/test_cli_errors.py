"""Errors of the machine, not of the command, still reach the user as one line."""

from __future__ import annotations

import errno

import pytest

import llama.cli.main as cli


@pytest.mark.parametrize("error, code, expected", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/text.txt"), 1,
     "llama tokenize: error: /data/text.txt: Permission denied\n"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "llama tokenize: error: No space left on device\n"),
    (ValueError("the text is empty: give a file with some text"), 2,
     "llama tokenize: error: the text is empty: give a file with some text\n"),
])
def test_os_errors_are_one_line_without_a_traceback(monkeypatch, capsys, error, code, expected):
    def fail(args):
        raise error

    parser = cli.build_parser()
    args = parser.parse_args(["tokenize", "encode", "--tokenizer", "t.json", "hello"])
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args, fail))
    assert cli.main(["tokenize"]) == code
    assert capsys.readouterr().err == expected


class _Fixed:
    """A parser that hands back prepared arguments whose subcommand raises ``error``."""

    def __init__(self, parser, args, func):
        self.parser, self.args = parser, args
        self.args.func = func

    def parse_known_args(self, argv):
        return self.args, []
