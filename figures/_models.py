"""Models the figures draw from, shared by several figure modules."""

from __future__ import annotations

import torch

from llama.data import find_data
from llama.formats import load_model
from llama.model import PRESETS, Transformer


def load_stories260k() -> tuple[Transformer, str]:
    """The pretrained ``stories260K`` when :func:`llama.data.sources.find_data` finds it, else a seeded
    random model of its size: ``(model, what it is)`` for a figure's title."""
    path = find_data("stories260K.bin")
    if path is not None:
        return load_model(path), "stories260K"
    torch.manual_seed(0)
    return Transformer(PRESETS["stories260K"]).eval(), "stories260K size, random weights"
