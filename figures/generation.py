"""Figures of the Generation chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

* ``generation-kv-cache-time.svg``: measured time to produce the token at position t, with the
  KV cache (one position through the model) and without it (all t positions again).
* ``generation-sampling.svg``: one next-token distribution as each sampling rule leaves it.
* ``checkpoints-llama2c-layout.svg`` (Checkpoints chapter): what the bytes of a llama2.c ``.bin``
  hold, block by block, from :func:`llama.formats.llama2c.llama2c_layout`.

Both use the pretrained ``stories260K`` when :func:`llama.data.sources.find_data` finds it
(``llama download stories260K`` fetches it), else a seeded random model of its size; the titles
say which.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import torch
from _models import load_stories260k

from llama.formats import llama2c_layout
from llama.inference import min_p_filter, top_k_filter, top_p_filter
from llama.model import PRESETS


def _best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def kv_cache_time():
    """Time per new token at position t: recompute all t positions, or one position with the cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: thread hand-offs would only add noise
    try:
        model, label = load_stories260k()
        positions = list(range(16, 513, 64))
        tokens = torch.randint(0, model.config.vocab_size, (1, positions[-1]),
                               generator=torch.Generator().manual_seed(0))
        without, with_cache = [], []
        for t in positions:
            without.append(_best_of(lambda: model(tokens[:, :t], last_only=True)))
            model.setup_cache(1, t)
            model(tokens[:, : t - 1])  # prefill the first t - 1 positions
            with_cache.append(_best_of(lambda: model(tokens[:, t - 1: t], input_pos=torch.tensor([t - 1]))))
            model.clear_cache()
    finally:
        torch.set_num_threads(threads)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(positions, [1e3 * s for s in without], "o-", label="no cache: all t positions again")
    ax.plot(positions, [1e3 * s for s in with_cache], "o-", label="KV cache: one position")
    ax.set_xlabel("position t of the new token")
    ax.set_ylabel("milliseconds per token")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Decode time per token ({label}, 1 thread, measured at build time)", fontsize="medium")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


@torch.inference_mode()
def sampling():
    """The next-token distribution after a greedy story prefix, under each sampling rule."""
    model, label = load_stories260k()
    tokens = [1]
    for _ in range(6):
        tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    logits = model(torch.tensor([tokens]))[0, -1]
    top = torch.argsort(logits, descending=True)[:12]
    rules = {
        "T = 1": logits,
        "T = 0.5": logits / 0.5,
        "T = 2": logits / 2.0,
        "top-k, k = 3": top_k_filter(logits, 3),
        "top-p, p = 0.6": top_p_filter(logits, 0.6),
        "min-p, p = 0.2": min_p_filter(logits, 0.2),
    }
    fig, axes = plt.subplots(2, 3, figsize=(8.0, 4.2), sharex=True, sharey=True)
    for ax, (name, z) in zip(axes.flat, rules.items()):
        probs = torch.softmax(z.float(), -1)[top]
        ax.bar(range(len(top)), probs.tolist(), color="#3949ab")
        ax.set_title(name, fontsize="medium")
        ax.set_ylim(0, 1)
    for ax in axes[1]:
        ax.set_xlabel("12 most likely ids, by rank")
    for ax in axes[:, 0]:
        ax.set_ylabel("probability")
    fig.suptitle(f"One next-token distribution under each rule ({label})", fontsize="medium")
    fig.tight_layout()
    return fig


def llama2c_file_layout():
    """Share of a legacy llama2.c file taken by each block, for stories260K and stories15M."""
    groups = {"embedding": ["tok_embeddings"], "attention (wq wk wv wo)": ["wq", "wk", "wv", "wo"],
              "feed-forward (w1 w2 w3)": ["w1", "w2", "w3"], "norms": ["attention_norm", "ffn_norm", "norm"],
              "RoPE tables": ["rope_real", "rope_imag"], "output head": ["output"]}
    names = ["stories260K", "stories15M"]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    for row, name in enumerate(names):
        config = PRESETS[name]
        nbytes = {block: 4 * copies * int(torch.tensor(shape).prod()) for block, shape, copies in llama2c_layout(config)}
        total = 28 + sum(nbytes.values())
        left = 0.0
        for i, (group, blocks) in enumerate(groups.items()):
            share = sum(nbytes.get(b, 0) for b in blocks) / total
            ax.barh(row, share, left=left, color=f"C{i}", label=group if row == 0 else None)
            left += share
        ax.text(1.01, row, f"{total / 1e6:.2f} MB", va="center", fontsize="small")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of the file, in file order (the 28-byte header is invisible at this scale)")
    ax.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


FIGURES = {
    "generation-kv-cache-time.svg": kv_cache_time,
    "generation-sampling.svg": sampling,
    "checkpoints-llama2c-layout.svg": llama2c_file_layout,
}
