"""Figures of the tokenizer chapter, drawn with ``llama.tokenizers.bpe`` at build time (see hooks/figures.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from llama.tokenizers import BPETokenizer

REPO = Path(__file__).resolve().parent.parent


def book_text(limit: int = 150_000) -> str:
    """The book's own chapters: a corpus that is always there (no download)."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "book").glob("*.md")))
    return text[:limit]


def vocab_growth():
    """Bytes per token as merges are added, and the length of each new token."""
    text = book_text()
    n_bytes = len(text.encode("utf-8"))
    tok = BPETokenizer.train(text, 1024)
    merges = tok.merge_ids
    sizes = [256, 272, 320, 384, 512, 640, 768, 896, 1024]
    ratio = [n_bytes / len(BPETokenizer(merges[: v - 256]).encode(text)) for v in sizes]
    lengths = [len(tok.vocab[256 + k]) for k in range(len(merges))]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), facecolor="white")
    ax1.plot(sizes, ratio, marker="o")
    ax1.set_xlabel("vocabulary size (256 bytes + merges)")
    ax1.set_ylabel("bytes per token")
    ax1.set_title("Compression of the training text")
    ax1.grid(alpha=0.3)
    first, last = lengths[:256], lengths[-256:]
    bins = range(2, max(lengths) + 2)
    ax2.hist([first, last], bins=bins, align="left", label=["merges 1-256", f"merges {len(lengths) - 255}-{len(lengths)}"])
    ax2.set_xlabel("length of the merged token (bytes)")
    ax2.set_ylabel("number of merges")
    ax2.set_title("Later merges make longer tokens")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.legend(fontsize="small")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"Byte-level BPE trained on this book ({n_bytes / 1000:.0f} kB of Markdown)", fontsize="medium")
    fig.tight_layout()
    return fig


FIGURES = {
    "tokenizer-vocab-growth.svg": vocab_growth,
}
