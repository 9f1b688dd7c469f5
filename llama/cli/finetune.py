"""The ``llama finetune`` subcommand: fine-tune a trained model, with LoRA adapters or every weight.

It runs :func:`llama.training.loop.train` (the same loop, log, checkpoints and exact ``--resume`` as
``llama train``) on a :class:`~llama.training.config.TrainConfig` that names the base checkpoint;
:mod:`llama.training.finetune` builds the model and saves the result.
"""

from __future__ import annotations

import argparse
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llama.training.config import TrainConfig

# --8<-- [start:defaults]
#: Where fine-tuning's defaults differ from ``llama train``'s: adapters of rank 8, a learning rate
#: for a model that already works (no long warm-up), and no weight decay (it would pull the
#: adapters towards zero, that is towards the base model).
FINETUNE_DEFAULTS = {"lora_rank": 8, "lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.0}
# --8<-- [end:defaults]


def add(subparsers) -> None:
    from llama.cli.common import add_base_flags
    from llama.cli.train import add_loop_flags
    from llama.training.config import TrainConfig

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a trained model on a text file (LoRA adapters, or every weight)",
        description="Fine-tune a checkpoint on a text file with LoRA adapters (--lora-rank R) or every "
        "weight (--lora-rank 0), with the training loop of `llama train`: evaluation in bits per byte, "
        "checkpoints, exact --resume. A LoRA run leaves OUT/adapter (PEFT's layout); a full one OUT/model.",
    )
    d = TrainConfig(out="", max_steps=1)
    S = argparse.SUPPRESS  # as in `llama train`: a flag not given is absent, so --resume takes the saved value
    add_base_flags(p, "folder for the log, checkpoints and adapter", lora_rank_help="rank of the adapters; 0 trains "
                   f"every weight instead (default {FINETUNE_DEFAULTS['lora_rank']})")
    p.add_argument("--data", default=S, help="UTF-8 text file to fine-tune on")
    # The windows default to 256 tokens, or to the base's context where that is shorter.
    block = f"{d.block_size}, or the base's context if shorter"
    add_loop_flags(p, types.SimpleNamespace(**{**vars(d), **FINETUNE_DEFAULTS, "block_size": block}))
    p.set_defaults(func=run)


def finetune_config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool, set[str]]:
    """The settings of ``llama finetune``: ``llama train``'s, with the base checkpoint, its
    tokenizer and vocabulary (given, as ``--base`` is), :data:`FINETUNE_DEFAULTS` for the flags not
    given, and windows no longer than the base's context (the model keeps that context unless
    ``--max-seq-len``).

    Args:
        args: the namespace :func:`llama.cli.main.build_parser` made of ``["finetune", ...]``.

    Returns:
        ``(TrainConfig, resume, names of the settings given)``, for :func:`llama.training.loop.train`.

    Raises:
        FileNotFoundError: no base checkpoint, or no tokenizer beside it and no ``--tokenizer``.
        ValueError: the flags make no valid run.
    """
    from llama.cli.common import config_from_args
    from llama.tokenizers.tokenizer import load_tokenizer
    from llama.training.config import TrainConfig, base_config, check_base
    from llama.training.finetune import base_tokenizer

    check_base(args.base)  # a missing, unknown, quantized or sharded base fails here, before the tokenizer is looked for
    # The tokenizer and its vocabulary follow from --base, which is given: they count as given too.
    tokenizer = str(getattr(args, "tokenizer", None) or base_tokenizer(args.base))
    vocab_size = load_tokenizer(tokenizer).vocab_size
    defaults = dict(FINETUNE_DEFAULTS)
    if not {"block_size", "max_seq_len"} & set(vars(args)):  # the base's context, if shorter
        defaults["block_size"] = min(TrainConfig.block_size, base_config(args.base).max_seq_len)
    args = argparse.Namespace(**{**vars(args), "tokenizer": tokenizer, "vocab_size": vocab_size})
    return config_from_args(args, defaults=defaults)


def run(args) -> int:
    from llama.training.loop import train

    cfg, resume, given = finetune_config_from_args(args)
    result = train(cfg, resume=resume, given=given)
    print(f"final: step {result['step']}, {result['elapsed']:.1f} s, val loss {result['val_loss']:.4f} nats/token, "
          f"{result['val_bpb']:.4f} bits per byte; wrote {cfg.out}/{'adapter' if cfg.lora_rank else 'model'}")
    return 0
