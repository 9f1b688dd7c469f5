"""Post-training (part V): checkable tasks and their evaluation, for the stages that follow pre-training.

Modules, in the order the book meets them: :mod:`~llama.posttraining.tasks`, :mod:`~llama.posttraining.evaluate`.
Every public name of these modules can be imported from the package itself
(``from llama.posttraining import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "ANSWER_PREFIX": "tasks", "HELD_OUT_FRACTION": "tasks", "HELD_OUT_SEED": "tasks", "WORDS": "tasks",
    "TASKS": "tasks", "Problem": "tasks", "Grade": "tasks", "Task": "tasks", "make_task": "tasks",
    "parse_answer": "tasks", "document": "tasks", "corpus": "tasks", "write_corpus": "tasks",
    "pass_at_k": "evaluate", "mean_pass_at_k": "evaluate", "plain_prompt": "evaluate", "replies": "evaluate",
    "bits_per_byte": "evaluate", "TaskEvaluation": "evaluate", "evaluate_task": "evaluate",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.posttraining.tasks import (
        ANSWER_PREFIX, HELD_OUT_FRACTION, HELD_OUT_SEED, TASKS, WORDS, Grade, Problem, Task, corpus, document,
        make_task, parse_answer, write_corpus,
    )
    from llama.posttraining.evaluate import (
        TaskEvaluation, bits_per_byte, evaluate_task, mean_pass_at_k, pass_at_k, plain_prompt, replies,
    )
