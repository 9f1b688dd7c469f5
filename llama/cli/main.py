"""The ``llama`` command line: the parser, and one place where a user's mistake becomes one line.

Each subcommand is a module of this package (``download``, ``tokenize``, ``generate``,
``convert``, ``train``, ``finetune``, ``chat``, ``sft``, ``dpo``, ``rl``, ``serve``) with an ``add`` function that declares its flags and a
``run`` function that does the work by calling the library. Errors that a user can fix (a
missing file, a bad flag) are raised as ``ValueError``/``FileNotFoundError`` by the library and
printed here as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: The subcommands, in the order a reader meets them in the book: each is ``llama.cli.<name>``.
SUBCOMMANDS = ["download", "tokenize", "generate", "convert", "train", "finetune", "chat", "sft", "dpo", "rl", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama",
        description="Train, run and convert LLaMA-style models built from scratch.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"llama.cli.{name}").add(subparsers)
    return parser


def _innermost_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ``args`` ran, e.g. ``tokenize encode``'s, for its usage line."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or getattr(args, sub.dest, None) not in sub.choices:
            return parser
        parser = sub.choices[getattr(args, sub.dest)]


def _message(err: Exception, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """An error in the command line's words: the library names a setting (``batch_size``), the
    user typed its flag (``--batch-size``), one of the flags of the command that ran."""
    from llama.training.config import SettingError

    if isinstance(err, SettingError):
        from llama.cli.common import flag_names

        return err.naming(flag_names(_innermost_parser(parser, args)))
    return str(err)


# --8<-- [start:main]
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llama`` console script; returns the process exit code.

    Exit codes: 0 done; 2 a mistake in the command (argparse's usage errors, and the one-line
    errors below); 1 the machine refused (an ``OSError``: permissions, a full disk), in one line; 130 interrupted by Ctrl-C, without a traceback (128 + SIGINT, what a shell
    reports for a program the signal ended); 141 the reader of stdout went away, as with
    ``llama generate ... | head`` (128 + SIGPIPE, what a C tool killed by the pipe reports), also
    without a traceback.
    """
    try:
        parser = build_parser()
        # An unknown flag is reported by the subcommand's parser, with its usage line: the top
        # level's ("llama [-h] COMMAND ...") would not show the flags the subcommand does take.
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            _innermost_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
        try:
            return int(args.func(args) or 0)
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            print(f"llama {args.command}: error: {_message(err, parser, args)}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            raise  # handled below, not an error of the machine
        except OSError as err:
            # The machine refused (permissions, a full disk, a folder where a file was expected):
            # one line naming the file and the reason, no traceback, exit 1 (not a usage error).
            where = f"{err.filename}: " if err.filename else ""
            print(f"llama {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Python would also fail at exit, flushing what is left for the closed pipe: point
        # stdout at /dev/null so that last flush goes nowhere, quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (captured in a test): nothing to flush
            pass
        return 141
# --8<-- [end:main]


def console() -> None:
    """The ``llama`` console script and ``python -m llama.cli.main``: run :func:`main`, exit with its code.

    A process that was one rank of several (``WORLD_SIZE`` set, as torchrun sets it) leaves with
    ``os._exit`` once its output is flushed, skipping the interpreter's shutdown: by then its work
    is written and its process group destroyed. A worker thread of torch's gloo backend can still
    be dropping its last reference to a finished collective (the final barrier holds the
    all-gather of a sharded model's weights) when the interpreter shuts down; freeing those
    tensors needs the GIL, which a finalizing interpreter no longer gives, and the rank aborted
    ("terminate called without an active exception", SIGABRT) after a finished run, which torchrun
    then reported as failed. It happened on busy cores, now and then; pytorch/pytorch#179291
    describes the same crash.
    """
    code = main()
    if os.environ.get("WORLD_SIZE", "1") != "1":
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
