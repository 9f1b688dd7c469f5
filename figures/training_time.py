"""Figures of the "Where the time goes" chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

``training-time-flops.svg`` splits a training step's operations with :func:`llama.training.flops.flops_per_token`
for the recipe's model at several context lengths. ``training-time-sweep.svg`` reads the sweep of
the recipe's variants, committed as ``benchmarks/results/train-sweep.jsonl`` by
``python benchmarks/train.py sweep``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt

from llama.training import RECIPES, TrainConfig, flops_per_token, model_config, training_memory

SWEEP = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "train-sweep.jsonl"


#: The recipe (``llama train --recipe shakespeare``, benchmarks/train.py's RECIPE_ARGS).
RECIPE = TrainConfig(out="-", **RECIPES["shakespeare"])


def flops_and_memory():
    cfg = RECIPE
    config = model_config(cfg, cfg.vocab_size)
    lengths = [64, 128, 256, 512, 1024, 2048]
    counts = [flops_per_token(config, t) for t in lengths]
    fig, (ax_f, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_f.bar([str(t) for t in lengths], [c["weights"] / 1e6 for c in counts], label="6 × matmul weights")
    ax_f.bar([str(t) for t in lengths], [c["attention"] / 1e6 for c in counts],
             bottom=[c["weights"] / 1e6 for c in counts], label="causal attention")
    ax_f.set(xlabel="context length T (tokens)", ylabel="MFLOP per token (training step)",
             title="the recipe's model: operations per token")
    ax_f.legend(frameon=False)
    parts = training_memory(config, cfg.batch_size, cfg.block_size, optimizer=cfg.optimizer)
    names = list(parts)
    ax_m.barh(names[::-1], [parts[n] / 1e6 for n in names[::-1]], color="C2")
    for i, n in enumerate(names[::-1]):
        ax_m.text(parts[n] / 1e6, i, f" {parts[n] / 1e6:.1f}", va="center", fontsize="small")
    ax_m.set(xlabel="MB", title=f"memory of a step ({cfg.batch_size} × {cfg.block_size} tokens, bf16)")
    ax_m.set_xlim(0, max(parts.values()) / 1e6 * 1.25)
    fig.tight_layout()
    return fig


def sweep():
    records = [json.loads(line) for line in SWEEP.read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: r["val_bpb"])
    steps = Counter(r["steps"] for r in records).most_common(1)[0][0]  # the sweep's; others are checks
    base = next(r for r in records if r["name"] == "base" and r["steps"] == steps)
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(records) + 1.2))
    names = [r["name"] if r["steps"] == base["steps"] else f"{r['name']}, {r['steps']} steps" for r in records][::-1]
    values = [r["val_bpb"] for r in records][::-1]
    colors = ["C1" if r is base else "C2" if r["steps"] > steps else "C0" if r["val_bpb"] < base["val_bpb"] else "C7"
              for r in records][::-1]
    ax.barh(names, values, color=colors)
    for i, r in enumerate(records[::-1]):
        ax.text(r["val_bpb"], i, f" {r['val_bpb']:.3f}  ({r['loop_s']:.0f} s)", va="center", fontsize="small")
    low = min(values)
    ax.set_xlim(low - 0.15, max(values) + 0.12)
    ax.axvline(base["val_bpb"], color="C1", lw=0.8, ls=":")
    ax.set(xlabel="validation bits per byte, whole split (lower is better)",
           title=f"variants of the recipe, {steps} steps unless named (green: longer checks)\n"
                 "in brackets: the training loop's seconds on a busy machine")
    fig.tight_layout()
    return fig


FIGURES = {"training-time-flops.svg": flops_and_memory, "training-time-sweep.svg": sweep}
