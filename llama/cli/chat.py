"""The ``llama chat`` subcommand: talk with a chat model in the terminal, turn after turn, or one turn with ``--message``."""

from __future__ import annotations

import argparse
import sys

from llama.cli.common import check_max_seq_len, checkpoint_path, open_model


def add(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="talk with a chat model, turn after turn",
        description="Load a checkpoint whose tokenizer has the chat tokens (Llama 3's <|start_header_id|>,\n"
        "<|end_header_id|>, <|eot_id|>, <|begin_of_text|>) and talk with it. Each reply ends at <|eot_id|>;\n"
        "the conversation so far stays in the model's KV cache, so a turn costs only its own tokens.\n\n"
        "In the terminal: type a message and press Enter. Ctrl-C stops a reply (the conversation goes on);\n"
        "/reset starts a new conversation; /exit or Ctrl-D ends. With --message: one turn, the reply is\n"
        "printed, and the command exits.",
        epilog="examples:\n"
        "  llama chat runs/chat/model\n"
        "  llama chat runs/chat/model --system 'Answer in one sentence.' --message 'What is a llama?'\n"
        "  llama chat runs/chat/model --temperature 0.8 --top-p 0.9 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder or file whose tokenizer (saved beside it, or --tokenizer) "
                   "has the chat tokens")
    p.add_argument("--tokenizer", "-t", metavar="FILE", help="tokenizer file (default: the one saved with the checkpoint)")
    p.add_argument("--system", metavar="TEXT", help="a system message, the first turn of every conversation")
    p.add_argument("--message", "-m", metavar="TEXT", help="one user message: print the reply and exit")
    p.add_argument("--max-new-tokens", "-n", type=int, default=256, metavar="N", help="the most tokens of a reply (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (default) is greedy; higher is more random")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set with probability >= P")
    p.add_argument("--min-p", type=float, metavar="P", help="drop tokens less likely than P x the most likely")
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same conversation")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="context length, for checkpoints that do not store it")
    p.set_defaults(func=run)


# --8<-- [start:run]
def run(args) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be 1 or more, got {args.max_new_tokens}")
    check_max_seq_len(args.max_seq_len)
    from llama.inference.sampling import Sampling
    from llama.posttraining.chat import ChatFormat
    from llama.posttraining.chat_session import ChatSession
    from llama.tokenizers.tokenizer import load_tokenizer, saved_tokenizer

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        seed=args.seed)  # checked before the model loads
    path = checkpoint_path(args.checkpoint)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer is not None else saved_tokenizer(path)
    try:
        chat = ChatFormat(tok)
    except ValueError as err:
        raise ValueError(f"{args.tokenizer or args.checkpoint}: {err}") from None
    model = open_model(path, max_seq_len=args.max_seq_len).eval()
    session = ChatSession(model, chat, sampling, args.max_new_tokens, system=args.system)
    if args.message is not None:
        print_reply(session, args.message)
        return 0
    return converse(session)


def print_reply(session, message: str) -> None:
    """Send ``message`` and print the reply as it comes (what is new of the decoded text, each time)."""
    decode, ids, shown = session.chat.tokenizer.decode, [], ""
    stream = session.send(message)  # a message that does not fit raises here, before any output
    try:
        for token in stream:
            ids.append(token)
            text = decode(ids).rstrip("\ufffd")  # a character whose bytes have not all come waits
            print(text[len(shown):], end="", flush=True)
            shown = text
    finally:
        stream.close()  # an interrupted reply is closed with <|eot_id|> all the same
        print(decode(ids)[len(shown):])
    if len(session.ids) > session.context:
        print(f"(the model's context of {session.context} tokens is full: /reset to start again)", file=sys.stderr)


def converse(session) -> int:
    """The terminal loop: read a line, answer it, until /exit or the end of input."""
    print("Type a message; /reset starts over, /exit or Ctrl-D ends, Ctrl-C stops a reply.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            session.reset()
            print("(a new conversation)", file=sys.stderr)
            continue
        if not line.strip():
            continue
        try:
            print_reply(session, line)
        except KeyboardInterrupt:
            print("(stopped)", file=sys.stderr)  # the reply so far stays in the conversation
        except ValueError as err:  # a message that does not fit, or spells a special token
            print(f"llama chat: {err}", file=sys.stderr)
# --8<-- [end:run]
