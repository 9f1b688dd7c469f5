"""Figures of the supervised fine-tuning chapter, drawn with ``llama.posttraining.sft`` at build time (see hooks/figures.py)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from llama.posttraining.chat import CHAT_TOKENS, ChatFormat
from llama.posttraining.sft import IGNORE, SFTSampler, parse_task
from llama.posttraining.special_tokens import add_special_tokens
from llama.tokenizers.bpe import BPETokenizer


def windows_figure():
    """The targets of one batch of packed windows: learned (the replies), ignored (prompts, headers), padding."""
    chat = ChatFormat(add_special_tokens(BPETokenizer([]), CHAT_TOKENS))  # one token per byte, as the chapter's runs
    x, y = SFTSampler(chat, parse_task("addition:digits=2"), 128, 6, seed=0).next_batch()
    pad = np.zeros(y.shape, dtype=bool)
    for r in range(x.size(0)):  # padding: the ids after a window's last <|eot_id|>
        last = int(np.flatnonzero(x[r].numpy() == chat.eot_id).max()) if (x[r] == chat.eot_id).any() else -1
        pad[r, last + 1:] = (y[r, last + 1:] == IGNORE).numpy()
    kind = np.where(y.numpy() != IGNORE, 2, 1)
    kind[pad] = 0
    fig, ax = plt.subplots(figsize=(9.6, 2.9), facecolor="white")
    ax.imshow(kind, cmap=ListedColormap(["#f2f2f2", "#b9d3ee", "#f4a259"]), vmin=0, vmax=2, aspect="auto",
              interpolation="nearest")
    starts = [(r, c) for r in range(x.size(0)) for c in range(x.size(1)) if int(x[r, c]) == chat.bos_id]
    ax.plot([c for _, c in starts], [r for r, _ in starts], "|", color="black", markersize=13)
    ax.set_yticks(range(x.size(0)), [f"window {r}" for r in range(x.size(0))])
    ax.set_xlabel("position in the window (one token per byte)")
    learned = int((y != IGNORE).sum())
    ax.set_title(f"A batch of packed conversations: {learned} of {y.numel()} targets learned "
                 f"({100 * learned / y.numel():.0f}%), the rest -100", fontsize=10)
    ax.legend(handles=[Patch(facecolor="#f4a259", label="target learned: the reply and its <|eot_id|>"),
                       Patch(facecolor="#b9d3ee", label="target -100: prompt, headers"),
                       Patch(facecolor="#f2f2f2", label="target -100: padding"),
                       plt.Line2D([], [], marker="|", color="black", linestyle="none", markersize=10,
                                  label="a conversation begins (<|begin_of_text|>)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False, fontsize=8.5)
    fig.tight_layout()
    return fig


FIGURES = {"sft-windows.svg": windows_figure}
