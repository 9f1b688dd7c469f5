"""Figures of the Home page, drawn from ``llama`` code at build time (see hooks/figures.py)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from llama.model import PRESETS, ModelConfig


def parameter_split(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of a model with this config, by the part of the book that builds them."""
    kv_dim = cfg.n_kv_heads * cfg.head_dim
    attention = cfg.dim * cfg.dim * 2 + cfg.dim * kv_dim * 2  # wq, wo; wk, wv
    feed_forward = 3 * cfg.dim * cfg.hidden_dim  # w1, w2, w3 of SwiGLU
    norms = 2 * cfg.dim  # two RMSNorm weights per block
    embeddings = cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2)
    return {
        "attention": cfg.n_layers * attention,
        "feed-forward": cfg.n_layers * feed_forward,
        "embeddings + output": embeddings,
        "RMSNorm": cfg.n_layers * norms + cfg.dim,
    }


def where_parameters_live():
    names = list(PRESETS)
    splits = [parameter_split(PRESETS[n]) for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    left = [0.0] * len(names)
    for part in splits[0]:
        shares = [s[part] / sum(s.values()) for s in splits]
        ax.barh(names, shares, left=left, label=part)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the model's parameters")
    ax.invert_yaxis()
    ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


FIGURES = {"where-parameters-live.svg": where_parameters_live}
