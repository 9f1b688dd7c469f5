"""After pre-training (part V): a chat format for the book's models, tasks whose answers a program can
check, and their evaluation.

Modules, in the order the book meets them: :mod:`~llama.posttraining.special_tokens`,
:mod:`~llama.posttraining.chat`, :mod:`~llama.posttraining.chat_session`,
:mod:`~llama.posttraining.tasks`, :mod:`~llama.posttraining.evaluate`, :mod:`~llama.posttraining.sft`,
:mod:`~llama.posttraining.dpo`, :mod:`~llama.posttraining.rl`, :mod:`~llama.posttraining.stage`.
Every public name of these modules can be imported from the package itself
(``from llama.posttraining import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "add_special_tokens": "special_tokens", "special_token_ids": "special_tokens",
    "save_tokenizer": "special_tokens", "write_model_proto": "special_tokens",
    "resize_vocab": "special_tokens",
    "CHAT_TOKENS": "chat", "ROLES": "chat", "LLAMA3_CHAT_TEMPLATE": "chat", "ChatFormat": "chat",
    "check_template": "chat", "pack": "chat",
    "ChatSession": "chat_session",
    "ANSWER_PREFIX": "tasks", "HELD_OUT_FRACTION": "tasks", "HELD_OUT_SEED": "tasks", "WORDS": "tasks",
    "TASKS": "tasks", "WORK": "tasks", "Problem": "tasks", "Grade": "tasks", "Task": "tasks", "make_task": "tasks",
    "parse_answer": "tasks", "document": "tasks", "solution": "tasks", "corpus": "tasks", "write_corpus": "tasks",
    "pass_at_k": "evaluate", "mean_pass_at_k": "evaluate", "plain_prompt": "evaluate", "prompt_ids": "evaluate",
    "replies": "evaluate",
    "bits_per_byte": "evaluate", "TaskEvaluation": "evaluate", "evaluate_task": "evaluate",
    "IGNORE": "sft", "conversation": "sft", "parse_task": "sft", "masked_targets": "sft",
    "masked_cross_entropy": "sft", "pack_stream": "sft", "SFTSampler": "sft", "SFTData": "sft",
    "chat_replies": "sft",
    "token_logps": "dpo", "sequence_logps": "dpo", "neg_log_sigmoid": "dpo", "DPOOutput": "dpo",
    "dpo_loss": "dpo", "Pair": "dpo", "PairBatch": "dpo", "pair_batch": "dpo", "frozen_copy": "dpo",
    "dpo_step": "dpo", "reward_of": "dpo", "preference_pairs": "dpo",
    "Rollout": "rl", "rollout": "rl", "flat_groups": "rl", "informative_groups": "rl", "group_advantages": "rl",
    "reinforce_loss": "rl", "clipped_surrogate": "rl", "k3_kl": "rl", "masked_mean": "rl", "grpo_loss": "rl",
    "rl_step": "rl",
    "METHODS": "stage", "StageConfig": "stage", "ProblemStream": "stage", "load_reward": "stage",
    "chat_model": "stage", "run_stage": "stage",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.posttraining.special_tokens import (
        add_special_tokens, resize_vocab, save_tokenizer, special_token_ids, write_model_proto,
    )
    from llama.posttraining.chat import (
        CHAT_TOKENS, ChatFormat, LLAMA3_CHAT_TEMPLATE, ROLES, check_template, pack,
    )
    from llama.posttraining.chat_session import ChatSession
    from llama.posttraining.tasks import (
        ANSWER_PREFIX, Grade, HELD_OUT_FRACTION, HELD_OUT_SEED, Problem, TASKS, Task, WORDS, WORK, corpus,
        document, make_task, parse_answer, solution, write_corpus,
    )
    from llama.posttraining.evaluate import (
        TaskEvaluation, bits_per_byte, evaluate_task, mean_pass_at_k, pass_at_k, plain_prompt, prompt_ids, replies,
    )
    from llama.posttraining.sft import (
        IGNORE, SFTData, SFTSampler, chat_replies, conversation, masked_cross_entropy, masked_targets,
        pack_stream, parse_task,
    )
    from llama.posttraining.dpo import (
        DPOOutput, Pair, PairBatch, dpo_loss, dpo_step, frozen_copy, neg_log_sigmoid, pair_batch,
        preference_pairs, reward_of, sequence_logps, token_logps,
    )
    from llama.posttraining.rl import (
        Rollout, clipped_surrogate, flat_groups, group_advantages, grpo_loss, informative_groups, k3_kl,
        masked_mean, reinforce_loss, rl_step, rollout,
    )
    from llama.posttraining.stage import METHODS, ProblemStream, StageConfig, chat_model, load_reward, run_stage
