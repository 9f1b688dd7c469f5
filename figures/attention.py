"""Figures of the Attention and Grouped-query attention chapters, drawn from ``llama`` code.

See hooks/figures.py: every function in ``FIGURES`` returns a matplotlib Figure and is called at
build time, so the pictures always show what the library computes now.

The attention-weight heatmaps use the real pretrained ``stories260K`` model when
:func:`llama.data.sources.find_data` finds it (``llama download stories260K`` fetches it); otherwise a
randomly initialised model of the same size, seeded.
The figure title says which one was drawn.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from llama.data import find_data
from llama.formats import load_model
from llama.model import PRESETS, Transformer, apply_rope, causal_mask, count_parameters, kv_cache_bytes
from llama.model.reference import attention, repeat_kv

MASK_CMAP = ListedColormap(["#f2f2f2", "#3949ab"])  # not allowed / allowed (indigo, the site colour)
MASKED = "#9e9e9e"  # -inf cells: a grey that no score colour of RdBu_r (white at 0) can be mistaken for
BOS = 1  # llama2.c's begin-of-sequence id


# --- helpers ------------------------------------------------------------------------------------


def pretrained_or_random() -> tuple[Transformer, str]:
    """The pretrained stories260K model if it can be loaded, else a seeded random one of its size."""
    path = find_data("stories260K.bin")
    if path is not None:
        return load_model(path).eval(), "stories260K, pretrained"
    torch.manual_seed(0)
    return Transformer(PRESETS["stories260K"]).eval(), "stories260K size, random weights (seed 0)"


@torch.no_grad()
def greedy_tokens(model: Transformer, n: int) -> torch.Tensor:
    """``[1, n]`` token ids: BOS followed by the model's own greedy continuation."""
    tokens = torch.tensor([[BOS]])
    while tokens.size(1) < n:
        next_id = model(tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_id], dim=1)
    return tokens


@torch.no_grad()
def attention_maps(model: Transformer, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled scores and attention weights of every layer and head, from the model's own modules.

    Returns:
        ``(scores, weights)``, each ``[n_layers, n_heads, s, s]`` for the first sequence;
        ``scores`` are $QK^\\top/\\sqrt{d}$ before the mask.
    """
    b, s = tokens.shape
    cos, sin = model.rope_cos[:s], model.rope_sin[:s]
    h = model.tok_embeddings(tokens)
    all_scores, all_weights = [], []
    for layer in model.layers:
        attn = layer.attention
        x = layer.attention_norm(h)
        q = apply_rope(attn.wq(x).view(b, s, attn.n_heads, attn.head_dim), cos, sin)
        k = apply_rope(attn.wk(x).view(b, s, attn.n_kv_heads, attn.head_dim), cos, sin)
        k = repeat_kv(k, attn.n_heads // attn.n_kv_heads)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [b, n_h, s, h_d]
        all_scores.append((q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim))[0])
        # attention() with the identity as values returns the weights themselves.
        all_weights.append(attention(q, k, torch.eye(s).expand(b, attn.n_heads, s, s), causal_mask(s))[0])
        h = layer(h, model.rope_cos[:s], model.rope_sin[:s], torch.arange(s))
    return torch.stack(all_scores), torch.stack(all_weights)


@contextmanager
def one_thread():
    """Run tiny tensor work on one thread: on a busy machine the thread pool only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _heatmap(ax, matrix, title, cmap="viridis", **kw):
    im = ax.imshow(matrix.numpy(), cmap=cmap, interpolation="nearest", **kw)
    ax.set_title(title, fontsize="medium")
    return im


# --- Attention chapter --------------------------------------------------------------------------


def causal_mask_figure():
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6), gridspec_kw={"width_ratios": [8, 8]})
    panels = [
        (causal_mask(8), "causal_mask(8)\n8 queries, 8 keys"),
        (causal_mask(2, start_pos=6), "causal_mask(2, start_pos=6)\n2 new queries after 6 cached keys"),
    ]
    for ax, (mask, title) in zip(axes, panels):
        s_q, s_k = mask.shape
        ax.imshow(mask.int().numpy(), cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        start = s_k - s_q
        ax.set_xticks(range(s_k))
        ax.set_yticks(range(s_q), [str(start + i) for i in range(s_q)])
        for i in range(s_q):
            for j in range(s_k):
                ax.text(j, i, "✓" if mask[i, j] else "", ha="center", va="center", color="white", fontsize=9)
    fig.tight_layout()
    return fig


@one_thread()
def scaling_figure():
    """How peaked softmax gets with and without the 1/sqrt(d) factor, as the head width grows."""
    widths = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    n_keys, n_queries = 16, 2000
    gen = torch.Generator().manual_seed(0)
    eye = torch.eye(n_keys)
    scaled, unscaled = [], []
    for d in widths:
        q = torch.randn(n_queries, d, generator=gen)
        k = torch.randn(n_keys, d, generator=gen)
        # attention() divides by sqrt(d); multiplying q by sqrt(d) first undoes that.
        scaled.append(attention(q, k, eye).max(-1).values.mean().item())
        unscaled.append(attention(q * math.sqrt(d), k, eye).max(-1).values.mean().item())
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(widths, unscaled, "o-", label=r"softmax$(q\cdot k)$, no scaling")
    ax.plot(widths, scaled, "s-", label=r"softmax$(q\cdot k/\sqrt{d})$")
    ax.axhline(1 / n_keys, color="gray", ls=":", lw=1)
    ax.text(widths[0], 1 / n_keys + 0.02, f"uniform: 1/{n_keys}", color="gray", fontsize="small")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("head width d (random unit-variance queries and keys)")
    ax.set_ylabel(f"largest weight of a query\n(mean over {n_queries}, {n_keys} keys)")
    ax.legend(frameon=False, loc="center right")
    fig.tight_layout()
    return fig


@one_thread()
def weights_pipeline_figure(layer: int = 1, head: int = 2, n_tokens: int = 16):
    """One head of the model: raw scores, masked scores, softmax weights."""
    model, name = pretrained_or_random()
    tokens = greedy_tokens(model, n_tokens)
    scores, weights = attention_maps(model, tokens)
    s, w = scores[layer, head], weights[layer, head]
    # -inf is drawn as NaN in its own colour: in RdBu_r white means a score of 0.
    masked = s.masked_fill(~causal_mask(n_tokens), float("nan"))
    scores_cmap = plt.get_cmap("RdBu_r").with_extremes(bad=MASKED)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.9), layout="constrained")
    lim = s.abs().max().item()
    _heatmap(axes[0], s, r"1. scores $QK^\top/\sqrt{d}$", cmap="RdBu_r", vmin=-lim, vmax=lim)
    im = _heatmap(axes[1], masked, r"2. mask: future set to $-\infty$", cmap=scores_cmap, vmin=-lim, vmax=lim)
    axes[1].legend(handles=[Patch(color=MASKED, label=r"$-\infty$ (masked)")], loc="upper right",
                   fontsize="small", framealpha=1)
    fig.colorbar(im, ax=axes[:2], shrink=0.8, label="score")
    im = _heatmap(axes[2], w, "3. softmax of each row", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="weight")
    for ax in axes:
        ax.set_xlabel("key position")
    axes[0].set_ylabel("query position")
    fig.suptitle(f"{name}: layer {layer}, head {head}, on its own greedy text from BOS", fontsize="medium")
    return fig


@one_thread()
def all_heads_figure(n_tokens: int = 24):
    """Attention weights of every head, in the first and the last layer.

    The title gives, over all rows but the first (which has one key) of all heads and layers, the
    mean weight of a row's two largest cells and of position 0, so the text can refer to numbers
    that are always those of the model drawn.
    """
    model, name = pretrained_or_random()
    tokens = greedy_tokens(model, n_tokens)
    _, weights = attention_maps(model, tokens)
    rows = weights[:, :, 1:, :]
    top2 = rows.topk(2, dim=-1).values.sum(-1).mean().item()
    first = rows[..., 0].mean().item()
    uniform = sum(1 / (i + 1) for i in range(1, n_tokens)) / (n_tokens - 1)  # position 0's share if flat
    layers = [0, weights.size(0) - 1]
    n_heads = weights.size(1)
    # No tokenizer for stories260K is available, so tokens are labelled by their ids, listed below.
    ticks = [0, 8, 16, n_tokens - 1]
    labels = ["BOS" if t == 0 else str(t) for t in ticks]
    fig, axes = plt.subplots(len(layers), n_heads, figsize=(1.45 * n_heads, 1.6 * len(layers) + 1.3))
    for r, layer in enumerate(layers):
        for hd in range(n_heads):
            ax = axes[r, hd]
            ax.imshow(weights[layer, hd].numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks(ticks, labels if r == len(layers) - 1 else [], fontsize=6)
            ax.set_yticks(ticks, labels if hd == 0 else [], fontsize=6)
            if r == 0:
                ax.set_title(f"head {hd}", fontsize="small")
            if hd == 0:
                ax.set_ylabel(f"layer {layer}\nquery position", fontsize="small")
            if r == len(layers) - 1:
                ax.set_xlabel("key position", fontsize="small")
    fig.suptitle(f"Attention weights, {name} ({n_tokens} tokens): a row's two largest weights hold "
                 f"{top2:.0%} of it on average;\nposition 0 (BOS) gets {first:.0%} (a flat row would give it "
                 f"{uniform:.0%})", fontsize="medium")
    ids = " ".join(str(i) for i in tokens[0].tolist())
    fig.text(0.5, 0.01, f"token ids at positions 0 to {n_tokens - 1}: {ids}", ha="center", fontsize="small")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


# --- Grouped-query attention chapter ------------------------------------------------------------


def head_sharing_figure(n_heads: int = 8):
    """Which key/value head each query head reads, computed by repeat_kv, for MHA, GQA and MQA."""
    variants = [(n_heads, "MHA"), (2, "GQA"), (1, "MQA")]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.6), layout="constrained")
    for ax, (n_kv, label) in zip(axes, variants):
        # Tag each kv head with its index, repeat, and read which index each query head got.
        kv_ids = torch.arange(n_kv, dtype=torch.float32).reshape(1, 1, n_kv, 1)
        source = repeat_kv(kv_ids, n_heads // n_kv).flatten().long().tolist()
        group = n_heads / n_kv
        kv_x = [(g + 0.5) * group - 0.5 for g in range(n_kv)]  # each kv head under its group
        for h, g in enumerate(source):
            ax.plot([h, kv_x[g]], [1, 0], color="#9fa8da", lw=1.2, zorder=1)
        ax.scatter(range(n_heads), [1] * n_heads, s=140, color="#3949ab", zorder=2)
        ax.scatter(kv_x, [0] * n_kv, s=140, marker="s", color="#ef6c00", zorder=2)
        ax.set_title(f"{label}: n_kv_heads = {n_kv}", fontsize="medium")
        ax.set_xlim(-0.7, n_heads - 0.3)
        ax.set_ylim(-0.35, 1.35)
        ax.set_yticks([0, 1], ["key/value\nheads", "query\nheads"])
        ax.set_xticks([])
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
    return fig


def kv_cache_memory_figure():
    """KV-cache size against context length for Llama 2 7B (MHA) and Llama 3.1 8B (GQA)."""
    lengths = [2**i for i in range(10, 18)]  # 1K .. 128K
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for name, style in [("llama2-7b", "o-"), ("llama3.1-8b", "s-"), ("llama3.2-1b", "^-")]:
        cfg = PRESETS[name]
        gib = [kv_cache_bytes(cfg, n) / 2**30 for n in lengths]
        kind = "MHA" if cfg.n_kv_heads == cfg.n_heads else "GQA"
        (line,) = ax.plot(lengths, gib, style, label=f"{name} ({kind}: {cfg.n_kv_heads} kv heads × {cfg.n_layers} layers)")
        # Dotted past the context the model was trained for (Llama 2: 4K).
        beyond = [i for i, n in enumerate(lengths) if n >= cfg.max_seq_len]
        if beyond and beyond[0] < len(lengths) - 1:
            i = beyond[0]
            line.set_data(lengths[: i + 1], gib[: i + 1])
            ax.plot(lengths[i:], gib[i:], ":", color=line.get_color(), marker=style[0], mfc="none")
    weights = count_parameters(PRESETS["llama2-7b"]) * 2 / 2**30
    ax.axhline(weights, color="gray", ls="--", lw=1)
    ax.text(lengths[0], weights * 1.15, f"weights of llama2-7b in bf16: {weights:.1f} GiB", color="gray",
            fontsize="small", ha="left", va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(lengths, [f"{n // 1024}K" for n in lengths])
    ticks = [2.0**i for i in range(-4, 7, 2)]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens, batch of 1)")
    ax.set_ylabel("KV cache, GiB (bf16)")
    ax.legend(frameon=False, title="dotted: longer than the context\nthe model was trained for",
              title_fontsize="small", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


FIGURES = {
    "attention-causal-mask.svg": causal_mask_figure,
    "attention-scaling.svg": scaling_figure,
    "attention-weights.svg": weights_pipeline_figure,
    "attention-heads.svg": all_heads_figure,
    "gqa-head-sharing.svg": head_sharing_figure,
    "gqa-kv-cache-memory.svg": kv_cache_memory_figure,
}
