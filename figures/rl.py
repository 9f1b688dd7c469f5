"""Figures of the reinforcement learning chapter, drawn with ``llama.posttraining.rl`` at build time (see hooks/figures.py).

:func:`pipeline_figure` draws the runs of ``python benchmarks/pipeline.py --save``, committed as
``benchmarks/results/pipeline.json``: held-out accuracy after each stage, and the reward curve of RL.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

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


RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "pipeline.json"


def pipeline_figure(result: dict | None = None):
    """Left: held-out greedy accuracy after each stage of the pipeline and of RL from the SFT model,
    a dot per seed and a bar at the median, the median sampled pass@1 (a diamond) and the share of
    greedy replies that show their work (a triangle); right: the mean reward of each ``llama rl``
    step's replies, a line per seed (dotted: RL from the SFT model).

    Args:
        result: ``pipeline.json``'s contents (default: read from :data:`RESULTS`).
    """
    result = result or json.loads(RESULTS.read_text())
    runs, stages = result["runs"], ["base", "sft", "dpo", "rl", "rl_from_sft"]
    labels = ["base\n(plain text)", "SFT", "DPO", "RL", "RL from\nSFT"]
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(10, 3.6), facecolor="white")
    medians = [100 * statistics.median(r["scores"][s]["accuracy"] for r in runs) for s in stages]
    ax.bar(range(5), medians, color=["#bbbbbb", "#b9d3ee", "#f4a259", "tab:green", "#9ccc9c"], width=0.6)
    for i, stage in enumerate(stages):
        values = [100 * r["scores"][stage]["accuracy"] for r in runs]
        ax.plot([i] * len(values), values, "o", color="black", markersize=3.5)
        ax.annotate(f"{medians[i]:.1f}%", (i, medians[i]), textcoords="offset points", xytext=(0, 4), ha="center",
                    fontsize="small")
    sampled = [100 * statistics.median(r["scores"][s]["pass_at_1"] for r in runs) for s in stages]
    ax.plot(range(5), sampled, "D", color="tab:red", markerfacecolor="white", markersize=5,
            label="sampled pass@1 (median), temperature 1")
    work = [100 * statistics.median(r["scores"][s]["work_rate"] for r in runs) for s in stages]
    ax.plot(range(5), work, "^", color="tab:blue", markerfacecolor="white", markersize=5,
            label="greedy replies that show their work (median)")
    ax.set(ylim=(0, 135), yticks=range(0, 101, 20))  # room above the bars for the legend
    ax.legend(frameon=False, fontsize="small", loc="upper left")
    ax.set_xticks(range(5), labels)
    ax.set_ylabel(f"held-out accuracy (% of {runs[0]['held_out']})")
    ax.set_title(f"{result['task']}: median of {len(runs)} seeds (dots: each)", fontsize="medium")
    for r, color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for key, style, after in (("reward_curve", "-", "DPO"), ("reward_curve_from_sft", ":", "SFT")):
            ax_r.plot(range(1, len(r[key]) + 1), r[key], style, color=color, linewidth=1,
                      label=f"seed {r['seed']}, from {after}")
    ax_r.set(xlabel="llama rl step", ylabel="mean reward of the step's replies", ylim=(0, 1))
    ax_r.set_title("the reward curve", fontsize="medium")
    ax_r.legend(frameon=False, fontsize="x-small", ncol=2, loc="lower right")
    fig.tight_layout()
    return fig


FIGURES = {"rl-clipped-objective.svg": clipped_objective, "rl-pipeline.svg": pipeline_figure}
