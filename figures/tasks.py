"""Figures of the tasks and evaluation chapter, drawn with ``llama.posttraining.evaluate`` at build time (see hooks/figures.py)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt

from llama.posttraining.evaluate import pass_at_k


def expected(estimate, n: int, p: float) -> float:
    """The mean of ``estimate(c)`` when ``c`` of ``n`` samples are correct, each with probability ``p``."""
    return sum(math.comb(n, c) * p**c * (1 - p) ** (n - c) * estimate(c) for c in range(n + 1))


def pass_at_k_curves():
    """pass@k against k for a few per-problem success rates: the truth, the unbiased estimator's mean
    (from n = 20 samples) and the plug-in estimator's mean."""
    n, ks = 20, range(1, 21)
    fig, ax = plt.subplots(figsize=(7, 3.8), facecolor="white")
    for p, color in ((0.05, "tab:blue"), (0.2, "tab:orange"), (0.5, "tab:green")):
        ax.plot(ks, [1 - (1 - p) ** k for k in ks], color=color, linewidth=1.2, label=f"$p = {p}$: $1 - (1-p)^k$")
        ax.plot(ks, [expected(lambda c: pass_at_k(n, c, k), n, p) for k in ks], "o", color=color, markersize=4)
        ax.plot(ks, [expected(lambda c: 1 - (1 - c / n) ** k, n, p) for k in ks], "--", color=color, linewidth=1)
    ax.plot([], [], "o", color="grey", markersize=4, label=f"mean of the unbiased estimate, n = {n}")
    ax.plot([], [], "--", color="grey", label=r"mean of the plug-in $1 - (1 - c/n)^k$")
    ax.set_xlabel("k (replies allowed per problem)")
    ax.set_ylabel("pass@k")
    ax.set_xticks([1, 5, 10, 15, 20])
    ax.set_ylim(0, 1.02)
    ax.set_title("The unbiased estimator is right on average; the plug-in falls short")
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    return fig


FIGURES = {"tasks-pass-at-k.svg": pass_at_k_curves}
