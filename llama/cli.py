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
    _add_tokenize(subparsers)
    _add_train(subparsers)
    return parser


def _add_tokenize(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize",
        help="train a tokenizer, or encode/decode text with one",
        description="Train a byte-level BPE (by hand) or SentencePiece BPE tokenizer from a "
        "text file, or encode/decode a string with a saved one (BPE .json or SentencePiece .model).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train a tokenizer from a UTF-8 text file")
    train.add_argument("input", help="training text file (UTF-8)")
    train.add_argument("--vocab-size", type=int, required=True, help="size of the vocabulary")
    train.add_argument("--output", "-o", required=True, help="file to write (.json for bpe, .model for sentencepiece)")
    train.add_argument("--method", choices=["bpe", "sentencepiece"], default="bpe",
                       help="bpe: byte-level BPE written by hand; sentencepiece: the library, Llama 2 settings")
    train.add_argument("--special", action="append", default=[], metavar="TOKEN",
                       help="a special token (bpe: never split; sentencepiece: user-defined symbol); repeatable")
    train.add_argument("--pattern", choices=["gpt2", "llama3"], default="gpt2", help="bpe pre-tokenizer regex")
    enc = actions.add_parser("encode", help="print the ids and pieces of a string")
    enc.add_argument("--tokenizer", "-t", required=True, help="a saved tokenizer (.json or .model)")
    enc.add_argument("text", help="the text to encode")
    enc.add_argument("--bos", action="store_true", help="prepend <s> (sentencepiece only)")
    enc.add_argument("--eos", action="store_true", help="append </s> (sentencepiece only)")
    dec = actions.add_parser("decode", help="print the text of a list of ids")
    dec.add_argument("--tokenizer", "-t", required=True, help="a saved tokenizer (.json or .model)")
    dec.add_argument("ids", nargs="+", type=int, help="token ids")
    p.set_defaults(func=_run_tokenize)


def _run_tokenize(args) -> int:
    from pathlib import Path

    from llama.tokenizer import GPT2_PATTERN, LLAMA3_PATTERN, BPETokenizer, load_tokenizer, train_sentencepiece

    if args.action == "train":
        source = Path(args.input)
        if not source.is_file():
            raise FileNotFoundError(f"no training text at {source}")
        if args.method == "bpe":
            text = source.read_text(encoding="utf-8")
            pattern = GPT2_PATTERN if args.pattern == "gpt2" else LLAMA3_PATTERN
            tok = BPETokenizer.train(text, args.vocab_size, special_tokens=args.special, pattern=pattern)
            tok.save(args.output)
        else:
            extra = {"user_defined_symbols": args.special} if args.special else {}
            tok = train_sentencepiece(source, args.vocab_size, args.output, **extra)
        print(f"wrote {args.output}: {args.method}, {tok.vocab_size} tokens")
        return 0
    tok = load_tokenizer(args.tokenizer)
    if args.action == "encode":
        if isinstance(tok, BPETokenizer):
            if args.bos or args.eos:
                raise ValueError("--bos/--eos need a SentencePiece model; add special tokens to a BPE tokenizer instead")
            ids = tok.encode(args.text)
            pieces = [tok.vocab[i].decode("utf-8", errors="backslashreplace") for i in ids]
        else:
            ids = tok.encode(args.text, bos=args.bos, eos=args.eos)
            pieces = [tok.id_to_piece(i) for i in ids]
        print("ids:", " ".join(map(str, ids)))
        print("pieces:", " ".join(repr(piece) for piece in pieces))
    else:
        print(tok.decode(args.ids))
    return 0


def _add_train(subparsers) -> None:
    from llama.train import add_arguments

    p = subparsers.add_parser(
        "train",
        help="train a model on a text file (alone or under torchrun)",
        description="Train a tokenizer (or load one) and a LLaMA-style model on a text file, with "
        "evaluation in bits per byte, checkpoints, exact --resume, and DDP under torchrun.",
    )
    add_arguments(p)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from llama.train import run

    return run(args)


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
