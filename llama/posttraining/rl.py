r"""Reinforcement learning with verifiable rewards: REINFORCE and GRPO written out, on groups of
replies sampled by the KV-cached batched decoder and rewarded by a task's grader.

For each problem, :func:`rollout` samples a group of $G$ replies with
:func:`~llama.inference.generation.generate_batch`, grades them, and keeps the token log-probabilities
of the policy that sampled them. :func:`group_advantages` turns the rewards into advantages
$(r - \text{mean}) / (\text{std} + \epsilon)$ within each group; :func:`reinforce_loss` is the plain
policy gradient, :func:`grpo_loss` the clipped surrogate $\min(\rho A, \text{clip}(\rho, 1-\epsilon,
1+\epsilon) A)$ on the per-token ratio $\rho$ to the sampling policy, with an optional KL term to a
reference (:func:`k3_kl`), averaged per token or per sequence (:func:`masked_mean`).
:func:`rl_step` takes one optimizer step on a rollout.

>>> import torch
>>> [round(a, 3) for a in group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))[0].tolist()]  # std 0.577 (unbiased)
[0.866, -0.866, -0.866, 0.866]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llama.inference.generation import generate_batch
from llama.inference.sampling import Sampling
from llama.model.transformer import Transformer
from llama.posttraining.dpo import reward_of, token_logps
from llama.posttraining.evaluate import plain_prompt, prompt_ids
from llama.posttraining.tasks import Problem, Task
from llama.tokenizers.tokenizer import Tokenizer

__all__ = ["Rollout", "rollout", "flat_groups", "informative_groups", "group_advantages", "reinforce_loss",
           "clipped_surrogate", "k3_kl", "masked_mean", "grpo_loss", "rl_step"]


def _check_group_size(group_size: object) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"a group needs at least 2 replies, got group_size={group_size!r}: a reply alone has no "
                         "group mean to be compared with, so its advantage is always 0")


# --8<-- [start:rollout]
@dataclass(frozen=True)
class Rollout:
    """Groups of sampled replies, their rewards, and what the policy that sampled them thought of each token.

    Rows ``i * G`` to ``i * G + G - 1`` are the group of ``problems[i]``.

    Attributes:
        problems: the ``n`` problems.
        replies: the ``n * G`` replies' texts, cut before the stop string (what the grader read).
        tokens: ``[n * G, s]`` prompt then reply tokens (the stop string's tokens included), right padded.
        completion_mask: ``[n * G, s]`` bool, ``True`` at the reply's tokens.
        rewards: ``[n, G]`` the reward of each reply.
        old_logps: ``[n * G, s - 1]`` :func:`~llama.posttraining.dpo.token_logps` of the sampling policy, no graph.
    """

    problems: list[Problem]
    replies: list[str]
    tokens: torch.Tensor
    completion_mask: torch.Tensor
    rewards: torch.Tensor
    old_logps: torch.Tensor


def _cut(tokenizer: Tokenizer, ids: list[int], stop: Sequence[str]) -> tuple[str, list[int]]:
    """The text before the first stop string, and the fewest ids whose text contains it (all ids if none does)."""
    text = tokenizer.decode(ids)
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=None)
    if cut is None:
        return text, ids
    end = next(j for j in range(1, len(ids) + 1) if any(s and s in tokenizer.decode(ids[:j]) for s in stop))
    return text[:cut], ids[:end]


def rollout(model: Transformer, tokenizer: Tokenizer, task: Task, problems: Sequence[Problem], group_size: int,
            max_new_tokens: int, *, temperature: float = 1.0, seed: int | None = None,
            reward: Callable[[str, Problem], float] | None = None,
            format_prompt: Callable[[str], str] = plain_prompt, stop: Sequence[str] = ("\n\n",)) -> Rollout:
    """Sample ``group_size`` replies to each problem in one batch, grade them, and score their tokens.

    A reply ends at the first ``stop`` string (its tokens are kept, so the policy learns to end
    there too), at the tokenizer's EOS (kept), or after ``max_new_tokens``. At temperature 1 the
    replies are drawn from the policy itself, as the policy gradient assumes.

    Args:
        model: the policy that samples.
        tokenizer: its tokenizer.
        task: the task whose grader gives the rewards.
        problems: the problems, one group each.
        group_size: $G$, replies per problem, at least 2.
        max_new_tokens: the longest reply, in tokens.
        temperature: the sampling temperature (1: the policy's own distribution).
        seed: the seed of the sampling (``None``: PyTorch's global random state).
        reward: a reward function ``(reply, problem) -> float`` instead of the task's grade.
        format_prompt: turns a prompt into the model's input text (or its ids: :func:`~llama.posttraining.evaluate.prompt_ids`).
        stop: strings that end a reply.

    Returns:
        The :class:`Rollout`.

    Raises:
        ValueError: ``group_size < 2``, no problems, ``max_new_tokens < 1``, a prompt that with
            ``max_new_tokens`` would outgrow the model's context, or a reward function that fails.
    """
    _check_group_size(group_size)
    if not problems:
        raise ValueError("no problems to sample replies for")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    prompts = [prompt_ids(tokenizer, format_prompt, p.prompt) for p in problems]
    limit = model.config.max_seq_len
    for problem, ids in zip(problems, prompts):
        if len(ids) + max_new_tokens > limit:
            raise ValueError(f"replies to {problem.prompt!r} could outgrow the context: {len(ids)} prompt tokens + "
                             f"max_new_tokens={max_new_tokens} > max_seq_len={limit}; ask for at most "
                             f"{limit - len(ids)} new tokens")
    eos = {tokenizer.eos_id} if tokenizer.eos_id >= 0 else set()
    drawn = generate_batch(model, [ids for ids in prompts for _ in range(group_size)], max_new_tokens,
                           Sampling(temperature=temperature, stop_ids=eos, seed=seed))
    texts, rows, rewards = [], [], []
    for j, ids in enumerate(drawn):
        problem, prompt = problems[j // group_size], prompts[j // group_size]
        text, kept = _cut(tokenizer, ids, stop)
        if eos and len(kept) == len(ids) < max_new_tokens:  # the loop stopped at EOS: the policy chose it
            kept = kept + [tokenizer.eos_id]
        texts.append(text)
        rows.append((prompt, kept))
        rewards.append(reward_of(task, problem, text, reward))
    device = model.tok_embeddings.weight.device
    width = max(len(p) + len(r) for p, r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for i, (prompt, reply) in enumerate(rows):
        tokens[i, :len(prompt) + len(reply)] = torch.tensor(prompt + reply)
        mask[i, len(prompt):len(prompt) + len(reply)] = True
    with torch.no_grad():
        old = token_logps(model, tokens)
    return Rollout(list(problems), texts, tokens, mask,
                   torch.tensor(rewards, dtype=torch.float32, device=device).view(len(problems), group_size), old)
# --8<-- [end:rollout]


# --8<-- [start:advantages]
def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """Each reward against its own group: $(r - \\text{mean}) / (\\text{std} + \\epsilon)$, or $r - \\text{mean}$.

    The std is the unbiased one (divided by $G - 1$), as TRL's GRPO computes it; ``eps`` keeps a
    group whose rewards are all equal at advantage 0 rather than 0/0.

    Args:
        rewards: ``[n, G]``, a row per group.
        eps: added to the std.
        scale: divide by the std (GRPO); ``False`` subtracts the mean only (REINFORCE with a baseline).

    Returns:
        ``[n, G]`` advantages.

    Raises:
        ValueError: ``rewards`` is not ``[n, G]`` with ``G >= 2``.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [n, G], a row per group, got shape {tuple(rewards.shape)}")
    _check_group_size(rewards.size(1))
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps) if scale else centred
# --8<-- [end:advantages]


# --8<-- [start:reinforce]
def reinforce_loss(logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""REINFORCE: $-\frac{1}{N}\sum_i A_i \log\pi(y_i|x_i)$, whose gradient is the policy-gradient estimate.

    $\nabla_\theta E[r] = E[r\,\nabla_\theta \log\pi(y|x)]$: a sampled reply's log-probability,
    pushed up in proportion to its advantage. $\log\pi(y|x)$ is the sum over the reply's tokens.

    Args:
        logps: ``[N, T]`` per-token log-probabilities under the policy (with a graph).
        advantages: ``[N]`` one per reply (a reward, or a reward minus a baseline).
        mask: ``[N, T]`` bool, ``True`` at the reply's tokens.

    Returns:
        The scalar loss.
    """
    return -(advantages * logps.masked_fill(~mask, 0.0).sum(-1)).mean()
# --8<-- [end:reinforce]


# --8<-- [start:grpo]
def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float) -> torch.Tensor:
    r"""PPO's clipped objective $\min(\rho A, \text{clip}(\rho, 1-\epsilon, 1+\epsilon) A)$, to be maximised.

    Where the ratio has moved past the clip in the direction the advantage rewards, the clipped
    term is the smaller and is constant: its gradient is 0, so one rollout cannot push a token's
    probability further than $1 \pm \epsilon$ times where the sampling policy had it.
    """
    return torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    r"""Schulman's k3 estimator of $KL(\pi \| \pi_{ref})$ per token: $e^{d} - d - 1$ with $d = \log\pi_{ref} - \log\pi$.

    Never negative ($e^d \ge 1 + d$), and unbiased when the tokens are sampled from $\pi$:
    $E_\pi[e^d] = \sum \pi \cdot \pi_{ref}/\pi = 1$, so its mean is $E_\pi[-d]$, the KL itself.
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """The mean of ``x [N, T]`` over the masked tokens: ``"token"``, every token weighs the same;
    ``"sequence"``, each reply's tokens are averaged first, then the replies.

    Raises:
        ValueError: ``level`` is neither.
    """
    x = x.masked_fill(~mask, 0.0)
    if level == "token":
        return x.sum() / mask.sum().clamp(min=1)
    if level == "sequence":
        return (x.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float = 0.2, kl_beta: float = 0.0, ref_logps: torch.Tensor | None = None,
              level: str = "sequence") -> torch.Tensor:
    r"""GRPO's loss: the negated clipped surrogate of every reply token, plus $\beta$ times its k3 KL, averaged.

    Args:
        logps: ``[N, T]`` per-token log-probabilities under the policy being trained (with a graph).
        old_logps: ``[N, T]`` the same under the policy that sampled the replies (no graph).
        advantages: ``[N]``, one per reply (:func:`group_advantages`, flattened).
        mask: ``[N, T]`` bool, ``True`` at the reply's tokens.
        clip_eps: $\epsilon$ of the clip.
        kl_beta: weight of the KL term (0: none).
        ref_logps: ``[N, T]`` under the reference; needed when ``kl_beta > 0``.
        level: ``"sequence"`` (each reply's mean, then the mean of replies: the GRPO paper) or
            ``"token"`` (one mean over all tokens: DAPO).

    Returns:
        The scalar loss.

    Raises:
        ValueError: ``kl_beta > 0`` without ``ref_logps``, negative ``clip_eps`` or ``kl_beta``, or an
            unknown ``level``.
    """
    if clip_eps < 0 or kl_beta < 0:
        raise ValueError(f"clip_eps and kl_beta must be >= 0, got clip_eps={clip_eps}, kl_beta={kl_beta}")
    ratio = torch.exp(logps - old_logps)                                    # rho, per token
    per_token = -clipped_surrogate(ratio, advantages[:, None], clip_eps)
    if kl_beta > 0:
        if ref_logps is None:
            raise ValueError(f"kl_beta={kl_beta} needs the reference's log-probabilities (ref_logps)")
        per_token = per_token + kl_beta * k3_kl(logps, ref_logps)
    return masked_mean(per_token, mask, level)
# --8<-- [end:grpo]


# --8<-- [start:step]
def rl_step(policy: Transformer, batch: Rollout, optimizer: torch.optim.Optimizer, *, method: str = "grpo",
            clip_eps: float = 0.2, kl_beta: float = 0.0, reference: Transformer | None = None,
            level: str = "sequence", eps: float = 1e-4) -> dict[str, float]:
    """One optimizer step of GRPO or REINFORCE on a rollout.

    ``"grpo"``: advantages scaled by each group's std, the clipped surrogate. ``"reinforce"``: the
    group mean as baseline, no scaling, no clip. Either may add ``kl_beta`` times the k3 KL to
    ``reference``, averaged at ``level`` like the rest.

    Args:
        policy: the model being trained (its parameters are ``optimizer``'s).
        batch: the rollout (sampled by ``policy`` before this step, or a few steps before).
        optimizer: the optimizer of ``policy``.
        method: ``"grpo"`` or ``"reinforce"``.
        clip_eps: $\\epsilon$ of the clip (:func:`grpo_loss`).
        kl_beta: weight of the KL term (0: none).
        level: ``"sequence"`` or ``"token"`` averaging (:func:`masked_mean`).
        reference: the frozen model of the KL term (:func:`~llama.posttraining.dpo.frozen_copy`).
        eps: added to each group's std.

    Returns:
        ``loss``, ``reward`` (mean), ``kl`` (mean k3, 0 without a reference), ``clipped`` (share of
        reply tokens whose ratio is outside the clip) and ``flat_groups`` (groups whose rewards are
        all equal, which teach nothing).

    Raises:
        ValueError: an unknown ``method``, ``kl_beta > 0`` without a ``reference``; the errors of :func:`grpo_loss`.
    """
    if method not in ("grpo", "reinforce"):
        raise ValueError(f"method must be 'grpo' or 'reinforce', got {method!r}")
    if kl_beta > 0 and reference is None:
        raise ValueError(f"kl_beta={kl_beta} needs a reference model: pass reference=frozen_copy(policy) made "
                         "before training, or kl_beta=0")
    advantages = group_advantages(batch.rewards, eps, scale=method == "grpo").flatten()
    mask = batch.completion_mask[:, 1:]
    logps = token_logps(policy, batch.tokens)
    ref = None
    if reference is not None:
        with torch.no_grad():
            ref = token_logps(reference, batch.tokens)
    if method == "grpo":
        loss = grpo_loss(logps, batch.old_logps, advantages, mask, clip_eps, kl_beta, ref, level)
    else:
        loss = reinforce_loss(logps, advantages, mask)
        if kl_beta > 0:
            loss = loss + kl_beta * masked_mean(k3_kl(logps, ref), mask, level)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    ratio = torch.exp(logps.detach() - batch.old_logps)
    return {"loss": loss.item(), "reward": batch.rewards.mean().item(),
            "kl": 0.0 if ref is None else masked_mean(k3_kl(logps.detach(), ref), mask, level).item(),
            "clipped": ((ratio - 1).abs() > clip_eps)[mask].float().mean().item(),
            "flat_groups": int(flat_groups(batch.rewards).sum())}
# --8<-- [end:step]


# --8<-- [start:informative]
def flat_groups(rewards: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: the groups of ``rewards`` (``[n, G]``) whose replies all got the same reward."""
    return rewards.amax(1) == rewards.amin(1)


def informative_groups(batch: Rollout, limit: int) -> Rollout:
    """The first ``limit`` groups of ``batch`` whose replies got different rewards (DAPO's dynamic sampling).

    A group whose replies all got the same reward has advantage 0 at every token: it adds nothing
    to the gradient, only to the time of the step. A model that is usually right when sampling
    makes such groups most of a batch; drawing more problems than a step trains on and
    keeping the groups that differ gives every step something to learn from.

    Args:
        batch: a :func:`rollout`.
        limit: the most groups to keep.

    Returns:
        A :class:`Rollout` of those groups, its padding trimmed to its longest row; the first
        ``limit`` groups of ``batch`` when no group's rewards differ.
    """
    group_size = batch.rewards.size(1)
    differ = (~flat_groups(batch.rewards)).nonzero().flatten().tolist()
    keep = (differ or list(range(len(batch.problems))))[:limit]
    rows = [i * group_size + j for i in keep for j in range(group_size)]
    mask = batch.completion_mask[rows]
    width = int(mask.any(0).nonzero().max()) + 1  # a reply follows its prompt: its last token ends the row
    return Rollout([batch.problems[i] for i in keep], [batch.replies[r] for r in rows], batch.tokens[rows, :width],
                   mask[:, :width], batch.rewards[keep], batch.old_logps[rows, :width - 1])
# --8<-- [end:informative]
