"""The ``llama generate`` subcommand: continue a prompt with a checkpoint, printing each token as it comes."""

from __future__ import annotations

import argparse

from llama.cli.common import add_quantize_flags, check_max_seq_len, checkpoint_path, open_model, quantize_flags


def add(subparsers) -> None:
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
    p.set_defaults(func=run)


def check_flags(args) -> None:
    """What can be checked without the model, checked first: a typo fails at once, not after seconds of loading."""
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be 0 or more, got {args.max_new_tokens}")
    check_max_seq_len(args.max_seq_len)
    for flag, ids in (("--ids", args.ids or []), ("--stop-id", args.stop_id)):
        if any(i < 0 for i in ids):
            raise ValueError(f"{flag} takes token ids, which are 0 or more; got {min(ids)}")


# --8<-- [start:run]
def run(args) -> int:
    check_flags(args)  # and the sampling settings just below: all before the model loads
    from llama.inference.compiled import CompiledDecoder, missing_cxx_compiler
    from llama.inference.generation import generate_stream, prepare_for_decoding
    from llama.inference.sampling import Sampling

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        stop_ids=args.stop_id, seed=args.seed)
    scheme = quantize_flags(args)
    if args.compile and (missing := missing_cxx_compiler()):
        raise ValueError(f"{missing}; or run without --compile")
    tok = None
    if args.tokenizer is not None:
        from llama.tokenizers.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    elif args.prompt is not None:  # the tokenizer saved with the model, as `llama train` leaves it
        from llama.tokenizers.tokenizer import saved_tokenizer

        tok = saved_tokenizer(checkpoint_path(args.checkpoint))
    if args.prompt is not None:
        prompt = tok.encode(args.prompt, bos=tok.bos_id >= 0)  # Llama models expect <s> first
    else:
        prompt = args.ids if args.ids is not None else [1]
    if not prompt:
        raise ValueError("the prompt is empty (no text and this tokenizer has no <s>): give --prompt text or --ids")
    model = open_model(checkpoint_path(args.checkpoint), max_seq_len=args.max_seq_len)
    if args.adapter is not None:  # merged: decoding then costs what the base model's does
        if getattr(model, "quantization", None):
            raise ValueError(f"{args.checkpoint} holds integer weights: an adapter merges into float weights; "
                             "give the float checkpoint and --quantize")
        from llama.training.lora import load_adapter, merge_into_base

        merge_into_base(load_adapter(model, args.adapter))
    if scheme is not None:  # after the adapter: its update is quantized with the weights it joined
        from llama.quantization.weights import quantize

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
# --8<-- [end:run]
