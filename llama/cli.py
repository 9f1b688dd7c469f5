"""The ``llama`` command line: one subcommand per task.

Each subcommand has a ``_add_<name>(subparsers)`` function that declares its arguments and a
``_run_<name>(args)`` function that does the work by calling the library. Errors that a user
can fix (a missing file, a bad flag) are raised as ``ValueError``/``FileNotFoundError`` by the
library and printed here as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama",
        description="Train, run and convert LLaMA-style models built from scratch.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Subcommands register here, in the order a reader meets them in the book.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llama`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"llama {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
