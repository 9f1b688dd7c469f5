r"""Preference tuning by direct preference optimisation (DPO): the Bradley-Terry model of which of two
replies is preferred, turned into a loss on the log-probabilities that a policy and a frozen
reference give them.

For a prompt $x$, a chosen reply $y_c$ and a rejected one $y_r$, DPO minimises

$$
-\log \sigma\Big(\beta \big[(\log\pi(y_c|x) - \log\pi_{\text{ref}}(y_c|x))
- (\log\pi(y_r|x) - \log\pi_{\text{ref}}(y_r|x))\big]\Big),
$$

where $\log\pi(y|x)$ sums the log-probabilities of the reply's tokens only (not the prompt's).
:func:`dpo_loss` computes it, with the implicit rewards $\beta(\log\pi - \log\pi_{\text{ref}})$;
:func:`sequence_logps` the masked sums; :func:`pair_batch` pads pairs into one batch;
:func:`dpo_step` takes one optimizer step; :func:`preference_pairs` makes pairs from the model's
own sampled replies, a right one preferred to a wrong one.

>>> import torch
>>> zero = torch.zeros(3)
>>> out = dpo_loss(zero, zero, zero, zero, beta=0.1)   # policy = reference: every pair is a coin toss
>>> round(out.loss.item(), 4), round(math.log(2), 4)
(0.6931, 0.6931)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer
from llama.posttraining.evaluate import plain_prompt, prompt_ids, replies
from llama.posttraining.tasks import Problem, Task
from llama.tokenizers.tokenizer import Tokenizer
from llama.training.loss import log_sum_exp

__all__ = ["token_logps", "sequence_logps", "neg_log_sigmoid", "DPOOutput", "dpo_loss", "Pair", "PairBatch",
           "pair_batch", "frozen_copy", "dpo_step", "reward_of", "preference_pairs"]


def _check_batch(tokens: torch.Tensor, completion_mask: torch.Tensor | None = None) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long or tokens.size(1) < 2:
        kind, shape = getattr(tokens, "dtype", type(tokens).__name__), tuple(getattr(tokens, "shape", ()))
        raise ValueError(f"tokens must be a [b, s] tensor of token ids (torch.long) with s >= 2, "
                         f"got {kind} of shape {shape}")
    if completion_mask is not None and (completion_mask.shape != tokens.shape or completion_mask.dtype != torch.bool):
        raise ValueError(f"completion_mask must be a bool tensor shaped like tokens {tuple(tokens.shape)}, got "
                         f"{completion_mask.dtype} of shape {tuple(completion_mask.shape)}")


# --8<-- [start:logps]
def token_logps(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    r"""$\log \pi(t_{i} \mid t_{<i})$ for every token after the first: the log-softmax, picked at the next id.

    Written out as in :mod:`llama.training.loss`: the picked logit minus the log-sum-exp of its row,
    in float32 at least (float64 stays float64). Sequences are right padded: a causal model never
    lets a later (padding) token change an earlier position, so no attention mask is needed, only
    a mask of what to count.

    Args:
        model: the language model.
        tokens: ``[b, s]`` token ids, prompt then reply, right padded.

    Returns:
        ``[b, s - 1]``: entry ``i`` is the log-probability of ``tokens[:, i + 1]``.

    Raises:
        ValueError: ``tokens`` is not a ``[b, s]`` tensor of ids with ``s >= 2``.
    """
    _check_batch(tokens)
    logits = model(tokens[:, :-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))   # [b, s-1, vocab]
    picked = logits.gather(-1, tokens[:, 1:, None]).squeeze(-1)            # z_y, [b, s-1]
    return picked - log_sum_exp(logits)


def sequence_logps(model: Transformer, tokens: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    r"""$\log \pi(y \mid x)$ of each sequence's reply: the sum of :func:`token_logps` over the reply's tokens only.

    Args:
        model: the language model.
        tokens: ``[b, s]`` token ids, prompt then reply, right padded.
        completion_mask: ``[b, s]`` bool, ``True`` at the reply's tokens (not the prompt, not padding).

    Returns:
        ``[b]`` log-probabilities, in float32.

    Raises:
        ValueError: shapes or dtypes that do not fit together.
    """
    _check_batch(tokens, completion_mask)
    return token_logps(model, tokens).masked_fill(~completion_mask[:, 1:], 0.0).sum(-1)
# --8<-- [end:logps]


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive number (0.1 is usual), got {beta!r}: it scales the log-ratios "
                         "inside the sigmoid, and at beta <= 0 the loss no longer prefers the chosen reply")


# --8<-- [start:loss]
def neg_log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    r"""$-\log\sigma(x) = \log(1 + e^{-x})$, computed as $\max(0, -x) + \log(1 + e^{-|x|})$, which never overflows."""
    return (-x).clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


@dataclass(frozen=True)
class DPOOutput:
    """The DPO loss of a batch of pairs and what to watch while it trains.

    Attributes:
        loss: the mean loss over the pairs (a scalar with a gradient, if the inputs have one).
        chosen_rewards: ``[n]`` implicit rewards of the chosen replies, $\\beta(\\log\\pi - \\log\\pi_{ref})$, detached.
        rejected_rewards: ``[n]`` those of the rejected replies.
    """

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def accuracy(self) -> float:
        """The share of pairs whose chosen reply has the larger implicit reward."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean().item()

    @property
    def margin(self) -> float:
        """The mean of chosen minus rejected implicit reward."""
        return (self.chosen_rewards - self.rejected_rewards).mean().item()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> DPOOutput:
    r"""The DPO loss $-\log\sigma(\beta[(\pi_c - \text{ref}_c) - (\pi_r - \text{ref}_r)])$, averaged over pairs.

    Args:
        policy_chosen: ``[n]`` sequence log-probabilities of the chosen replies under the policy being trained.
        policy_rejected: ``[n]`` those of the rejected replies.
        ref_chosen: ``[n]`` those of the chosen replies under the frozen reference.
        ref_rejected: ``[n]`` those of the rejected replies under the reference.
        beta: how far the policy may move from the reference: the inverse temperature of the
            Bradley-Terry model of the implicit rewards (0.1 is usual).

    Returns:
        The loss and the implicit rewards (:class:`DPOOutput`).

    Raises:
        ValueError: ``beta <= 0``, or the four tensors do not have one shape.
    """
    _check_beta(beta)
    if not policy_chosen.shape == policy_rejected.shape == ref_chosen.shape == ref_rejected.shape:
        raise ValueError("the four log-probability tensors must have one shape [n], got "
                         f"{[tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)]}")
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    loss = neg_log_sigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return DPOOutput(loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
# --8<-- [end:loss]


# --8<-- [start:batch]
@dataclass(frozen=True)
class Pair:
    """A prompt with two replies, the first preferred.

    Attributes:
        prompt: the problem's prompt, as given to ``format_prompt``.
        chosen: the preferred reply's text.
        rejected: the other reply's text.
    """

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class PairBatch:
    """Pairs as one padded batch: the chosen sequences, then the rejected ones (as TRL lays them out).

    Attributes:
        tokens: ``[2n, s]`` prompt then reply, right padded with id 0.
        completion_mask: ``[2n, s]`` bool, ``True`` at the reply's tokens.
    """

    tokens: torch.Tensor
    completion_mask: torch.Tensor


def pair_batch(tokenizer: Tokenizer, pairs: Sequence[Pair], max_seq_len: int,
               format_prompt: Callable[[str], str] = plain_prompt) -> PairBatch:
    """Encode pairs (prompt and reply encoded apart, as :func:`~llama.posttraining.evaluate.replies` does) into a batch.

    Args:
        tokenizer: the model's tokenizer.
        pairs: the pairs.
        max_seq_len: the model's context; no sequence may be longer.
        format_prompt: turns a prompt into the model's input text (or its ids: :func:`~llama.posttraining.evaluate.prompt_ids`).

    Returns:
        A :class:`PairBatch` of ``2 * len(pairs)`` sequences.

    Raises:
        ValueError: no pairs, a pair whose two replies are identical or one of them empty, or a
            prompt and reply longer than ``max_seq_len``.
    """
    if not pairs:
        raise ValueError("no pairs to batch: make some with preference_pairs, or skip this step")
    rows = []
    for side in ("chosen", "rejected"):
        for i, pair in enumerate(pairs):
            if pair.chosen == pair.rejected:
                raise ValueError(f"pair {i} (prompt {pair.prompt!r}) has the same chosen and rejected reply: its loss "
                                 "is log 2 whatever the model and its gradient 0; drop it")
            prompt, reply = prompt_ids(tokenizer, format_prompt, pair.prompt), tokenizer.encode(getattr(pair, side))
            if not reply:
                raise ValueError(f"pair {i} (prompt {pair.prompt!r}) has an empty {side} reply: nothing to score")
            if len(prompt) + len(reply) > max_seq_len:
                raise ValueError(f"pair {i}: {len(prompt)} prompt tokens + {len(reply)} tokens of the {side} reply "
                                 f"exceed max_seq_len={max_seq_len}; shorten the reply or drop the pair")
            rows.append((prompt, reply))
    width = max(len(p) + len(r) for p, r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)               # id 0 at padding: masked out
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (prompt, reply) in enumerate(rows):
        tokens[i, :len(prompt) + len(reply)] = torch.tensor(prompt + reply)
        mask[i, len(prompt):len(prompt) + len(reply)] = True
    return PairBatch(tokens, mask)
# --8<-- [end:batch]


# --8<-- [start:step]
def frozen_copy(model: Transformer) -> Transformer:
    """A copy of ``model`` that no optimizer moves: the reference, in eval mode, with no gradients."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def dpo_step(policy: Transformer, reference: Transformer, batch: PairBatch, optimizer: torch.optim.Optimizer,
             beta: float) -> DPOOutput:
    """One optimizer step of DPO on a batch of pairs.

    The reference's log-probabilities are computed without a graph; the policy's with one; the
    loss's gradient flows through the policy's only.

    Args:
        policy: the model being trained (its parameters are ``optimizer``'s).
        reference: the frozen model the policy is kept close to (:func:`frozen_copy` of the start).
        batch: the pairs (:func:`pair_batch`).
        optimizer: the optimizer of ``policy``.
        beta: DPO's $\\beta$.

    Returns:
        The batch's loss and implicit rewards, from before the step.

    Raises:
        ValueError: ``beta <= 0``, or a batch that is not chosen rows then as many rejected rows.
    """
    _check_beta(beta)
    _check_batch(batch.tokens, batch.completion_mask)
    if batch.tokens.size(0) % 2:
        raise ValueError(f"a batch of pairs has an even number of rows (chosen, then rejected), "
                         f"got {batch.tokens.size(0)}")
    n = batch.tokens.size(0) // 2
    with torch.no_grad():
        ref = sequence_logps(reference, batch.tokens, batch.completion_mask)
    logps = sequence_logps(policy, batch.tokens, batch.completion_mask)
    out = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out
# --8<-- [end:step]


# --8<-- [start:pairs]
def reward_of(task: Task, problem: Problem, reply: str, reward: Callable[[str, Problem], float] | None = None) -> float:
    """The reward of one reply: ``reward(reply, problem)``, or the task's grade when ``reward`` is ``None``.

    Raises:
        ValueError: the reward function raised, or returned something that is not a finite number;
            the message names the task, the problem and the reply.
    """
    try:
        value = task.grade(reply, problem).reward if reward is None else reward(reply, problem)
    except Exception as err:
        raise ValueError(f"the reward of a reply to {task}'s problem {problem.prompt!r} failed with "
                         f"{type(err).__name__}: {err}; the reply was {reply!r}") from err
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"the reward of a reply to {task}'s problem {problem.prompt!r} is {value!r}, not a finite "
                         f"number; the reply was {reply!r}")
    return float(value)


def preference_pairs(model: Transformer, tokenizer: Tokenizer, task: Task, problems: Sequence[Problem], k: int,
                     max_new_tokens: int, *, temperature: float = 1.0, seed: int = 0, batch_size: int = 32,
                     format_prompt: Callable[[str], str] = plain_prompt, stop: Sequence[str] = ("\n\n",),
                     reward: Callable[[str, Problem], float] | None = None) -> tuple[list[Pair], int]:
    """Pairs from the model's own replies: ``k`` sampled per problem, graded, the best preferred to the worst.

    A problem whose replies all get one reward (all right, or all wrong) says nothing about what
    to prefer: it is skipped, and counted.

    Args:
        model: the model that samples.
        tokenizer: its tokenizer.
        task: the task whose grader gives the rewards.
        problems: the problems (training problems: :meth:`~llama.posttraining.tasks.Task.train_problems`).
        k: replies sampled per problem, at least 2.
        max_new_tokens: the longest reply, in tokens.
        temperature: the sampling temperature (1: the model's own distribution).
        seed: the seed of the sampling.
        batch_size: prompts generated together (see :func:`~llama.posttraining.evaluate.replies`).
        format_prompt: turns a prompt into the model's input text (or its ids: :func:`~llama.posttraining.evaluate.prompt_ids`).
        stop: strings that end a reply.
        reward: a reward function ``(reply, problem) -> float`` instead of the task's grade.

    Returns:
        The pairs (one per problem that has two different rewards) and the number of problems skipped.

    Raises:
        ValueError: ``k < 2``; a reward function that fails (:func:`reward_of`); the errors of ``replies``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2 (two replies to compare at least), got {k!r}")
    drawn = replies(model, tokenizer, [p.prompt for p in problems for _ in range(k)], max_new_tokens,
                    Sampling(temperature=temperature, seed=seed), batch_size, format_prompt, stop)
    pairs, skipped = [], 0
    for i, problem in enumerate(problems):
        group = drawn[i * k:(i + 1) * k]
        scores = [reward_of(task, problem, r, reward) for r in group]
        best, worst = max(range(k), key=scores.__getitem__), min(range(k), key=scores.__getitem__)
        if scores[best] == scores[worst]:
            skipped += 1
        else:
            pairs.append(Pair(problem.prompt, group[best], group[worst]))
    return pairs, skipped
# --8<-- [end:pairs]
