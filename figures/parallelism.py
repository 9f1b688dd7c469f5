"""Figure of the "Parallel training" chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

``parallelism-memory.svg``: :func:`llama.training.memory.bytes_per_rank` for Llama 3.1 8B trained with
AdamW on 1 to 64 ranks, each strategy a line, with the weights in float32 and in bfloat16, against
the 80 GB of an H100.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from llama.model import ModelConfig
from llama.training import STRATEGIES, bytes_per_rank

LABELS = {"ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "fsdp": "FSDP (ZeRO-3)"}
WORLD_SIZES = [1, 2, 4, 8, 16, 32, 64]
TOKENS = 8192  # one sequence of Llama 3's training length per rank


def memory_per_rank():
    config = ModelConfig.from_preset("llama3.1-8b")
    fig, axes = plt.subplots(2, 1, figsize=(5.2, 6.4), sharex=True, sharey=True)
    for ax, param_bytes, dtype in zip(axes, (4, 2), ("float32", "bfloat16")):
        for i, strategy in enumerate(STRATEGIES):
            gb = [bytes_per_rank(config, n, strategy, 1, TOKENS, param_bytes=param_bytes,
                                 activation_checkpointing=True)["total"] / 1e9 for n in WORLD_SIZES]
            ax.plot(WORLD_SIZES, gb, marker="o", ms=3, color=f"C{i}", label=LABELS[strategy])
            ax.annotate(f"{gb[-1]:.0f}", (WORLD_SIZES[-1], gb[-1]), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize="small", color=f"C{i}")
        ax.axhline(80, color="k", lw=0.8, ls="--")
        ax.text(1, 80, " 80 GB: one H100", va="bottom", fontsize="small")
        ax.set(xscale="log", yscale="log", ylabel="GB per rank",
               title=f"Llama 3.1 8B, AdamW, weights in {dtype}")
        ax.set_xticks(WORLD_SIZES, [str(n) for n in WORLD_SIZES])
        ax.set_yticks([20, 40, 80, 160], ["20", "40", "80", "160"])
        ax.minorticks_off()
        ax.set_xlim(0.8, 100)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(frameon=False, fontsize="small", loc="lower left")
    axes[1].set_xlabel(f"ranks (each with {TOKENS:,} tokens, activation checkpointing)")
    fig.tight_layout()
    return fig


FIGURES = {"parallelism-memory.svg": memory_per_rank}
