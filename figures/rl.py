"""Figures of the reinforcement learning chapter, drawn with ``llama.posttraining.rl`` at build time (see hooks/figures.py)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from llama.posttraining.rl import clipped_surrogate


def clipped_objective():
    """PPO/GRPO's clipped surrogate min(rho A, clip(rho, 1 - eps, 1 + eps) A) against the ratio rho,
    for a positive and a negative advantage, with the unclipped rho A dashed."""
    ratio = torch.linspace(0.0, 2.0, 401)
    eps = 0.2
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.3), facecolor="white", sharex=True)
    for ax, advantage, color in ((axes[0], 1.0, "tab:green"), (axes[1], -1.0, "tab:red")):
        a = torch.tensor(advantage)
        ax.plot(ratio, ratio * a, "--", color="grey", linewidth=1, label=r"$\rho A$ (no clip)")
        ax.plot(ratio, clipped_surrogate(ratio, a, eps), color=color, linewidth=2,
                label=r"$\min(\rho A, \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon) A)$")
        for edge in (1 - eps, 1 + eps):
            ax.axvline(edge, color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(f"advantage A = {advantage:+.0f}: " + ("flat past 1 + ε" if advantage > 0 else "flat below 1 - ε"),
                     fontsize="medium")
        ax.set_xlabel(r"ratio $\rho = \pi(y_t) / \pi_{\mathrm{old}}(y_t)$")
        ax.legend(fontsize="small", loc="upper left" if advantage > 0 else "lower left")
    axes[0].set_ylabel("objective (maximised)")
    fig.tight_layout()
    return fig


FIGURES = {"rl-clipped-objective.svg": clipped_objective}
