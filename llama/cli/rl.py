"""The ``llama rl`` subcommand: reinforcement learning of a chat model on a task, with GRPO or REINFORCE.

Each step samples groups of replies to training problems from the model itself, grades them with
the task's grader and takes one step on their advantages (:func:`llama.posttraining.stage.run_stage`):
a log, checkpoints and an exact ``--resume``, as ``llama train`` has. Leaves ``OUT/model`` with its
tokenizer, for ``llama chat OUT/model``.
"""

from __future__ import annotations

import argparse

# --8<-- [start:defaults]
#: The settings ``llama rl`` starts from (each a flag): GRPO on groups of 8 replies to 8 problems a
#: step, sampled at temperature 1 (the policy's own distribution, as the policy gradient assumes),
#: a learning rate that moves a small trained model in tens of steps, no KL term (the grader
#: cannot be fooled the way a learnt reward model can).
RL_DEFAULTS = {"method": "grpo", "max_steps": 60, "lr": 1e-4, "problems_per_step": 8, "oversample": 1, "group": 8,
               "max_new_tokens": 16, "temperature": 1.0, "seed": 0, "save_every": 10, "kl_beta": 0.0,
               "clip_eps": 0.2, "level": "sequence"}
# --8<-- [end:defaults]


def add(subparsers) -> None:
    from llama.cli.common import add_stage_flags

    p = subparsers.add_parser(
        "rl",
        help="reinforcement learning of a chat model on a task's graded replies (GRPO, REINFORCE)",
        description="Train a chat model (llama sft's OUT/model) with GRPO or REINFORCE: each step samples --group "
        "replies to each of --problems-per-step training problems of --task, grades them, and takes one AdamW step "
        "on each reply's advantage over its group. Checkpoints and an exact --resume as in llama train; leaves "
        "OUT/model with its tokenizer, for `llama chat OUT/model`.",
    )
    add_stage_flags(p, RL_DEFAULTS)
    S = argparse.SUPPRESS
    g = p.add_argument_group("the update")
    g.add_argument("--oversample", type=int, default=S, metavar="K",
                   help="draw K times --problems-per-step problems a step and train on up to --problems-per-step of "
                   "their groups whose replies got different rewards (default 1: on every group drawn)")
    g.add_argument("--method", choices=["grpo", "reinforce"], default=S,
                   help="grpo: advantages scaled by the group's std, PPO's clip; reinforce: the group mean as "
                   "baseline (default grpo)")
    g.add_argument("--kl-beta", type=float, default=S, help="weight of a k3 KL term to --base (default 0: none)")
    g.add_argument("--clip-eps", type=float, default=S, help=f"GRPO's clip (default {RL_DEFAULTS['clip_eps']:g})")
    g.add_argument("--level", choices=["sequence", "token"], default=S,
                   help="average the per-token losses per reply, then over replies, or over all tokens (default sequence)")
    p.set_defaults(func=run)


def run(args) -> int:
    from llama.cli.common import stage_config_from_args
    from llama.posttraining.stage import run_stage

    cfg, resume, given = stage_config_from_args(args, RL_DEFAULTS)
    final = run_stage(cfg, resume=resume, given=given)
    print(f"final: step {final['step']}, {final['elapsed']:.1f} s, mean reward {final['reward']:.3f} over the last "
          f"steps; wrote {cfg.out}/model (llama chat {cfg.out}/model)")
    return 0
