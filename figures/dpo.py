"""Figures of the preference tuning chapter, drawn with ``llama.posttraining.dpo`` at build time (see hooks/figures.py)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from llama.posttraining.dpo import dpo_loss, neg_log_sigmoid


def loss_and_weight():
    """Left: the DPO loss of one pair against the margin of log-ratios, for several beta. Right: the
    size of its gradient, beta * sigma(-beta * margin), which is how much the pair still teaches."""
    margin = torch.linspace(-40, 40, 401, dtype=torch.float64)
    zero = torch.zeros_like(margin)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4), facecolor="white")
    for beta, color in ((0.05, "tab:blue"), (0.1, "tab:orange"), (0.25, "tab:green"), (0.5, "tab:red")):
        losses = neg_log_sigmoid(beta * margin)              # each pair's loss (dpo_loss is their mean)
        pc = margin.clone().requires_grad_()
        dpo_loss(pc, zero, zero, zero, beta).loss.backward()
        weight = -pc.grad * len(margin)                      # the per-pair gradient, undoing the mean
        left.plot(margin, losses, color=color, label=rf"$\beta = {beta}$")
        right.plot(margin, weight, color=color)
    left.axhline(torch.log(torch.tensor(2.0)).item(), color="grey", linewidth=0.6, linestyle=":")
    left.text(-39, 0.3, "log 2: policy = reference", fontsize="small", color="grey")
    left.set_xlabel(r"margin $(\log\pi_c - \log\mathrm{ref}_c) - (\log\pi_r - \log\mathrm{ref}_r)$")
    left.set_ylabel("DPO loss")
    left.set_ylim(0, 6)
    left.legend(fontsize="small")
    right.set_xlabel("margin (nats)")
    right.set_ylabel(r"$-\partial\,\mathrm{loss} / \partial \log\pi_c = \beta\,\sigma(-\beta m)$")
    right.set_title("a pair ranked right stops teaching", fontsize="medium")
    fig.tight_layout()
    return fig


FIGURES = {"dpo-loss.svg": loss_and_weight}
