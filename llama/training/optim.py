"""The optimizers, written out: AdamW, Muon's orthogonalised update, clipping by global norm, and
the learning-rate schedule.

These are the versions :func:`llama.training.loop.train` runs. ``tests/test_optim.py`` checks each
against PyTorch's own (``torch.optim.AdamW``, ``torch.optim.Muon``,
``torch.nn.utils.clip_grad_norm_``) over many steps on random inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from llama.training.precision import fast_dtype

__all__ = ["lr_at", "AdamW", "Muon", "newton_schulz", "clip_grad_norm", "make_optimizer", "OPTIMIZERS"]

#: The optimizers ``llama train --optimizer`` can name.
OPTIMIZERS = ("adamw", "muon")


# --8<-- [start:lr]
def lr_at(step: int, progress: float, peak: float, warmup_steps: int, min_ratio: float) -> float:
    r"""Learning rate of optimizer step ``step``: linear warm-up times cosine decay.

    $$\eta = \eta_\text{peak}\,\min\!\Big(1, \tfrac{t+1}{T_\text{warm}}\Big)
      \Big(r + (1-r)\,\tfrac{1 + \cos(\pi p)}{2}\Big)$$

    where $p \in [0, 1]$ is the fraction of the run already done (``step / max_steps``, or
    elapsed time over ``max_time`` for a run with a time budget) and $r$ is ``min_ratio``.

    >>> [round(lr_at(s, s / 100, 1.0, 10, 0.1), 3) for s in (0, 9, 50, 100)]
    [0.1, 0.982, 0.55, 0.1]
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    return peak * warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
# --8<-- [end:lr]


# --8<-- [start:adamw]
class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay, one parameter at a time.

    The state of a parameter is PyTorch's (``step``, ``exp_avg``, ``exp_avg_sq``, all float32),
    so a checkpoint of either optimizer loads into the other.

    Args:
        params: parameters, or groups of them (dicts with ``"params"`` and their own settings).
        lr: learning rate.
        betas: decay rates of the two moments.
        eps: added to the root of the second moment.
        weight_decay: decoupled decay, multiplied by ``lr``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, **extra) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **extra))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, p.grad, self.state[p], group)
        return loss

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)       # m: running mean of g
            state["exp_avg_sq"] = torch.zeros_like(p)    # v: running mean of g squared
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        state["step"] += 1
        t = float(state["step"])
        p.mul_(1 - lr * wd)                                          # decoupled: not through m and v
        state["exp_avg"].lerp_(g, 1 - beta1)                         # m = b1 m + (1 - b1) g
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        # m / (1 - b1^t) and v / (1 - b2^t): the averages started at 0, this undoes that bias
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**t))
# --8<-- [end:adamw]


# --8<-- [start:muon]
def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients=(3.4445, -4.7750, 2.0315),
                  eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Approximately the nearest orthogonal matrix to ``g`` ($UV^\top$ of its SVD $USV^\top$).

    Each step applies $X \leftarrow aX + b(XX^\top)X + c(XX^\top)^2X$, an odd polynomial that maps
    every singular value of $X$ through $p(\sigma) = a\sigma + b\sigma^3 + c\sigma^5$ and keeps the
    singular vectors. Scaled so that all $\sigma \le 1$, five steps of this $p$ (steep at 0)
    push them all to roughly 1 (0.7 to 1.2): only matrix products, and rough ones suffice, so
    they run in bfloat16 where the machine computes it natively, in float32 where it would
    emulate it (:func:`llama.training.precision.fast_dtype`).

    Args:
        g: ``[m, n]`` matrix, or ``[k, m, n]``: ``k`` matrices of one shape, each orthogonalised
            on its own but by one batched product per step (fewer, larger calls: faster).
        dtype: the products' dtype; ``None`` is :func:`~llama.training.precision.fast_dtype` of ``g``'s device.

    Returns:
        ``g``'s shape, in that dtype, each matrix's singular values near 1.
    """
    a, b, c = coefficients
    x = g.to(dtype or fast_dtype(g.device))
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT                                        # X X^T is then the smaller Gram matrix
    # Frobenius norm >= spectral norm: all sigma <= 1
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    fma = torch.addmm if x.dim() == 2 else torch.baddbmm  # (b)addmm(C, A, B, beta, alpha) = beta C + alpha A B
    for _ in range(steps):
        gram = x @ x.mT
        x = fma(x, fma(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a X + (b G + c G G) X
    return x.mT if tall else x


class Muon(AdamW):
    """Muon for the groups marked ``muon=True`` (the 2-D weights of the blocks), AdamW for the
    others (embedding, output head, norm gains).

    A Muon step keeps a momentum of the gradients, orthogonalises it (:func:`newton_schulz`), and
    moves each weight matrix by that, scaled by $\\sqrt{\\max(1, m/n)}$ for an ``[m, n]`` one; the
    decay is decoupled as in AdamW. This is ``torch.optim.Muon``'s update (which orthogonalises in
    bfloat16 everywhere; this one in float32 where bfloat16 would be emulated).

    Args:
        params: parameters, or groups of them; a group with ``muon=False`` gets AdamW.
        lr: learning rate (a group's own serves whichever update it gets).
        betas: AdamW's moment decays, for the AdamW groups.
        eps: AdamW's epsilon.
        weight_decay: decoupled decay, multiplied by ``lr``, for both kinds.
        momentum: decay of Muon's momentum.
        nesterov: step along the gradient mixed with the momentum (a look ahead).
        ns_steps: Newton-Schulz iterations.
    """

    def __init__(self, params, lr: float = 0.02, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, momentum=momentum, nesterov=nesterov,
                         ns_steps=ns_steps, muon=True)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not group["muon"]:
                for p in params:
                    self.update(p, p.grad, self.state[p], group)  # AdamW's
                continue
            # Matrices of one shape are orthogonalised together: one batched product per shape
            # and step instead of one per matrix (a sharded DTensor goes alone, as FSDP holds it).
            same_shape: dict[Any, list[torch.Tensor]] = {}
            for p in params:
                same_shape.setdefault(p.shape if type(p.data) is torch.Tensor else id(p), []).append(p)
            for ps in same_shape.values():
                directions = [self.direction(p, p.grad, self.state[p], group) for p in ps]
                if len(ps) > 1:
                    updates = newton_schulz(torch.stack(directions), group["ns_steps"]).unbind()
                else:
                    updates = [newton_schulz(directions[0], group["ns_steps"])]
                for p, update in zip(ps, updates):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * math.sqrt(max(1.0, p.size(0) / p.size(1))))
        return loss

    @staticmethod
    def direction(p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        """Update the momentum of ``p`` with its gradient ``g``; the direction to orthogonalise."""
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        mu = group["momentum"]
        buf = state["momentum_buffer"].lerp_(g, 1 - mu)            # B = mu B + (1 - mu) g
        return g.lerp(buf, mu) if group["nesterov"] else buf        # look one step ahead
# --8<-- [end:muon]


# --8<-- [start:clip]
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    r"""Scale all gradients together by $\min(1, c / (\lVert g \rVert + 10^{-6}))$, where
    $\lVert g \rVert$ is the norm of all of them as one vector: the direction is kept.

    Returns:
        The norm before clipping (a scalar tensor).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)
    return total
# --8<-- [end:clip]


# --8<-- [start:optimizer]
def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   kind: str = "adamw", muon_lr: float = 0.02) -> AdamW:
    """The optimizer of a run: weight decay on the matrices (projections, embedding, head) and
    not on the RMSNorm gains, which are vectors: decaying a gain towards 0 would switch its
    feature off. With ``kind="muon"``, the matrices inside the blocks get Muon at ``muon_lr``;
    the embedding and the head, whose rows are tokens rather than directions of a hidden
    space, stay with AdamW. Each group's ``lr_ratio`` is its peak over ``lr``
    (:func:`llama.training.loop.train_step` sets ``lr * lr_ratio`` at each step), and Muon's decay is
    scaled by the inverse, so every matrix is pulled towards 0 by ``lr * weight_decay`` per step.

    Raises:
        ValueError: ``kind`` is not one of :data:`OPTIMIZERS`.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; choose one of: {', '.join(OPTIMIZERS)}")
    hidden, decay, no_decay = [], [], []
    for name, p in model.named_parameters():  # a tied embedding/head appears once
        if kind == "muon" and p.dim() == 2 and name.startswith("layers."):
            hidden.append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_ratio": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_ratio": 1.0}]
    if kind == "adamw":
        return AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    ratio = muon_lr / lr
    groups = [{"params": hidden, "lr": muon_lr, "lr_ratio": ratio, "weight_decay": weight_decay / ratio, "muon": True},
              *({**g, "muon": False} for g in groups)]
    return Muon(groups, lr=lr, betas=betas, weight_decay=weight_decay)
# --8<-- [end:optimizer]
