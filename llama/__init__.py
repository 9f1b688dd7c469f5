"""A LLaMA-style language model built from first principles in PyTorch."""

from llama.config import PRESETS, ModelConfig, RopeScaling
from llama.model import Transformer, count_parameters
from llama.generation import generate, generate_batch, generate_stream, sample_next

__all__ = ["ModelConfig", "RopeScaling", "PRESETS", "Transformer", "count_parameters",
           "generate", "generate_stream", "generate_batch", "sample_next"]
