"""Figures of the Training chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

``training-loss.svg`` reads the log of the book's recipe run, committed as
``benchmarks/results/train-log.jsonl`` by ``python benchmarks/train.py quality``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from llama.train import TrainConfig, lr_at, plot_log, read_log

LOG = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "train-log.jsonl"
TARGET_BPB = 2.45
NANOGPT_CPU_BPB = 2.72  # nanoGPT's published CPU recipe, as run on this machine (see the chapter)


def training_loss():
    return plot_log(LOG, target_bpb=TARGET_BPB, reference=("nanoGPT CPU recipe", NANOGPT_CPU_BPB))


def lr_schedule():
    cfg = TrainConfig(out="-", max_time=120)
    records = [r for r in read_log(LOG) if not r.get("final")]
    steps = records[-1]["step"]
    fig, ax = plt.subplots(figsize=(7, 3))
    xs = list(range(steps + 1))
    ax.plot(xs, [lr_at(s, s / steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio) for s in xs],
            label=f"lr_at(step, step / {steps}): a {steps}-step run")
    ax.plot([r["step"] for r in records], [r["lr"] for r in records], "o", ms=3,
            label="the recipe run (progress = time / 120 s)")
    ax.axvline(cfg.warmup_steps, color="grey", lw=0.8, ls=":")
    ax.text(cfg.warmup_steps, cfg.lr * 0.05, " end of warm-up", fontsize="small")
    ax.set(xlabel="optimizer step", ylabel="learning rate")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


FIGURES = {"training-loss.svg": training_loss, "training-lr-schedule.svg": lr_schedule}
