"""The ``llama`` command line: one subcommand per task.

Each subcommand has an ``add`` function that declares its arguments and a ``run`` function that
does the work by calling the library (``_add_generate``/``_run_generate`` here; a larger family of
commands in its own module, such as ``llama/cli_train.py``). Errors that a user
can fix (a missing file, a bad flag) are raised as ``ValueError``/``FileNotFoundError`` by the
library and printed here as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from llama.cli_convert import (add_convert, add_quantize_flags, check_max_seq_len, checkpoint_path, load_model,
                                quantize_flags)


def build_parser() -> argparse.ArgumentParser:
    from llama.cli_finetune import add_finetune
    from llama.cli_train import add_train

    parser = argparse.ArgumentParser(
        prog="llama",
        description="Train, run and convert LLaMA-style models built from scratch.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Subcommands register here, in the order a reader meets them in the book.
    _add_download(subparsers)
    _add_tokenize(subparsers)
    _add_generate(subparsers)
    add_convert(subparsers)
    add_train(subparsers)
    add_finetune(subparsers)
    return parser


def _add_download(subparsers) -> None:
    p = subparsers.add_parser(
        "download",
        help="fetch a public file the book uses (a tiny model, a tokenizer, training text)",
        description="Fetch a public file the book uses into the download cache, checking its sha256.\n"
        "A file already in $LLAMA_DATA_DIR or the cache is not downloaded again.",
        epilog="examples:\n  llama download --list\n  llama download stories260K",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="what to fetch (see --list)")
    p.add_argument("--list", action="store_true", help="show what can be downloaded, and where each file is")
    p.set_defaults(func=_run_download)


def _run_download(args) -> int:
    from llama.download import DATASETS, cache_dir, dataset, download, find_data

    if args.list:
        for d in DATASETS.values():
            try:
                found = find_data(d.filename) or "not here yet"
            except ValueError as err:  # one damaged copy: said on its line, and the list goes on
                found = f"damaged: {err}"
            print(f"{d.name:<17} {d.description}\n{'':<17} {found}")
        print(f"downloads go to {cache_dir()} (set LLAMA_CACHE_DIR to change it)")
        return 0
    if not args.names:
        raise ValueError(f"name what to download ({', '.join(DATASETS)}), or pass --list")
    for name in args.names:
        dataset(name)  # every name checked before anything is fetched
    for name in args.names:
        path, fetched = download(name)
        print(f"{'downloaded' if fetched else 'already here, not downloaded:'} {path}")
    return 0


def _utf8_text(path) -> str:
    """The text of ``path``; a binary file (an image, a ``.npy``) is refused by name: Python's
    message alone ("'utf-8' codec can't decode byte 0x80 ...") said neither which file nor what to do."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start:,} is not "
                         "UTF-8): give a text file, or convert it first (iconv -t UTF-8)") from None


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

    from llama._files import refuse_to_overwrite
    from llama.tokenizer import GPT2_PATTERN, LLAMA3_PATTERN, BPETokenizer, load_tokenizer, train_sentencepiece

    if args.action == "train":
        source = Path(args.input)
        if not source.is_file():
            raise FileNotFoundError(f"no training text at {source}")
        refuse_to_overwrite(args.output, load_tokenizer, "a tokenizer file")  # checked before training
        text = _utf8_text(source)
        if args.method == "bpe":
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
        for flag, wanted, token_id in (("--bos", args.bos, tok.bos_id), ("--eos", args.eos, tok.eos_id)):
            if wanted and token_id < 0:
                raise ValueError(f"{flag} needs a tokenizer with <s> and </s> tokens, such as a SentencePiece "
                                 "model; this one has none: mark boundaries with a BPE special token instead")
        ids = tok.encode(args.text, bos=args.bos, eos=args.eos)
        pieces = [tok.id_to_piece(i) for i in ids]
        print("ids:", " ".join(map(str, ids)))
        print("pieces:", " ".join(repr(piece) for piece in pieces))
    else:
        print(tok.decode(args.ids))
    return 0


def _add_generate(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue a prompt with a checkpoint",
        description="Load a checkpoint (Hugging Face folder, Meta folder, GGUF file or llama2.c .bin) and continue\n"
        "a prompt, printing each token as soon as it is chosen.\n\n"
        "With --prompt the prompt is text and the output is text, through --tokenizer or else the\n"
        "tokenizer saved with the model (tokenizer.json or tokenizer.model in its folder, as `llama\n"
        "train` leaves them, or the one stored in a GGUF file). Without --prompt the prompt is token\n"
        "ids (--ids, default: 1, the BOS id) and the new ids are printed, unless --tokenizer is given.",
        epilog="examples:\n"
        "  llama generate stories260K --max-new-tokens 30\n"
        "  llama generate stories15M.bin --tokenizer tokenizer.model --prompt 'Once upon a time'\n"
        "  llama generate runs/shakespeare/model --prompt 'ROMEO:'\n"
        "  llama generate ./hf-folder --ids 1 450 --temperature 0.8 --top-p 0.9 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="Hugging Face folder, Meta folder, GGUF file, llama2.c .bin file, "
                   "or stories260K once `llama download stories260K` has fetched it")
    p.add_argument("--tokenizer", "-t", metavar="FILE", help="tokenizer file (SentencePiece .model or BPE .json); "
                   "default with --prompt: the one saved with the checkpoint")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", "-p", metavar="TEXT", help="prompt text (BOS is prepended where the tokenizer has one)")
    prompt.add_argument("--ids", type=int, nargs="+", metavar="ID",
                        help="prompt as token ids (default without --prompt: 1, the Llama BOS id)")
    p.add_argument("--max-new-tokens", "-n", type=int, default=64, metavar="N", help="tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (default) is greedy; higher is more random")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set with probability >= P")
    p.add_argument("--min-p", type=float, metavar="P", help="drop tokens less likely than P x the most likely")
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same output")
    p.add_argument("--stop-id", type=int, action="append", default=[], metavar="ID",
                   help="stop when this id is produced (repeatable); e.g. the tokenizer's EOS")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="context length, for checkpoints that do not store it")
    p.add_argument("--adapter", metavar="DIR", help="LoRA adapter folder to apply (from `llama finetune`, or PEFT's)")
    p.add_argument("--compile", action="store_true",
                   help="decode with the torch.compile'd step (faster per token; needs a C++ compiler, "
                   "and the first call compiles for seconds)")
    add_quantize_flags(p, "quantize the weights after loading (faster only with --compile: eagerly each "
                        "step dequantizes)")
    p.set_defaults(func=_run_generate)






def _check_generate_flags(args) -> None:
    """What can be checked without the model, checked first: a typo fails at once, not after seconds of loading."""
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be 0 or more, got {args.max_new_tokens}")
    check_max_seq_len(args.max_seq_len)
    for flag, ids in (("--ids", args.ids or []), ("--stop-id", args.stop_id)):
        if any(i < 0 for i in ids):
            raise ValueError(f"{flag} takes token ids, which are 0 or more; got {min(ids)}")


# --8<-- [start:run_generate]
def _run_generate(args) -> int:
    _check_generate_flags(args)  # and the sampling settings just below: all before the model loads
    from llama.generation import CompiledDecoder, generate_stream, missing_cxx_compiler, prepare_for_decoding
    from llama.sampling import Sampling

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        stop_ids=args.stop_id, seed=args.seed)
    scheme = quantize_flags(args)
    if args.compile and (missing := missing_cxx_compiler()):
        raise ValueError(f"{missing}; or run without --compile")
    tok = None
    if args.tokenizer is not None:
        from llama.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    elif args.prompt is not None:  # the tokenizer saved with the model, as `llama train` leaves it
        from llama.tokenizer import saved_tokenizer

        tok = saved_tokenizer(checkpoint_path(args.checkpoint))
    if args.prompt is not None:
        prompt = tok.encode(args.prompt, bos=tok.bos_id >= 0)  # Llama models expect <s> first
    else:
        prompt = args.ids if args.ids is not None else [1]
    if not prompt:
        raise ValueError("the prompt is empty (no text and this tokenizer has no <s>): give --prompt text or --ids")
    model = load_model(checkpoint_path(args.checkpoint), max_seq_len=args.max_seq_len)
    if args.adapter is not None:  # merged: decoding then costs what the base model's does
        if getattr(model, "quantization", None):
            raise ValueError(f"{args.checkpoint} holds integer weights: an adapter merges into float weights; "
                             "give the float checkpoint and --quantize")
        from llama.lora import load_adapter, merge_into_base

        merge_into_base(load_adapter(model, args.adapter))
    if scheme is not None:  # after the adapter: its update is quantized with the weights it joined
        from llama.quantize import quantize

        quantize(model, *scheme)
    if tok is not None and tok.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model {model.config.vocab_size}: "
                         "they do not belong together")
    # Both streams check the prompt, length and stop ids against the model when made, so an
    # error comes before anything is printed.
    if args.compile:
        # The compiled step attends over its whole cache: size it to this prompt and length.
        length = min(len(prompt) + args.max_new_tokens, model.config.max_seq_len)
        stream = CompiledDecoder(model, max_seq_len=length).generate_stream(prompt, args.max_new_tokens, sampling)
    else:
        # Column-major matrices: the same model, read faster one token at a time (see the chapter).
        stream = generate_stream(prepare_for_decoding(model), prompt, args.max_new_tokens, sampling)
    if tok is None:  # ids in, ids out
        for i, token in enumerate(stream):
            print(token if i == 0 else f" {token}", end="", flush=True)
        print()
        return 0
    # Decoding a growing list and printing only what is new keeps SentencePiece's leading-space
    # rule right, which decoding token by token would not. A character whose bytes have not all
    # come yet decodes to U+FFFD: it is held back until they have, and printed whole.
    ids, shown = list(prompt), tok.decode(prompt).rstrip("\ufffd")
    print(shown, end="", flush=True)
    for token in stream:
        ids.append(token)
        text = tok.decode(ids).rstrip("\ufffd")
        print(text[len(shown):], end="", flush=True)
        shown = text
    print(tok.decode(ids)[len(shown):])  # what was held back at the end, bytes that never became a character
    return 0
# --8<-- [end:run_generate]


def _innermost_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ``args`` ran, e.g. ``tokenize encode``'s, for its usage line."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or getattr(args, sub.dest, None) not in sub.choices:
            return parser
        parser = sub.choices[getattr(args, sub.dest)]


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
            print(f"llama {args.command}: error: {err}", file=sys.stderr)
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


if __name__ == "__main__":
    raise SystemExit(main())
