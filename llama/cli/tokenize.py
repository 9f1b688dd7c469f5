"""The ``llama tokenize`` subcommand: train a tokenizer, or encode and decode text with a saved one."""

from __future__ import annotations


def utf8_text(path) -> str:
    """The text of ``path``; a binary file (an image, a ``.npy``) is refused by name: Python's
    message alone ("'utf-8' codec can't decode byte 0x80 ...") said neither which file nor what to do."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start:,} is not "
                         "UTF-8): give a text file, or convert it first (iconv -t UTF-8)") from None


def add(subparsers) -> None:
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
    p.set_defaults(func=run)


# --8<-- [start:run]
def run(args) -> int:
    from pathlib import Path

    from llama._files import refuse_to_overwrite
    from llama.tokenizers.tokenizer import (
        GPT2_PATTERN,
        LLAMA3_PATTERN,
        BPETokenizer,
        load_tokenizer,
        train_sentencepiece,
    )

    if args.action == "train":
        source = Path(args.input)
        if not source.is_file():
            raise FileNotFoundError(f"no training text at {source}")
        refuse_to_overwrite(args.output, load_tokenizer, "a tokenizer file")  # checked before training
        text = utf8_text(source)
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
# --8<-- [end:run]
