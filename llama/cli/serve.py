"""The ``llama serve`` subcommand: an OpenAI-compatible HTTP server with continuous batching and a chat page."""

from __future__ import annotations

import argparse
from pathlib import Path

from llama.cli.common import check_max_seq_len, checkpoint_path, open_model


def add(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over OpenAI's HTTP API, with a chat page",
        description="Load a checkpoint and its tokenizer and answer OpenAI's API on http://HOST:PORT/v1\n"
        "(GET /v1/models, POST /v1/completions, POST /v1/chat/completions, streamed or not), and a chat\n"
        "page at http://HOST:PORT/. Up to --slots requests are decoded together, one batched forward per\n"
        "token (continuous batching); up to --queue more wait for a slot, and beyond that a request gets\n"
        "429. Chat completions need a tokenizer with the chat tokens (a model made by `llama sft`).\n\n"
        "The server listens on 127.0.0.1, this machine only, unless --host says otherwise. Ctrl-C or\n"
        "SIGTERM stops it: requests in flight are finished first, new ones get 503.",
        epilog="examples:\n"
        "  llama serve runs/chat/model\n"
        "  llama serve stories260K --tokenizer tok512.model --slots 8 --port 8080\n"
        "  llama serve runs/chat/model --api-key secret   # clients send 'Authorization: Bearer secret'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder or file, with its tokenizer saved beside it (or --tokenizer)")
    p.add_argument("--tokenizer", "-t", metavar="FILE", help="tokenizer file (default: the one saved with the checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    p.add_argument("--slots", type=int, default=4, metavar="N",
                   help="requests decoded together, each with a row of the KV cache (default 4)")
    p.add_argument("--queue", type=int, default=64, metavar="N",
                   help="requests that may wait for a slot; more get 429 (default 64)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1/ requests")
    p.add_argument("--model-name", metavar="NAME",
                   help="the model's id in /v1/models, which requests name (default: the checkpoint's name)")
    p.add_argument("--max-seq-len", type=int, metavar="N",
                   help="context length, for checkpoints that do not store it, or shorter to save memory")
    p.set_defaults(func=run)


def check_flags(args) -> None:
    """What can be checked without the model, checked first: a typo fails at once, not after seconds of loading."""
    if args.slots < 1:
        raise ValueError(f"--slots must be 1 or more, got {args.slots}")
    if args.queue < 0:
        raise ValueError(f"--queue must be 0 or more, got {args.queue}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be a port number from 0 to 65535, got {args.port}")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty: give a key, or leave the flag out for a server without one")
    check_max_seq_len(args.max_seq_len)


# --8<-- [start:run]
def run(args) -> int:
    check_flags(args)
    from llama.inference.generation import prepare_for_decoding
    from llama.serving.scheduler import Engine, Scheduler
    from llama.serving.server import serve
    from llama.tokenizers.tokenizer import load_tokenizer, saved_tokenizer

    path = checkpoint_path(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer is not None else saved_tokenizer(path)
    model = open_model(path, max_seq_len=args.max_seq_len).eval()
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {model.config.vocab_size}: "
                         "they do not belong together")
    # Column-major weights: faster when few slots are busy, the same function (see the generation chapter).
    engine = Engine(Scheduler(prepare_for_decoding(model), args.slots, args.queue))
    name = args.model_name or (Path(path).name if Path(path).is_dir() else Path(path).stem)
    serve(engine, tokenizer, name, host=args.host, port=args.port, api_key=args.api_key)
    return 0
# --8<-- [end:run]
