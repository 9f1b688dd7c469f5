r"""The one-row product of a quantized layer: a small C++ kernel, built where it runs, and its fallback.

Decoding one token multiplies one row ``x`` by every weight matrix, so its time is the time to
read the integers and turn them into products. PyTorch has no CPU kernel that does this fast
for the book's formats: ``_weight_int8pack_mm`` takes only one scale per row, and it and
``_weight_int4pack_mm_for_cpu`` are tuned for many rows, not one; and the loop Inductor
generates from the product written in PyTorch converts the integers with slow, narrow
instructions on AVX2 CPUs. This module has:

* :data:`KERNEL_SOURCE` (in :mod:`llama.quantization.kernel_source`): the C++ kernel,
  ``y[m, o] = sum_g scale[o, g] * sum_i q[o, g, i] * x[m, g, i]`` straight from ``qweight`` and
  ``scales``, with AVX-512 (16 floats a register) or AVX2 (8) instructions, the output rows shared
  out among ``torch.get_num_threads()`` threads when each gets at least 32 KiB of weights;
* :func:`load_kernel`: builds it with ``torch.utils.cpp_extension.load_inline`` for the CPU it
  runs on (``-O3 -march=native``) the first time it is needed, and registers it as the operator
  ``torch.ops.llama.quantized_matmul``, with the shape function ``torch.compile`` traces with.
  Without a C++ compiler (or ninja, or AVX2) it warns once and returns ``False``;
* :func:`kernel_ready`: :func:`load_kernel` as ``torch.compile`` sees it, a constant of the graph;
  :func:`kernel_loaded`: whether it is loaded, for eager calls, which never build it;
* :func:`quantized_matmul`: the kernel, for any number of rows;
* :func:`one_row_product`: the same sums written in PyTorch, which Inductor compiles where the
  kernel cannot be built;
* :func:`round_activations`: the first step of the kernel's other math (``int8_activations``,
  GGUF's ``Q8_0`` product): ``x`` rounded to int8 per group; the whole product written out is
  :func:`llama.quantization.weights.rounded_product`.

Both add the same products as ``F.linear(x, dequantize_tensor(...))``, the written-out
reference, in another order: results agree to float32 rounding (``tests/test_quant_kernel.py``).

>>> from llama.quantization.weights import dequantize_tensor, quantize_tensor
>>> q, s = quantize_tensor(torch.randn(8, 64), bits=4, group_size=32)
>>> x = torch.randn(1, 64)
>>> torch.allclose(one_row_product(x, q, s, 4, 32), (x @ dequantize_tensor(q, s, 4, 32).T)[0], atol=1e-5)
True
"""

from __future__ import annotations

import hashlib
import platform
import warnings
from inspect import signature
from pathlib import Path

import torch

from llama.quantization.kernel_source import KERNEL_SOURCE

__all__ = ["KERNEL_SOURCE", "load_kernel", "kernel_loaded", "kernel_ready", "quantized_matmul", "one_row_product",
           "round_activations"]



# --8<-- [start:load]
_state: dict = {}  # "ready": True once the kernel is loaded, False once building it failed


def load_kernel(march: str = "native") -> bool:
    """Build :data:`KERNEL_SOURCE` for this CPU (once per machine) and load it; ``True`` when it is ready.

    The first build takes seconds and lands in torch's extension cache (``TORCH_EXTENSIONS_DIR``,
    by default ``~/.cache/torch_extensions``) under a name that tells CPUs apart, so later
    processes only load it. ``-march=native`` compiles for the instructions of the CPU it runs on
    (AVX2 or AVX-512), which is safe because the kernel is built where it runs.

    Args:
        march: the compiler's ``-march``; ``"haswell"`` (AVX2 and FMA, no AVX-512) emulates an
            older x86 CPU (``benchmarks/quant_kernels.py``). One build per process: the first
            call decides.

    Returns:
        ``True`` when ``torch.ops.llama.quantized_matmul`` can be called; ``False``, with a
        warning (once), on a CPU without AVX2 or when the build fails (no C++ compiler, no ninja).
    """
    if "ready" in _state:
        return _state["ready"]
    from torch.utils.cpp_extension import load_inline

    _state["ready"] = False
    if march == "native" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        warnings.warn("the C++ kernel of quantized layers needs an x86 CPU with AVX2 or AVX-512; their "
                      "one-row products are computed in PyTorch instead (slower)", stacklevel=2)
        return False
    name = f"llama_quant_kernel_{march}_{_cpu_tag()}"
    no_headers = {"no_implicit_headers": True} if "no_implicit_headers" in signature(load_inline).parameters else {}
    try:
        load_inline(name, KERNEL_SOURCE, is_python_module=False, **no_headers,
                    extra_cflags=["-O3", f"-march={march}", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except (RuntimeError, OSError, ImportError) as err:  # no compiler, no ninja, a failed build
        reason = (str(err).strip() or type(err).__name__).splitlines()[0]
        warnings.warn(f"the C++ kernel of quantized layers could not be built ({reason}); their one-row "
                      "products are computed in PyTorch instead (slower)", stacklevel=2)
        return False
    torch.library.register_fake("llama::quantized_matmul")(_output_like)
    _state["ready"] = True
    return True


def _cpu_tag() -> str:
    """A short hash of the CPU's model and features: a cache shared by two kinds of CPU keeps a build for each."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        described = "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:  # not Linux
        described = ""
    described += platform.machine() + platform.processor()
    return hashlib.sha256(described.encode()).hexdigest()[:10]


def _output_like(x, qweight, scales, bits, group_size, int8_activations=False):
    """What ``torch.compile`` knows of the operator's result without running it: its shape and dtype."""
    return x.new_empty(x.size(0), qweight.size(0))


def kernel_loaded() -> bool:
    """Whether the kernel is built and loaded in this process (this never builds it)."""
    return _state.get("ready", False)


def kernel_ready() -> bool:
    """:func:`load_kernel`, called by ``torch.compile`` while it traces; the compiled graph keeps the answer."""
    return load_kernel()


# What ``@torch.compiler.assume_constant_result`` does, by hand: that decorator imports torch._dynamo,
# 1.4 s at the import of this module, in every process that loads a quantized layer or decodes,
# compiled or not. tests/test_quant_kernel.py checks that the decorator still sets this attribute.
kernel_ready._dynamo_marked_constant = True


def quantized_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                     group_size: int, int8_activations: bool = False) -> torch.Tensor:
    """``F.linear(x, dequantize_tensor(qweight, scales, bits, group_size))`` by the kernel (after :func:`load_kernel`).

    Args:
        x: float32 ``[rows, in]``.
        qweight: int8 ``[out, in]`` (``bits=8``) or uint8 ``[out, in // 2]`` (``bits=4``).
        scales: float16 ``[out, in // group_size]``.
        bits: 8 or 4.
        group_size: inputs per scale.
        int8_activations: round ``x`` to int8 per group first and multiply integers
            (:func:`llama.quantization.weights.rounded_product`'s math, GGUF's ``Q8_0`` product); else ``x`` as it is.

    Returns:
        float32 ``[rows, out]``.
    """
    return torch.ops.llama.quantized_matmul(x.contiguous(), qweight, scales, bits, group_size, int8_activations)
# --8<-- [end:load]


# --8<-- [start:one_row]
def one_row_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                    group_size: int) -> torch.Tensor:
    """The kernel's sums written in PyTorch, for ``torch.compile`` to turn into its own loop.

    Per output ``o`` and group ``g``: ``sum_i q[o, g, i] * x[g, i]``, scaled and summed over the
    groups. Eagerly this would build a float temporary as large as the weight; compiled, Inductor
    fuses the conversions and products into one reduction loop over ``qweight``.

    Args:
        x: one row, ``[in]`` (any leading shape of one element in total).
        qweight: the layer's integers, as for :func:`quantized_matmul`.
        scales: its float16 scales, ``[out, in // group_size]``.
        bits: 8 or 4.
        group_size: inputs per scale.

    Returns:
        ``[out]`` in ``x``'s dtype.
    """
    out_features, groups = scales.shape
    if bits == 8:
        q = qweight.view(out_features, groups, group_size).to(x.dtype)
        products = q * x.reshape(1, groups, group_size)
    else:  # byte j of a group: column j (low nibble) and column j + group_size / 2 (high)
        half = group_size // 2
        packed = qweight.view(out_features, groups, half)
        xs = x.reshape(1, groups, 2, half)
        low = (packed & 15).to(x.dtype) - 8
        high = (packed >> 4).to(x.dtype) - 8
        products = low * xs[:, :, 0] + high * xs[:, :, 1]
    scales = scales.to(x.dtype)
    if groups == 1:  # one scale per row: scale the row's sum
        return products.sum((-2, -1)) * scales[:, 0]
    # scale inside the sum: the row stays one reduction loop, with no sum per group
    return (products * scales[..., None]).sum((-2, -1))
# --8<-- [end:one_row]


# --8<-- [start:rounded]
def round_activations(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` rounded to int8 per group of ``group_size`` values: ``d = max|x_group| / 127``, ``q = round(x / d)``.

    Args:
        x: float32 ``[rows, in]``.
        group_size: values per scale; divides ``in``.

    Returns:
        ``(q, d)``: int8 ``[rows, in]`` and float32 ``[rows, in // group_size]``; ``x ≈ q * d``,
        off by at most ``d / 2`` (an all-zero group has ``d = 0`` and ``q = 0``).
    """
    rows, n = x.shape
    groups = x.float().reshape(rows, n // group_size, group_size)
    d = groups.abs().amax(-1) / 127
    q = torch.where(d[..., None] == 0, 0.0, torch.round(groups / d[..., None]).clamp(-127, 127))
    return q.to(torch.int8).reshape(rows, n), d
# --8<-- [end:rounded]
