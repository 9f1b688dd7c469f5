"""Figures of the Training chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

``training-loss.svg`` reads the log of the book's recipe run, committed as
``benchmarks/results/train-log.jsonl`` by ``python benchmarks/train.py quality``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from llama.training import TrainConfig, lr_at, read_log

LOG = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "train-log.jsonl"
# nanoGPT's README: its CPU recipe reaches a validation loss of "1.88" nats per character, estimated
# on 20 batches of 12 windows of 64 characters; Tiny Shakespeare is ASCII, so 1.88 / ln 2 bits per byte.
NANOGPT_CPU_BPB = round(1.88 / math.log(2), 2)


def plot_log(records: Sequence[dict[str, Any]] | str | os.PathLike, reference: tuple[str, float] | None = None):
    """A matplotlib figure of a run's ``log.jsonl``: losses on the left, bits per byte on the right.

    Args:
        records: the log's records, or the path of a ``log.jsonl``.
        reference: ``(label, bits per byte)`` of another result to mark.
    """
    if not isinstance(records, (list, tuple)):
        records = read_log(records)
    periodic = [r for r in records if not r.get("final")]
    final = [r for r in records if r.get("final")]
    t = [r["elapsed"] for r in periodic]
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(t, [r["train_loss"] for r in periodic], label="train (mean since last eval)")
    ax_loss.plot(t, [r["val_loss"] for r in periodic], label=f"validation ({periodic[0]['val_tokens']} tokens)")
    ax_loss.set(xlabel="training time (s)", ylabel="cross-entropy (nats per token)")
    ax_loss.legend(frameon=False)
    ax_bpb.plot(t, [r["val_bpb"] for r in periodic], color="C1", label="validation")
    if final:
        ax_bpb.plot([final[-1]["elapsed"]], [final[-1]["val_bpb"]], "o", color="C3",
                    label=f"final, whole validation set: {final[-1]['val_bpb']:.3f}")
    if reference is not None:
        ax_bpb.axhline(reference[1], color="grey", ls=":", lw=1, label=f"{reference[0]}: {reference[1]}")
    ax_bpb.set(xlabel="training time (s)", ylabel="bits per byte", ylim=(None, min(5.0, max(r["val_bpb"] for r in periodic))))
    ax_bpb.legend(frameon=False)
    fig.tight_layout()
    return fig


def training_loss():
    return plot_log(LOG, reference=("nanoGPT CPU, its README", NANOGPT_CPU_BPB))


def lr_schedule():
    cfg = TrainConfig(out="-", max_time=120)
    records = [r for r in read_log(LOG) if not r.get("final")]
    steps = records[-1]["step"]
    fig, ax = plt.subplots(figsize=(7, 3))
    xs = list(range(steps + 1))
    ax.plot(xs, [lr_at(s, s / steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio) for s in xs],
            label=f"lr_at(step, step / {steps}): a {steps}-step run")
    # The cosine factor alone (no warm-up): it starts falling at step 0, under the ramp.
    ax.plot(xs, [lr_at(s, s / steps, cfg.lr, 0, cfg.min_lr_ratio) for s in xs], "--", color="grey", lw=1,
            label="peak × its cosine factor alone")
    ax.plot([r["step"] for r in records], [r["lr"] for r in records], "o", ms=3,
            label="the recipe run (progress = time / 120 s)")
    ax.axvline(cfg.warmup_steps, color="grey", lw=0.8, ls=":")
    ax.text(cfg.warmup_steps, cfg.lr * 0.05, " end of warm-up", fontsize="small")
    ax.set(xlabel="optimizer step", ylabel="learning rate")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


FIGURES = {"training-loss.svg": training_loss, "training-lr-schedule.svg": lr_schedule}
