"""The training loss, written out: cross-entropy from the log-softmax, with the log-sum-exp trick,
and its gradient, softmax minus one-hot.

:func:`cross_entropy` is what :func:`llama.training.loop.train_step` and :func:`llama.training.loop.evaluate`
call; ``tests/test_loss.py`` checks it, value and gradient, against PyTorch's
``torch.nn.functional.cross_entropy``.
"""

from __future__ import annotations

import torch

__all__ = ["log_sum_exp", "CrossEntropy", "cross_entropy"]


# --8<-- [start:log_sum_exp]
def log_sum_exp(x: torch.Tensor) -> torch.Tensor:
    r"""$\log \sum_j e^{x_j}$ over the last dimension, without overflow.

    ``exp`` of a float32 logit above about 88.7 is infinite, and the sum of many tiny ones can
    round to 0 (whose log is $-\infty$). Subtracting the largest value first changes nothing
    mathematically, $\log\sum_j e^{x_j} = m + \log\sum_j e^{x_j - m}$, but makes every exponent
    $\le 0$ and the largest term exactly 1, so the sum lies in $[1, n]$.

    Args:
        x: ``[..., n]`` scores.

    Returns:
        ``[...]``: the log-sum-exp of each row.

    >>> round(log_sum_exp(torch.tensor([1000.0, 1000.0])).item() - 1000, 3)   # log 2; exp(1000) alone is inf
    0.693
    """
    m = x.amax(dim=-1, keepdim=True)
    return (m + (x - m).exp().sum(dim=-1, keepdim=True).log()).squeeze(-1)
# --8<-- [end:log_sum_exp]


# --8<-- [start:cross_entropy]
class CrossEntropy(torch.autograd.Function):
    r"""Mean (or summed) cross-entropy of rows of logits $z$ against target ids $y$:
    $\ell = \log\sum_j e^{z_j} - z_y$, the negative log-softmax of the target.

    Its gradient needs no autograd graph: $\partial \ell / \partial z_j = \mathrm{softmax}(z)_j -
    [j = y]$, the predicted distribution minus the one-hot target. The forward pass keeps the
    logits; the backward pass forms the softmax from them, shifted by the row's largest value as
    in :func:`log_sum_exp` (``exp(z - lse)`` would lose digits: ``lse`` is in the hundreds for
    confident logits, and its rounding error becomes a relative error of the probability).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, mean: bool) -> torch.Tensor:
        lse = log_sum_exp(logits)                                   # [n]
        picked = logits.gather(1, targets[:, None]).squeeze(1)      # z_y, [n]
        ctx.save_for_backward(logits, targets)
        ctx.scale = 1.0 / logits.size(0) if mean else 1.0
        loss = (lse - picked).sum()
        return loss * ctx.scale if mean else loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets = ctx.saved_tensors
        grad = (logits - logits.amax(dim=1, keepdim=True)).exp_()
        grad /= grad.sum(dim=1, keepdim=True)                       # softmax(z)
        grad.scatter_add_(1, targets[:, None], grad.new_full((grad.size(0), 1), -1.0))  # minus one-hot
        return grad.mul_(grad_out * ctx.scale), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats between ``[b, s, vocab]`` logits and ``[b, s]`` target ids.

    Computed in float32 even when the logits are bfloat16: the log-sum-exp over the vocabulary
    is where low precision hurts most.

    Args:
        logits: ``[b, s, vocab]`` scores, any float dtype.
        targets: ``[b, s]`` token ids in ``[0, vocab)``.
        reduction: ``"mean"`` over the ``b * s`` positions, or ``"sum"``.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: ``reduction`` is neither, or the shapes disagree.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree: "
                         "give [b, s, vocab] logits and [b, s] ids")
    return CrossEntropy.apply(logits.float().flatten(0, -2), targets.flatten(), reduction == "mean")
# --8<-- [end:cross_entropy]
