"""The ``llama dpo`` subcommand: preference tuning of a chat model on pairs of its own replies to a task.

Each step samples replies to training problems from the model itself, grades them, prefers a right
reply to a wrong one and takes one DPO step against the frozen ``--base``
(:func:`llama.posttraining.stage.run_stage`): a log, checkpoints and an exact ``--resume``, as
``llama train`` has. Leaves ``OUT/model`` with its tokenizer, for ``llama chat OUT/model``.
"""

from __future__ import annotations

import argparse

# --8<-- [start:defaults]
#: The settings ``llama dpo`` starts from (each a flag): pairs from 8 replies to each of 8 problems
#: a step, beta 0.1 (the usual), and a learning rate ten times below RL's: every pair pushes a
#: whole reply up or down, and DPO's loss keeps pushing a pair it already ranks right.
DPO_DEFAULTS = {"method": "dpo", "max_steps": 40, "lr": 1e-5, "problems_per_step": 8, "group": 8,
                "max_new_tokens": 16, "temperature": 1.0, "seed": 0, "save_every": 10, "beta": 0.1}
# --8<-- [end:defaults]


def add(subparsers) -> None:
    from llama.cli.common import add_stage_flags

    p = subparsers.add_parser(
        "dpo",
        help="preference tuning of a chat model on pairs of its own graded replies (DPO)",
        description="Train a chat model (llama sft's OUT/model) with DPO: each step samples --group replies to "
        "each of --problems-per-step training problems of --task, prefers a right reply to a wrong one, and takes "
        "one AdamW step on the DPO loss against the frozen --base. Checkpoints and an exact --resume as in llama "
        "train; leaves OUT/model with its tokenizer, for `llama chat OUT/model`.",
    )
    add_stage_flags(p, DPO_DEFAULTS)
    p.add_argument("--beta", type=float, default=argparse.SUPPRESS,
                   help=f"DPO's beta: how far the model may move from --base (default {DPO_DEFAULTS['beta']:g})")
    p.set_defaults(func=run)


def run(args) -> int:
    from llama.cli.common import stage_config_from_args
    from llama.posttraining.stage import run_stage

    cfg, resume, given = stage_config_from_args(args, DPO_DEFAULTS)
    final = run_stage(cfg, resume=resume, given=given)
    print(f"final: step {final['step']}, {final['elapsed']:.1f} s; wrote {cfg.out}/model (llama chat {cfg.out}/model)")
    return 0
