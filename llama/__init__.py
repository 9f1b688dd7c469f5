"""A LLaMA-style language model built from first principles in PyTorch."""

from .config import PRESETS, ModelConfig, RopeScaling
from .model import Transformer, count_parameters
from .generation import generate, generate_batch, generate_stream, sample_next

__all__ = ["ModelConfig", "RopeScaling", "PRESETS", "Transformer", "count_parameters",
           "generate", "generate_stream", "generate_batch", "sample_next"]
