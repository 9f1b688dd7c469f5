"""A LLaMA-style language model built from first principles in PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Where each public name lives. They are imported on first use (PEP 562), not here: importing
# the package then costs nothing, so ``llama --help`` answers without loading torch (seconds).
_EXPORTS = {
    "ModelConfig": "llama.config", "RopeScaling": "llama.config", "PRESETS": "llama.config",
    "Transformer": "llama.model", "count_parameters": "llama.model",
    "Sampling": "llama.sampling", "sample_next": "llama.sampling",
    "generate": "llama.generation", "generate_stream": "llama.generation", "generate_batch": "llama.generation",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.config import PRESETS, ModelConfig, RopeScaling
    from llama.generation import generate, generate_batch, generate_stream
    from llama.model import Transformer, count_parameters
    from llama.sampling import Sampling, sample_next


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llama' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
