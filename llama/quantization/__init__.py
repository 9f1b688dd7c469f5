"""Weight-only int8/int4 quantization: the quantized linear layer and the kernel it calls.

Modules, in the order the book meets them: :mod:`~llama.quantization.weights`,
:mod:`~llama.quantization.kernel`, :mod:`~llama.quantization.kernel_source`,
:mod:`~llama.quantization.rounded_source`.
Every public name of these modules can be imported from the package itself
(``from llama.quantization import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "QuantizedLinear": "weights", "set_int8_activations": "weights", "quantize_tensor": "weights",
    "dequantize_tensor": "weights", "rounded_product": "weights", "quantize": "weights",
    "QUANTIZED_LAYERS": "weights", "KERNEL_ROWS": "weights", "save_quantized": "weights",
    "read_quantized": "weights", "is_quantized_checkpoint": "weights", "SCHEME_FILE": "weights",
    "load_kernel": "kernel", "kernel_loaded": "kernel", "kernel_ready": "kernel",
    "quantized_matmul": "kernel", "one_row_product": "kernel", "round_activations": "kernel",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.quantization.weights import (
        KERNEL_ROWS, QUANTIZED_LAYERS, QuantizedLinear, SCHEME_FILE, dequantize_tensor,
        is_quantized_checkpoint, quantize, quantize_tensor, read_quantized, rounded_product, save_quantized,
        set_int8_activations,
    )
    from llama.quantization.kernel import (
        kernel_loaded, kernel_ready, load_kernel, one_row_product, quantized_matmul, round_activations,
    )
