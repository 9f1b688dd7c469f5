"""Figures of the Quantization chapter, drawn from ``llama`` code at build time (see hooks/figures.py).

* ``quantization-scales.svg``: in each weight matrix of ``stories260K``, how far apart the
  largest magnitudes of its rows and of its 32-wide groups are (what one shared scale would
  have to cover), and the relative error of each quantization scheme, matrix by matrix.

It uses the pretrained ``stories260K`` when :func:`llama.data.sources.find_data` finds it
(``llama download stories260K`` fetches it), else a seeded random model of its size; the title
says which.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from _models import load_stories260k

from llama.quantization import QUANTIZED_LAYERS, dequantize_tensor, quantize_tensor


def relative_error(w: torch.Tensor, bits: int, group_size: int) -> float:
    q, s = quantize_tensor(w, bits, group_size)
    return float((dequantize_tensor(q, s, bits, group_size) - w).norm() / w.norm())


def scales():
    model, label = load_stories260k()
    mats = {name.removesuffix(".weight"): p.detach() for name, p in model.named_parameters()
            if name.split(".")[-2] in QUANTIZED_LAYERS}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    w = mats["layers.0.feed_forward.w1"]
    rows = w.abs().amax(1).sort(descending=True).values
    groups = w.abs().view(w.size(0), -1, 32).amax(-1).flatten().sort(descending=True).values
    left.plot(torch.linspace(0, 1, len(rows)), rows, label=f"each row ({len(rows)})")
    left.plot(torch.linspace(0, 1, len(groups)), groups, label=f"each 32-wide group ({len(groups)})")
    left.axhline(float(w.abs().max()), color="grey", ls="--", label="the whole matrix")
    left.set_yscale("log")
    left.set_xlabel("rank (fraction, largest first)")
    left.set_ylabel("largest |w| (log scale)")
    left.set_title("layers.0 w1: what one scale must cover")
    left.legend(fontsize=8)
    schemes = {"int8, one scale per matrix": (8, None), "int8 per row": (8, 0), "int4 per row": (4, 0),
               "int4, groups of 32": (4, 32), "int4, one scale per matrix": (4, None)}
    names = list(mats)
    for label_, (bits, size) in schemes.items():
        errs = []
        for name in names:
            m = mats[name]
            if size is None:  # one scale for the matrix: quantize it as a single row
                errs.append(relative_error(m.reshape(1, -1), bits, m.numel()))
            else:
                g = size or m.size(1)
                errs.append(relative_error(m, bits, g) if m.size(1) % g == 0 else float("nan"))
        right.plot(range(len(names)), errs, marker="o", ms=3, label=label_)
    right.set_yscale("log")
    right.set_xticks(range(0, len(names), 7), [n.split(".")[1] for n in names[::7]])
    right.set_xlabel("layer (each point one matrix: wq wk wv wo w1 w2 w3)")
    right.set_ylabel("‖W − deq(q(W))‖ / ‖W‖ (log scale)")
    right.set_title("relative error of each scheme")
    right.legend(fontsize=7, loc="center", ncol=2)
    fig.suptitle(f"Quantizing the weights of {label}")
    fig.tight_layout()
    return fig


FIGURES = {"quantization-scales.svg": scales}
