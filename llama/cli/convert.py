"""The ``llama convert`` subcommand: read a checkpoint in any supported format and write it as a
Hugging Face folder, a quantized folder or one GGUF file for llama.cpp, with its tokenizer."""

from __future__ import annotations

import argparse
import os

from llama.cli.common import add_quantize_flags, check_max_seq_len, checkpoint_path, open_model, quantize_flags


def add(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a checkpoint to Hugging Face's format or to GGUF (llama.cpp)",
        description="Read a checkpoint in any supported format (Hugging Face folder, Meta folder with\n"
        "params.json and consolidated.NN.pth, GGUF file, llama2.c .bin) and write it as a Hugging Face\n"
        "folder (config.json + model.safetensors) that transformers' AutoModelForCausalLM loads, or as\n"
        "one GGUF file that llama.cpp runs, with the tokenizer --tokenizer names or, by default, the one\n"
        "saved in the checkpoint's folder (a SentencePiece .model or a byte-level BPE .json).",
        epilog="examples:\n  llama convert stories260K.bin stories260K-hf --to hf\n"
        "  llama convert stories15M.bin stories15M.gguf --to gguf --dtype float16 --tokenizer tokenizer.model\n"
        "  llama convert runs/shakespeare/model shakespeare.gguf --to gguf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="checkpoint to read (its format is detected), or stories260K once downloaded")
    p.add_argument("destination", help="folder to write (created if needed), or the .gguf file for --to gguf")
    p.add_argument("--to", choices=["hf", "quantized", "gguf"], required=True,
                   help="output format: hf (Hugging Face), quantized (quantized.json + model.safetensors, "
                   "with --quantize), gguf (one file for llama.cpp)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the written weights (default float32; gguf: float32 or float16)")
    p.add_argument("--tokenizer", "-t", metavar="FILE",
                   help="gguf only: the tokenizer to store in the file, as llama.cpp needs (SentencePiece .model or "
                   "BPE .json; default: the one in the checkpoint's folder, if any)")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="context length to record (Meta checkpoints lack one)")
    p.add_argument("--merge-adapter", metavar="DIR", help="merge this LoRA adapter folder into the weights first")
    add_quantize_flags(p, "write integer weights (with --to quantized); the model's other tensors keep --dtype")
    p.set_defaults(func=run)


# --8<-- [start:run]
def run(args) -> int:
    import torch

    from llama._files import refuse_checkpoint_folder
    from llama.formats.checkpoint import check_finite

    scheme = quantize_flags(args)
    check_max_seq_len(args.max_seq_len)
    if (scheme is None) != (args.to != "quantized"):
        raise ValueError("--to quantized and --quantize int8|int4 go together: Hugging Face's format has no place "
                         "for these integer weights")
    if args.to != "gguf" and args.tokenizer is not None:
        raise ValueError("--tokenizer is for --to gguf; a Hugging Face folder keeps its tokenizer files beside it")
    dtype, vocab = getattr(torch, args.dtype), None
    if args.to == "gguf":
        from llama._files import refuse_to_overwrite
        from llama.formats.gguf import check_gguf
        from llama.tokenizers.gguf_vocab import vocab_from_tokenizer
        from llama.tokenizers.tokenizer import tokenizer_file

        if args.dtype == "bfloat16":
            raise ValueError("--to gguf writes float32 or float16 weights: pass --dtype float32 or --dtype float16")
        refuse_to_overwrite(args.destination, check_gguf, "a GGUF file")  # before the work, not after
        source = checkpoint_path(args.source)  # without --tokenizer, the one saved with the model
        tok_path = args.tokenizer or (tokenizer_file(source) if os.path.isdir(source) else None)
        vocab = vocab_from_tokenizer(tok_path) if tok_path is not None else None
    else:
        refuse_checkpoint_folder(args.destination)  # a folder of the user's own files is left as it is
    # An adapter is merged into float32 weights, and the merged model cast afterwards.
    model = open_model(checkpoint_path(args.source), torch.float32 if args.merge_adapter or args.to == "gguf" else dtype,
                       args.max_seq_len)
    if args.merge_adapter is not None:
        if getattr(model, "quantization", None):
            raise ValueError(f"{args.source} holds integer weights: an adapter merges into float weights; "
                             "give the float checkpoint it was made from")
        from llama.training.lora import load_adapter, merge_into_base

        merge_into_base(load_adapter(model, args.merge_adapter))
        model = model.to(dtype)
    merged = f" merged with {args.merge_adapter}" if args.merge_adapter else ""  # a merge or a cast can overflow
    check_finite(model.state_dict(), f"{args.source}{merged} as {args.dtype}", "nothing was written; check the "
                 "adapter, or write float32")
    if args.to == "gguf":
        from llama.formats.gguf import save_gguf

        save_gguf(model.state_dict(), model.config, args.destination, dtype, vocab,
                  name=os.path.splitext(os.path.basename(args.destination))[0])
        family = "byte-level BPE" if vocab and vocab.model == "gpt2" else "SentencePiece"
        extra = f", {family} tokenizer of {len(vocab.pieces):,} pieces from {tok_path}" if vocab else ", no tokenizer"
        scheme = getattr(model, "quantization", None)
        kind = (f"{'Q8_0' if scheme['bits'] == 8 else 'Q4_0'} blocks, other tensors {args.dtype}" if scheme
                else args.dtype)
        print(f"wrote {args.destination}: GGUF (llama), {model.num_parameters():,} parameters, {kind}{extra}")
        return 0
    if scheme is not None:
        from llama.quantization.weights import quantize, save_quantized

        save_quantized(quantize(model, *scheme), args.destination)
        groups = f"groups of {args.group_size}" if args.group_size else "one scale per row"
        print(f"wrote {args.destination}: quantized.json + model.safetensors, {args.quantize} weights, {groups}"
              f"{_with_tokenizer(args)}")
        return 0
    if getattr(model, "quantization", None):
        raise ValueError(f"{args.source} holds integer weights, which Hugging Face's format cannot hold: convert "
                         "the float checkpoint it was made from")
    from llama.formats.load import save_model

    save_model(model, args.destination)
    print(f"wrote {args.destination}: Hugging Face config.json + model.safetensors, "
          f"{model.num_parameters():,} parameters, {args.dtype}{_with_tokenizer(args)}")
    return 0


# --8<-- [end:run]


def _with_tokenizer(args) -> str:
    from llama.tokenizers.tokenizer import copy_saved_tokenizer

    return f", with {copied.name}" if (copied := copy_saved_tokenizer(args.source, args.destination)) else ""
