"""A LLaMA-style language model built from first principles in PyTorch."""

from .config import PRESETS, ModelConfig, RopeScaling
from .model import Transformer, count_parameters

__all__ = ["ModelConfig", "RopeScaling", "PRESETS", "Transformer", "count_parameters"]
