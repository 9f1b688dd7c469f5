"""Evaluation on held-out problems: greedy accuracy, sampled pass@k, format compliance, and bits per byte.

:func:`evaluate_task` generates replies to a task's held-out problems in batches with the KV-cached
decoder of :mod:`llama.inference.generation`, grades them with the task's grader and counts:
greedy accuracy (pass@1 of the most likely reply), the share of replies in the answer format and,
from ``samples`` sampled replies per problem, pass@k by the unbiased estimator :func:`pass_at_k`.
Given validation tokens of the pre-training text, it also measures the model's bits per byte on
them with the training loop's own evaluation: the same number before and after post-training says
what the new skill cost the old one.

>>> round(pass_at_k(n=10, c=3, k=1), 12), round(pass_at_k(n=10, c=3, k=5), 4)   # 3/10, 1 - 21/252
(0.3, 0.9167)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llama.data.pipeline import token_byte_lengths
from llama.inference.generation import generate_batch
from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer
from llama.posttraining.tasks import Problem, Task
from llama.tokenizers.tokenizer import Tokenizer
from llama.training.loop import evaluate

__all__ = ["pass_at_k", "mean_pass_at_k", "plain_prompt", "prompt_ids", "replies", "bits_per_byte", "TaskEvaluation",
           "evaluate_task"]


def _is_count(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0


# --8<-- [start:pass_at_k]
def pass_at_k(n: int, c: int, k: int) -> float:
    r"""The unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct: $1 - \binom{n-c}{k} / \binom{n}{k}$.

    The ratio of binomials is a product of ``k`` factors, $\prod_{i=n-c+1}^{n} (1 - k/i)$,
    each in [0, 1]: no binomial coefficient is formed, so nothing overflows (``comb(200, 100)``
    has 59 digits) and the result is exact to a few units in the last place.

    Args:
        n: the samples drawn for the problem.
        c: how many of them are correct.
        k: the tries allowed.

    Returns:
        The probability that ``k`` of the ``n`` samples, chosen without replacement, hold a correct one.

    Raises:
        ValueError: a count that is not a non-negative integer, ``c > n``, ``k < 1`` or ``k > n``.
    """
    if not (_is_count(n) and _is_count(c) and _is_count(k)):
        raise ValueError(f"n, c and k must be non-negative integers, got n={n!r}, c={c!r}, k={k!r}")
    if c > n:
        raise ValueError(f"c={c} correct samples out of n={n}: c cannot exceed n")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k} with n={n} samples: draw at least k samples per problem")
    if n - c < k:  # every set of k samples holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
# --8<-- [end:pass_at_k]


def mean_pass_at_k(correct: Sequence[int], n: int, k: int) -> float:
    """pass@k of a benchmark: :func:`pass_at_k` of each problem (``correct[i]`` of ``n`` samples), averaged.

    Raises:
        ValueError: no problems, or a count :func:`pass_at_k` refuses.
    """
    if len(correct) == 0:
        raise ValueError("no problems to average pass@k over")
    return sum(pass_at_k(n, c, k) for c in correct) / len(correct)


# --8<-- [start:replies]
def plain_prompt(prompt: str) -> str:
    """The text the model is given for a problem's prompt when no chat format is used: the prompt and a newline."""
    return prompt + "\n"


def prompt_ids(tokenizer: Tokenizer, format_prompt: Callable[[str], str | list[int]], prompt: str) -> list[int]:
    """The ids the model is given for ``prompt``: ``format_prompt``'s text encoded, or its ids as they are.

    A chat model's prompt is ids (:meth:`~llama.posttraining.chat.ChatFormat.encode` cuts the text
    at its special tokens and encodes each piece on its own, as its training did), so a
    ``format_prompt`` may return them directly.
    """
    formatted = format_prompt(prompt)
    return tokenizer.encode(formatted) if isinstance(formatted, str) else list(formatted)


def replies(model: Transformer, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int,
            sampling: Sampling = Sampling(), batch_size: int = 32,
            format_prompt: Callable[[str], str] = plain_prompt, stop: Sequence[str] = ("\n\n",)) -> list[str]:
    """The model's reply to each prompt, generated ``batch_size`` prompts at a time.

    Each prompt is formatted by ``format_prompt`` and encoded (without BOS, as ``llama train``
    encodes its text); the tokenizer's EOS, if it has one, ends a reply. A reply is the decoded new
    text cut before the first of the ``stop`` strings: a model trained on problems one after another
    goes on to write the next problem after its answer, and that is not part of the reply. With
    sampling, batch ``i`` draws with seed ``sampling.seed + i``, so two batches of the same prompts
    do not draw the same replies.

    Args:
        model: the language model.
        tokenizer: its tokenizer.
        prompts: the problems' prompts.
        max_new_tokens: the longest reply, in tokens.
        sampling: how tokens are chosen (default: greedy).
        batch_size: prompts generated together.
        format_prompt: turns a prompt into the model's input text (or its ids: :func:`prompt_ids`).
        stop: strings that end a reply.

    Returns:
        The reply to each prompt, in order.

    Raises:
        ValueError: a prompt plus ``max_new_tokens`` longer than the model's ``max_seq_len``, or
            ``batch_size`` below 1.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    eos = {tokenizer.eos_id} if tokenizer.eos_id >= 0 else set()
    encoded = [prompt_ids(tokenizer, format_prompt, p) for p in prompts]
    texts = []
    for b, start in enumerate(range(0, len(encoded), batch_size)):
        seed = None if sampling.seed is None else sampling.seed + b
        settings = Sampling(sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p,
                            sampling.stop_ids | eos, seed)
        for ids in generate_batch(model, encoded[start:start + batch_size], max_new_tokens, settings):
            text = tokenizer.decode(ids)
            cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
            texts.append(text[:cut])
    return texts
# --8<-- [end:replies]


# --8<-- [start:bits_per_byte]
def bits_per_byte(model: Transformer, tokenizer: Tokenizer, tokens: np.ndarray | str, block_size: int | None = None,
                  max_tokens: int | None = None) -> float:
    """The model's bits per byte on a text, as ``llama train`` measures it on its validation split.

    Args:
        tokens: the token ids of the text (e.g. a run's ``data/val.npy``), or the text itself.
        block_size: the window of each forward pass (default: the model's ``max_seq_len``).
        max_tokens: predict only this many tokens (default: all).

    Returns:
        Bits per byte: the total loss in bits over the bytes the predicted tokens decode to.

    Raises:
        ValueError: fewer than 2 tokens.
    """
    if isinstance(tokens, str):
        tokens = np.asarray(tokenizer.encode(tokens), dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError(f"bits per byte needs at least 2 tokens of text, got {len(tokens)}")
    result = evaluate(model, tokens, block_size or model.config.max_seq_len, token_byte_lengths(tokenizer), max_tokens)
    return result["bpb"]
# --8<-- [end:bits_per_byte]


@dataclass(frozen=True)
class TaskEvaluation:
    """The scores of one model on one task's held-out problems.

    Attributes:
        task: the task's name and difficulty, e.g. ``addition(digits=3)``.
        problems: how many problems were scored.
        correct: problems whose greedy reply is right.
        formatted: greedy replies that end with a well-formed ``Answer:`` line, right or wrong.
        samples: sampled replies per problem (0: none were drawn).
        sampled_correct: for each problem, how many of its sampled replies are right.
        pass_at: k -> pass@k over the sampled replies (:func:`mean_pass_at_k`).
        bpb: bits per byte on the pre-training text given, or ``None``.
        greedy_replies: the greedy reply to each problem, in order.
    """

    task: str
    problems: int
    correct: int
    formatted: int
    samples: int = 0
    sampled_correct: tuple[int, ...] = ()
    pass_at: dict[int, float] = field(default_factory=dict)
    bpb: float | None = None
    greedy_replies: tuple[str, ...] = field(default=(), repr=False)

    @property
    def accuracy(self) -> float:
        """Greedy pass@1: the share of problems whose most likely reply is right."""
        return self.correct / self.problems

    @property
    def format_rate(self) -> float:
        """The share of greedy replies in the answer format."""
        return self.formatted / self.problems


# --8<-- [start:evaluate_task]
def evaluate_task(model: Transformer, tokenizer: Tokenizer, task: Task, problems: Sequence[Problem] | int = 100, *,
                  max_new_tokens: int = 32, samples: int = 0, ks: Sequence[int] = (1,), temperature: float = 1.0,
                  seed: int = 0, batch_size: int = 32, format_prompt: Callable[[str], str] = plain_prompt,
                  stop: Sequence[str] = ("\n\n",), bpb_tokens: np.ndarray | str | None = None) -> TaskEvaluation:
    """Score ``model`` on ``task``: greedy accuracy and format, sampled pass@k, bits per byte.

    Args:
        problems: the problems to score, or how many of ``task.held_out`` to take.
        max_new_tokens: the longest reply, in tokens.
        samples: sampled replies per problem for pass@k (0: greedy only).
        ks: the k of each pass@k to report, each at most ``samples``.
        temperature: the temperature the samples are drawn at (:class:`~llama.inference.sampling.Sampling`).
        seed: the seed of the samples' random stream.
        format_prompt: turns a prompt into the model's input text (a chat format, say).
        stop: strings that end a reply (see :func:`replies`).
        bpb_tokens: the pre-training validation tokens (or text) to measure bits per byte on.

    Returns:
        The counts and scores, as a :class:`TaskEvaluation`.

    Raises:
        ValueError: ``samples`` negative, or a k outside 1 .. ``samples``; the errors of
            :func:`replies` and :meth:`~llama.posttraining.tasks.Task.held_out`.
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task (make_task(name, ...)), got {type(task).__name__}")
    if not _is_count(samples):
        raise ValueError(f"samples must be a non-negative integer, got {samples!r}")
    if samples and not all(_is_count(k) and 1 <= k <= samples for k in ks):
        raise ValueError(f"every k of pass@k must be from 1 to samples={samples}, got ks={list(ks)}; "
                         "draw more samples or ask for smaller k")
    problems = task.held_out(problems) if isinstance(problems, int) else list(problems)
    if not problems:
        raise ValueError("no problems to evaluate: pass a number of held-out problems or a non-empty list")
    prompts = [p.prompt for p in problems]
    run = dict(batch_size=batch_size, format_prompt=format_prompt, stop=stop)
    greedy = replies(model, tokenizer, prompts, max_new_tokens, **run)
    grades = [task.grade(r, p) for r, p in zip(greedy, problems)]
    counts: tuple[int, ...] = ()
    if samples:
        drawn = replies(model, tokenizer, [p for p in prompts for _ in range(samples)], max_new_tokens,
                        Sampling(temperature=temperature, seed=seed), **run)
        counts = tuple(int(sum(task.grade(drawn[i * samples + j], p).reward for j in range(samples)))
                       for i, p in enumerate(problems))
    return TaskEvaluation(
        task=repr(task), problems=len(problems), correct=int(sum(g.reward for g in grades)),
        formatted=sum(g.formatted for g in grades), samples=samples, sampled_correct=counts,
        pass_at={k: mean_pass_at_k(counts, samples, k) for k in ks} if samples else {},
        bpb=None if bpb_tokens is None else bits_per_byte(model, tokenizer, bpb_tokens),
        greedy_replies=tuple(greedy))
# --8<-- [end:evaluate_task]
