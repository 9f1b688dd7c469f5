"""Figures of the Fine-tuning chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

``finetune-rank.svg`` reads the runs of ``python benchmarks/finetune.py``, committed as
``benchmarks/results/finetune.json``; ``lora-update.svg`` draws one adapter's update from the library.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from llama.model import Linear
from llama.training import LoRAConfig, LoRALinear

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "finetune.json"


def finetune_rank():
    """Left: validation bits per byte against trainable parameters; right: the singular values of
    the full fine-tune's weight changes."""
    result = json.loads(RESULTS.read_text())
    fig, (ax, ax_sv) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, row in enumerate(result["rows"]):
        ax.plot([row["trainable"]], [row["val_bpb"]], "o", color=f"C{i}", label=f"{row['run']}: {row['val_bpb']:.3f}")
    ax.axhline(result["before_val_bpb"], color="grey", ls=":", label=f"base, before: {result['before_val_bpb']:.3f}")
    ax.set(xscale="log", xlabel="trainable parameters", ylabel="validation bits per byte")
    ax.legend(frameon=False, fontsize="small")
    for target, values in result["singular_values"].items():
        ax_sv.plot(range(1, len(values) + 1), values, label=target)
    ax_sv.set(yscale="log", xlabel="singular value index", ylabel="σ_i / σ_1 (mean over layers)")
    ax_sv.set_title("full fine-tune: singular values of W' − W", fontsize="medium")
    ax_sv.legend(frameon=False, fontsize="small", ncol=2)
    fig.tight_layout()
    return fig


def lora_update():
    """The update a rank-2 adapter adds to a 16 x 24 weight: a product of two thin matrices."""
    torch.manual_seed(0)
    layer = LoRALinear(Linear(24, 16, bias=False), LoRAConfig(rank=2, alpha=2.0))
    with torch.no_grad():
        layer.lora_B.normal_()
    panels = [("B\n16 × 2", layer.lora_B), ("A\n2 × 24", layer.lora_A), ("(α/r) B A\n16 × 24, rank 2", layer.delta())]
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8), gridspec_kw={"width_ratios": [4, 24, 24]})
    for ax, (title, m) in zip(axes, panels):
        ax.imshow(m.detach(), cmap="RdBu", vmin=-m.abs().max().item(), vmax=m.abs().max().item())
        ax.set_title(title, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


FIGURES = {"finetune-rank.svg": finetune_rank, "lora-update.svg": lora_update}
