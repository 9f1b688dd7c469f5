"""Figure of the GGUF chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

* ``gguf-layout.svg``: the parts of a real GGUF file written by :func:`llama.formats.gguf.save_gguf`,
  located by :func:`llama.formats.gguf.gguf_layout` (which reads the file with the ``gguf`` package): the
  whole file, and its first bytes magnified.

It uses the pretrained ``stories260K`` when :func:`llama.data.sources.find_data` finds it, else a
seeded random model of its size; the title says which.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from llama.data import find_data
from llama.formats import gguf_layout, load_model, save_gguf
from llama.model import PRESETS, Transformer

GROUPS = {"header": "header", "metadata": "metadata", "tensor infos": "tensor infos", "padding": "padding",
          "token_embd": "embedding", "attn_": "attention (q k v output)", "ffn_gate": "feed-forward (gate down up)",
          "ffn_down": "feed-forward (gate down up)", "ffn_up": "feed-forward (gate down up)",
          "norm": "norms", "output.": "output head"}


def _group(part: str) -> str:
    return next(group for key, group in GROUPS.items() if key in part)


def gguf_file_layout():
    """The parts of stories260K written as GGUF (float32), in file order, whole and magnified."""
    path = find_data("stories260K.bin")
    if path is not None:
        model, label = load_model(path), "stories260K"
    else:
        torch.manual_seed(0)
        model, label = Transformer(PRESETS["stories260K"]).eval(), "stories260K size, random weights"
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "model.gguf"
        save_gguf(model.state_dict(), model.config, file, name="stories260K")
        parts = gguf_layout(file)
    groups = list(dict.fromkeys(_group(p) for p, _, _ in parts))
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    total = parts[-1][2]
    zoom = parts[4][1] + 512  # the metadata, the infos and the first tensor's start
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 3.2))
    for ax, end, title, unit in ((axes[0], total, f"the whole file, {total:,} bytes", 1000),
                                 (axes[1], zoom, f"its first {zoom:,} bytes", 1)):
        for part, start, stop in parts:
            if start >= end:
                break
            group = _group(part)
            ax.barh(0, (min(stop, end) - start) / unit, left=start / unit, color=colors[group], edgecolor="white",
                    linewidth=0.3, label=group)
        ax.set_xlim(0, end / unit)
        ax.set_xlabel("kB from the start" if unit == 1000 else "bytes from the start", fontsize="small")
        ax.set_yticks([])
        ax.set_title(title, fontsize="small", loc="left")
    handles, labels = axes[0].get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    by_label.update(dict(zip(*reversed(axes[1].get_legend_handles_labels()))))
    fig.legend([by_label[g] for g in groups], groups, ncols=4, loc="lower center", bbox_to_anchor=(0.5, 0.0),
               frameon=False, fontsize="small")
    fig.suptitle(f"The parts of a GGUF file ({label}, float32)", fontsize="medium")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


FIGURES = {
    "gguf-layout.svg": gguf_file_layout,
}
