"""A LLaMA-style language model built from first principles in PyTorch.

The sub-packages follow the book's parts, and import one way, from the bottom up:
``llama.model`` (part I), ``llama.quantization``, ``llama.formats``,
``llama.tokenizers`` and ``llama.inference`` (part II), ``llama.data`` and
``llama.training`` (parts III and IV), ``llama.posttraining`` (part V), and ``llama.cli`` on top. The names a first example
needs can be imported from ``llama`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

# Where each public name lives. They are imported on first use (PEP 562), not here: importing
# the package then costs nothing, so ``llama --help`` answers without loading torch (seconds).
_EXPORTS = {
    "ModelConfig": "model.config", "RopeScaling": "model.config", "PRESETS": "model.config",
    "Transformer": "model.transformer", "count_parameters": "model.transformer",
    "load_model": "formats.load", "save_model": "formats.load",
    "Sampling": "inference.sampling", "sample_next": "inference.sampling",
    "generate": "inference.generation", "generate_stream": "inference.generation",
    "generate_batch": "inference.generation",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.formats.load import load_model, save_model
    from llama.inference.generation import generate, generate_batch, generate_stream
    from llama.inference.sampling import Sampling, sample_next
    from llama.model.config import PRESETS, ModelConfig, RopeScaling
    from llama.model.transformer import Transformer, count_parameters
