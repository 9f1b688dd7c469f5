"""Figures of the RMSNorm chapter, drawn with ``llama.model.norm`` at build time (see hooks/figures.py)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from llama.model import RMSNorm


def versus_layernorm():
    """One vector with an offset, before normalisation, after LayerNorm and after RMSNorm."""
    dim = 16
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(dim, generator=gen) * 0.6 + 1.5  # mostly positive: a mean of its own
    with torch.no_grad():
        rms = RMSNorm(dim)(x)
    layer = F.layer_norm(x, (dim,))
    fig, ax = plt.subplots(figsize=(7, 3.4), facecolor="white")
    features = torch.arange(dim)
    width = 0.28
    ax.bar(features - width, x, width, label="input $x$")
    ax.bar(features, rms, width, label="RMSNorm: same signs, RMS 1")
    ax.bar(features + width, layer, width, label="LayerNorm: mean removed, std 1")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("feature")
    ax.set_ylabel("value")
    ax.set_xticks(features)
    ax.set_title("RMSNorm rescales; LayerNorm also re-centres")
    ax.legend(fontsize="small", ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    fig.tight_layout()
    return fig


def eps_effect():
    """Output RMS of RMSNorm against input RMS, for the two epsilons found in checkpoints."""
    dim = 256
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(dim, generator=gen)
    direction = direction / direction.pow(2).mean().sqrt()  # RMS exactly 1
    scales = torch.logspace(-5, 1, 61)
    x = scales[:, None] * direction  # one row per input RMS
    fig, ax = plt.subplots(figsize=(7, 3.4), facecolor="white")
    for eps in (1e-5, 1e-6):
        with torch.no_grad():
            out = RMSNorm(dim, eps)(x)
        ax.semilogx(scales, out.pow(2).mean(-1).sqrt(), label=rf"$\epsilon = 10^{{{round(torch.tensor(eps).log10().item())}}}$")
        ax.axvline(eps**0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("RMS of the input vector")
    ax.set_ylabel("RMS of the output")
    ax.set_title(r"$\epsilon$ only matters for inputs with RMS near $\sqrt{\epsilon}$ or below (dotted)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


FIGURES = {
    "norm-vs-layernorm.svg": versus_layernorm,
    "norm-eps.svg": eps_effect,
}
