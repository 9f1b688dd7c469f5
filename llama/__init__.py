"""A LLaMA-style language model built from first principles in PyTorch."""

from llama.config import PRESETS, ModelConfig, RopeScaling
from llama.model import Transformer, count_parameters
from llama.sampling import Sampling, sample_next
from llama.generation import generate, generate_batch, generate_stream

__all__ = ["ModelConfig", "RopeScaling", "PRESETS", "Transformer", "count_parameters",
           "Sampling", "sample_next", "generate", "generate_stream", "generate_batch"]
