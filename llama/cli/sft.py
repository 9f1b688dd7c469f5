"""The ``llama sft`` subcommand: supervised fine-tuning of a trained model on a task's conversations, into a chat model.

It runs :func:`llama.training.loop.train` (the loop, log, checkpoints and exact ``--resume`` of
``llama train`` and ``llama finetune``) with :class:`llama.posttraining.sft.SFTData` as its source:
the base's tokenizer gains the chat tokens, the model their rows, and the loss counts the
assistant's tokens only. The result, ``OUT/model`` with its tokenizer, is what ``llama chat`` opens.
"""

from __future__ import annotations

import argparse
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llama.training.config import TrainConfig

# --8<-- [start:defaults]
#: Where supervised fine-tuning's defaults differ from ``llama train``'s: every weight trains (the
#: book's model is small; ``--lora-rank R`` trains adapters instead), at a learning rate for a model
#: that already works, without weight decay (it would pull the weights towards zero, not the base).
SFT_DEFAULTS = {"lora_rank": 0, "lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.0}
# --8<-- [end:defaults]


def add(subparsers) -> None:
    from llama.cli.common import add_base_flags
    from llama.cli.train import add_loop_flags
    from llama.posttraining.tasks import TASKS
    from llama.training.config import TrainConfig

    p = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning on a task's conversations: a chat model",
        description="Fine-tune a checkpoint on conversations made from a task's training problems (the prompt "
        "as the user's turn, 'Answer: ...' as the assistant's), in Llama 3's chat format, with the loss on the "
        "assistant's tokens only. The chat tokens are added to the base's tokenizer and the model on a new run. "
        "The training loop is `llama train`'s (checkpoints, exact --resume; the evaluations measure the --data "
        "text). Leaves OUT/model with its tokenizer, for `llama chat OUT/model`.",
    )
    d = TrainConfig(out="", max_steps=1)
    S = argparse.SUPPRESS  # a flag not given is absent, so --resume takes the saved value
    add_base_flags(p, "folder for the log, checkpoints and the chat model", lora_rank_help="train adapters of this "
                   "rank (with the embedding and head, whose chat rows are new) and merge them at the end; 0 trains "
                   "every weight (default 0)")
    p.add_argument("--task", dest="sft", default=S, help=f"the task to train on: {', '.join(TASKS)}")
    p.add_argument("--task-args", default=S, metavar="KNOB=N", help="the task's settings, e.g. digits=2, or digits=3,work=30 (default: the task's)")
    p.add_argument("--system", dest="sft_system", default=S, help="a system message, the first turn of every conversation")
    p.add_argument("--data", default=S, help="UTF-8 text the evaluations measure, in bits per byte "
                   "(the base's pre-training text: what fine-tuning costs it; default Tiny Shakespeare)")
    block = f"{d.block_size}, or the base's context if shorter"
    add_loop_flags(p, types.SimpleNamespace(**{**vars(d), **SFT_DEFAULTS, "block_size": block}))
    p.set_defaults(func=run)


# --8<-- [start:config]
def sft_config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool, set[str]]:
    """The settings of ``llama sft``: ``llama finetune``'s, with the task (``--task``, ``--task-args``)
    as ``sft``, the base's tokenizer with the chat tokens counted in the vocabulary, and
    :data:`SFT_DEFAULTS` for the flags not given.

    Args:
        args: the namespace :func:`llama.cli.main.build_parser` made of ``["sft", ...]``.

    Returns:
        ``(TrainConfig, resume, names of the settings given)``, for :func:`llama.training.loop.train`.

    Raises:
        FileNotFoundError: no base checkpoint, or no tokenizer beside it and no ``--tokenizer``.
        ValueError: no ``--task`` on a new run, an unknown task or difficulty, or flags that make no valid run.
    """
    import json
    from pathlib import Path

    from llama.cli.common import config_from_args, task_setting
    from llama.posttraining.chat import CHAT_TOKENS
    from llama.posttraining.special_tokens import add_special_tokens
    from llama.tokenizers.tokenizer import load_tokenizer
    from llama.training.config import TrainConfig, base_config, check_base
    from llama.training.finetune import base_tokenizer

    values = vars(args).copy()
    task_setting(values, "sft", args.resume)
    run_file = Path(args.out) / "run.json"
    if args.resume and run_file.is_file() and json.loads(run_file.read_text()).get("sft") is None:
        raise ValueError(f"{run_file} is not a supervised fine-tuning run (it names no task): resume it with "
                         "the command that started it (llama train or llama finetune)")
    check_base(args.base)
    tokenizer = str(values.get("tokenizer") or base_tokenizer(args.base))
    # The run's vocabulary is the base tokenizer's with the chat tokens: the run adds them.
    vocab_size = add_special_tokens(load_tokenizer(tokenizer), CHAT_TOKENS).vocab_size
    defaults = dict(SFT_DEFAULTS)
    if not {"block_size", "max_seq_len"} & set(values):
        defaults["block_size"] = min(TrainConfig.block_size, base_config(args.base).max_seq_len)
    values.update(tokenizer=tokenizer, vocab_size=vocab_size)
    return config_from_args(argparse.Namespace(**values), defaults=defaults)
# --8<-- [end:config]


def run(args) -> int:
    from llama.posttraining.sft import SFTData
    from llama.training.loop import train

    cfg, resume, given = sft_config_from_args(args)
    result = train(cfg, resume=resume, given=given, source=SFTData())
    print(f"final: step {result['step']}, {result['elapsed']:.1f} s, val loss {result['val_loss']:.4f} nats/token "
          f"on the --data text; wrote {cfg.out}/model (llama chat {cfg.out}/model)")
    return 0
