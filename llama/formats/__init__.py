"""Model files: the checkpoint formats a reader meets (Hugging Face, Meta, llama2.c, GGUF, quantized), read
into our names and written back.

Modules, in the order the book meets them: :mod:`~llama.formats.convert`,
:mod:`~llama.formats.checkpoint`, :mod:`~llama.formats.llama2c`, :mod:`~llama.formats.gguf`,
:mod:`~llama.formats.gguf_quant`, :mod:`~llama.formats.load`.
Every public name of these modules can be imported from the package itself
(``from llama.formats import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "HF_NAMES": "convert", "hf_to_llama_state_dict": "convert", "llama_to_hf_state_dict": "convert",
    "expected_shapes": "convert", "check_layer_count": "convert",
    "detect_format": "checkpoint", "read_hf": "checkpoint", "read_meta": "checkpoint",
    "read_checkpoint": "checkpoint", "save_hf": "checkpoint", "check_finite": "checkpoint",
    "LLAMA2C_HEADER": "llama2c", "llama2c_layout": "llama2c", "read_llama2c": "llama2c",
    "save_llama2c": "llama2c",
    "GGUF_NAMES": "gguf", "GGUFVocab": "gguf", "save_gguf": "gguf", "read_gguf": "gguf",
    "read_gguf_vocab": "gguf", "gguf_layout": "gguf", "check_gguf": "gguf",
    "BLOCK": "gguf_quant", "to_ggml_blocks": "gguf_quant", "from_ggml_blocks": "gguf_quant",
    "quantization_scheme": "gguf_quant",
    "load_model": "load", "save_model": "load", "check_before_building": "load",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.formats.convert import (
        HF_NAMES, check_layer_count, expected_shapes, hf_to_llama_state_dict, llama_to_hf_state_dict,
    )
    from llama.formats.checkpoint import (
        check_finite, detect_format, read_checkpoint, read_hf, read_meta, save_hf,
    )
    from llama.formats.llama2c import LLAMA2C_HEADER, llama2c_layout, read_llama2c, save_llama2c
    from llama.formats.gguf import (
        GGUFVocab, GGUF_NAMES, check_gguf, gguf_layout, read_gguf, read_gguf_vocab, save_gguf,
    )
    from llama.formats.gguf_quant import BLOCK, from_ggml_blocks, quantization_scheme, to_ggml_blocks
    from llama.formats.load import check_before_building, load_model, save_model
