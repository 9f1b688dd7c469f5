"""Inference (part II): sampling the next token and the decoding loops around the model.

Modules, in the order the book meets them: :mod:`~llama.inference.sampling`,
:mod:`~llama.inference.generation`, :mod:`~llama.inference.compiled`, :mod:`~llama.inference.exported`.
Every public name of these modules can be imported from the package itself
(``from llama.inference import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "Sampling": "sampling", "apply_temperature": "sampling", "top_k_filter": "sampling",
    "top_p_filter": "sampling", "min_p_filter": "sampling", "argmax": "sampling", "sample_next": "sampling",
    "generate_stream": "generation", "generate": "generation", "generate_batch": "generation",
    "prepare_for_decoding": "generation", "decode_step": "compiled", "CompiledDecoder": "compiled",
    "missing_cxx_compiler": "compiled", "ExportedDecoder": "exported", "package_folder": "exported",
    "one_compiler": "exported",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.inference.sampling import (
        Sampling, apply_temperature, argmax, min_p_filter, sample_next, top_k_filter, top_p_filter,
    )
    from llama.inference.generation import generate, generate_batch, generate_stream, prepare_for_decoding
    from llama.inference.compiled import CompiledDecoder, decode_step, missing_cxx_compiler
    from llama.inference.exported import ExportedDecoder, one_compiler, package_folder
