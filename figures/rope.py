"""Figures of the RoPE chapter, drawn with ``llama.model.rope`` at build time (see hooks/figures.py)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from llama.model import PRESETS, RopeScaling, apply_rope, apply_rope_half_split, rope_cache, rope_frequencies


def _wavelengths(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    return 2 * math.pi / rope_frequencies(head_dim, theta, scaling)


def frequencies():
    """Wavelength of every pair of a 128-wide head, for Llama 2's and Llama 3's base."""
    fig, ax = plt.subplots(figsize=(7, 3.4), facecolor="white")
    for theta, label in [(10_000.0, "base 10,000 (Llama 2)"), (500_000.0, "base 500,000 (Llama 3)")]:
        ax.semilogy(_wavelengths(128, theta), marker=".", linestyle="none", label=label)
    for context, text, dy in [(4096, "Llama 2 context (4,096)", -10), (8192, "Llama 3 pre-training context (8,192)", 3)]:
        ax.axhline(context, color="grey", linewidth=0.8, linestyle="--")
        ax.annotate(text, (1, context), xytext=(0, dy), textcoords="offset points", fontsize="small", color="grey")
    ax.set_xlabel("pair index $j$ (head width 128)")
    ax.set_ylabel(r"wavelength $2\pi/\theta_j$ (positions)")
    ax.set_title("One full turn takes from 6 to millions of positions")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def rotation():
    """Where one pair ends up at positions 0..24, for a fast, a middle and a slow pair."""
    head_dim, positions = 128, 25
    cos, sin = rope_cache(head_dim, positions)
    fig, ax = plt.subplots(figsize=(5, 5), facecolor="white")
    for j, radius in [(0, 1.0), (16, 0.75), (32, 0.5)]:
        x = torch.zeros(1, positions, 1, head_dim)
        x[..., 2 * j] = radius  # the same vector (radius, 0) in pair j at every position
        pair = apply_rope(x, cos, sin)[0, :, 0, 2 * j : 2 * j + 2]
        theta_j = float(rope_frequencies(head_dim)[j])
        ax.plot(pair[:, 0], pair[:, 1], marker="o", markersize=4, linestyle="none",
                label=rf"pair $j={j}$: $\theta_j={theta_j:.2g}$ rad/position")
        for m in (0, 24) if j else (0, 1, 2, 3):
            ax.annotate(str(m), pair[m], xytext=(4, 2), textcoords="offset points", fontsize="x-small")
    circle = torch.linspace(0, 2 * math.pi, 200)
    for radius in (1.0, 0.75, 0.5):
        ax.plot(radius * circle.cos(), radius * circle.sin(), color="lightgrey", linewidth=0.6, zorder=0)
    ax.set_aspect("equal")
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-1.15, 1.45)
    ax.set_xlabel("first feature of the pair")
    ax.set_ylabel("second feature of the pair")
    ax.set_title("A pair rotated at positions 0 to 24 (numbers: position)")
    ax.legend(loc="upper center", fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def _score_error(scale: torch.Tensor, distances: list[int], samples: int = 500) -> list[float]:
    """Mean |score with the wrong layout - right score| / mean |right score|, per distance."""
    head_dim = scale.numel()
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(samples, 1, 1, head_dim, generator=gen) * scale
    k = torch.randn(samples, 1, 1, head_dim, generator=gen) * scale
    cos, sin = rope_cache(head_dim, max(distances) + 1)
    at_d = cos[distances], sin[distances]  # the query at each distance (one "sequence position" each)
    at_0 = cos[:1], sin[:1]  # the key at position 0
    q_many = q.expand(samples, len(distances), 1, head_dim)
    right = (apply_rope(q_many, *at_d) * apply_rope(k, *at_0)).sum(-1)
    wrong = (apply_rope_half_split(q_many, *at_d) * apply_rope_half_split(k, *at_0)).sum(-1)
    return ((wrong - right).abs().mean(0) / right.abs().mean(0)).squeeze(-1).tolist()


def layout_mismatch():
    """Error of attention scores when Meta-layout weights meet half-split RoPE, by distance."""
    head_dim = 128
    distances = sorted({round(10 ** (e / 8)) for e in range(0, 33)})
    spread = torch.ones(head_dim)
    slow = torch.full((head_dim,), 0.05)
    slow[3 * head_dim // 4 :] = 1.0  # energy in the slowest quarter of Meta's pairs
    fig, ax = plt.subplots(figsize=(7, 3.4), facecolor="white")
    ax.semilogx(distances, _score_error(spread, distances), marker=".", label="energy spread over all pairs")
    ax.semilogx(distances, _score_error(slow, distances), marker=".", label="energy in the slowest quarter of pairs")
    ax.axvline(20, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("distance $m-n$ between query and key (positions)")
    ax.set_ylabel("relative error of $q_m \\cdot k_n$")
    ax.set_title("Wrong RoPE layout: exact at distance 0, worse with distance")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def llama31_scaling():
    """Wavelengths before and after Llama 3.1 scaling, for Llama 3.1 8B and Llama 3.2 1B."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True, facecolor="white")
    panels = [("llama3.1-8b", [8.0]), ("llama3.2-1b", [8.0, 32.0])]
    for ax, (name, factors) in zip(axes, panels):
        cfg = PRESETS[name]
        scaling = cfg.rope_scaling
        L = scaling.original_max_position_embeddings
        ax.axhspan(L / scaling.high_freq_factor, L / scaling.low_freq_factor, color="0.92", zorder=0)
        ax.semilogy(_wavelengths(cfg.head_dim, cfg.rope_theta), "k.", markersize=4, label="no scaling")
        for factor in factors:
            s = RopeScaling(factor, scaling.low_freq_factor, scaling.high_freq_factor, L)
            right = factor == scaling.factor
            ax.semilogy(_wavelengths(cfg.head_dim, cfg.rope_theta, s), ".", markersize=4,
                        label=f"factor {factor:g}" + (" (its config)" if right else " (wrong for this model)"))
        ax.axhline(L, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(f"{name}: head width {cfg.head_dim}")
        ax.set_xlabel("pair index $j$")
        ax.legend(loc="upper left", fontsize="small")
    axes[0].set_ylabel("wavelength (positions)")
    axes[0].annotate("blended band", (1, 2048 * 1.25), fontsize="small", color="grey")
    fig.tight_layout()
    return fig


FIGURES = {
    "rope-frequencies.svg": frequencies,
    "rope-rotation.svg": rotation,
    "rope-layout-mismatch.svg": layout_mismatch,
    "rope-llama31-scaling.svg": llama31_scaling,
}
