"""The ``llama train`` subcommand: its flags, how they become a ``TrainConfig``, and the run.

Errors are reported by :func:`llama.cli.main.main`, like every other subcommand's.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llama.training.config import TrainConfig


def add(subparsers) -> None:
    from llama.training.config import MODEL_SIZES, RECIPES, TrainConfig

    p = subparsers.add_parser(
        "train",
        help="train a model on a text file (alone or under torchrun)",
        description="Train a tokenizer (or load one) and a LLaMA-style model on a text file, with "
        "evaluation in bits per byte, checkpoints, exact --resume, and DDP under torchrun.",
    )
    # Defaults are TrainConfig's; a flag not given is absent from the namespace (SUPPRESS), so
    # that --resume knows which settings the user gave and takes the others from the saved run.
    d = TrainConfig(out="", max_steps=1)
    S = argparse.SUPPRESS
    p.add_argument("--data", default=S, help="UTF-8 text file to train on (default: Tiny Shakespeare, "
                   "wherever `llama download` finds it, else downloaded)")
    p.add_argument("--out", required=True, help="folder for the tokenizer, data, log, checkpoints and model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=S,
                   help="start from a named run's settings (shakespeare: the book's two-minute recipe); "
                   "other flags override them")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer", default=S, help=f"bytes, bpe, sentencepiece (trained here) or a saved tokenizer file (default {d.tokenizer})")
    g.add_argument("--vocab-size", type=int, default=S, help=f"vocabulary of a trained tokenizer (default {d.vocab_size})")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=S, help=f"size: {', '.join(MODEL_SIZES)} or a preset of llama.model.config (default {d.model})")
    for name in ("dim", "n-layers", "n-heads", "n-kv-heads", "max-seq-len"):
        g.add_argument(f"--{name}", type=int, default=S, help="override the size's value")
    add_loop_flags(p, d)
    p.set_defaults(func=run)


# --8<-- [start:config_from_args]
def train_config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool, set[str]]:
    """The settings of ``llama train`` from its parsed flags: a ``--recipe``'s values count as
    given, and the flags given beside it override them (:func:`llama.cli.common.config_from_args`).

    Args:
        args: the namespace :func:`llama.cli.main.build_parser` made of ``["train", ...]``.

    Returns:
        ``(TrainConfig, resume, names of the settings given)``: the arguments of
        :func:`llama.training.loop.train`.

    Raises:
        ValueError: the flags make no valid run (no length, a negative size, ...).
    """
    from llama.cli.common import config_from_args
    from llama.training.config import RECIPES

    return config_from_args(args, preset=RECIPES.get(getattr(args, "recipe", None), {}))
# --8<-- [end:config_from_args]


def run(args) -> int:
    import os
    import time

    from llama.training.loop import train

    cfg, resume, given = train_config_from_args(args)
    began = time.perf_counter()
    result = train(cfg, resume=resume, given=given)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        print(f"final: step {result['step']}, {result['elapsed']:.1f} s of training loop "
              f"({time.perf_counter() - began:.1f} s in all), val loss {result['val_loss']:.4f} nats/token, "
              f"perplexity {result['val_ppl']:.2f}, {result['val_bpb']:.4f} bits per byte "
              f"({result['val_tokens']} tokens, {result['val_bytes']} bytes)")
    return 0


def add_loop_flags(p: argparse.ArgumentParser, d) -> None:
    """The training loop's flags (optimization, length and reporting), shared by ``llama train`` and
    ``llama finetune``; ``d`` holds the defaults the help shows (a ``TrainConfig``, or a namespace
    with fine-tuning's own). Every default is ``SUPPRESS``: see :func:`add`."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("optimization")
    g.add_argument("--block-size", type=int, default=S, help=f"tokens per training window (default {d.block_size})")
    g.add_argument("--batch-size", type=int, default=S, help=f"windows per micro-step per process (default {d.batch_size})")
    g.add_argument("--accum", type=int, default=S, help=f"gradient-accumulation micro-steps per step (default {d.accum})")
    g.add_argument("--lr", type=float, default=S, help=f"peak learning rate (default {d.lr:g})")
    g.add_argument("--min-lr-ratio", type=float, default=S, help=f"final lr / peak lr (default {d.min_lr_ratio})")
    g.add_argument("--warmup-steps", type=int, default=S, help=f"linear warm-up steps (default {d.warmup_steps})")
    g.add_argument("--weight-decay", type=float, default=S, help=f"AdamW weight decay (default {d.weight_decay:g})")
    g.add_argument("--beta1", type=float, default=S, help=f"AdamW beta1 (default {d.beta1})")
    g.add_argument("--beta2", type=float, default=S, help=f"AdamW beta2 (default {d.beta2})")
    g.add_argument("--grad-clip", type=float, default=S, help=f"max gradient norm, 0 = off (default {d.grad_clip})")
    g.add_argument("--optimizer", choices=["adamw", "muon"], default=S,
                   help=f"adamw, or muon for the blocks' matrices (default {d.optimizer})")
    g.add_argument("--muon-lr", type=float, default=S, help=f"Muon's peak learning rate (default {d.muon_lr})")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default=S,
                   help="auto: bfloat16 autocast where this machine computes it natively, else float32; "
                   f"or either of them (default {d.dtype})")
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    g.add_argument("--parallel", choices=["ddp", "fsdp"], default=S,
                   help="under torchrun: ddp (a whole copy per process) or fsdp (each process holds 1/N of "
                   f"the weights, gradients and optimizer state; checkpoints resume on any number) (default {d.parallel})")
    g.add_argument("--checkpoint-activations", action="store_true", default=S,
                   help="recompute each block's activations in the backward pass (less memory, ~1/3 more compute)")
    g.add_argument("--seed", type=int, default=S, help=f"seed of everything random (default {d.seed})")
    g = p.add_argument_group("length and reporting")
    g.add_argument("--max-steps", type=int, default=S, help="stop after this many optimizer steps")
    g.add_argument("--max-time", type=float, default=S,
                   help="stop the training loop (its steps and periodic evaluations) after this many seconds; "
                   "preparing the data before it, and the final evaluation, model and sample after it, "
                   "come on top")
    g.add_argument("--eval-every", type=int, default=S, help=f"evaluate and checkpoint every N steps (default {d.eval_every})")
    g.add_argument("--eval-tokens", type=int, default=S, help=f"validation tokens per periodic evaluation (default {d.eval_tokens})")
    g.add_argument("--threads", type=int, default=S, help="CPU threads per process")
    g.add_argument("--sample-tokens", type=int, default=S, help=f"tokens to sample at the end (default {d.sample_tokens})")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="no progress bar")
