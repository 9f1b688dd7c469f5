r"""The one-row product of a quantized layer: a small C++ kernel, built where it runs, and its fallback.

Decoding one token multiplies one row ``x`` by every weight matrix, so its time is the time to
read the integers and turn them into products. PyTorch has no CPU kernel that does this fast
for the book's formats: ``_weight_int8pack_mm`` takes only one scale per row, and it and
``_weight_int4pack_mm_for_cpu`` are tuned for many rows, not one; and the loop Inductor
generates from the product written in PyTorch converts the integers with slow, narrow
instructions on AVX2 CPUs. This module has:

* :data:`KERNEL_SOURCE`: the C++ kernel, ``y[m, o] = sum_g scale[o, g] * sum_i q[o, g, i] *
  x[m, g, i]`` straight from ``qweight`` and ``scales``, with AVX-512 (16 floats a register)
  or AVX2 (8) instructions, the output rows shared out among ``torch.get_num_threads()`` threads;
* :func:`load_kernel`: builds it with ``torch.utils.cpp_extension.load_inline`` for the CPU it
  runs on (``-O3 -march=native``) the first time it is needed, and registers it as the operator
  ``torch.ops.llama.quantized_matmul``, with the shape function ``torch.compile`` traces with.
  Without a C++ compiler (or ninja, or AVX2) it warns once and returns ``False``;
* :func:`kernel_ready`: :func:`load_kernel` as ``torch.compile`` sees it, a constant of the graph;
  :func:`kernel_loaded`: whether it is loaded, for eager calls, which never build it;
* :func:`quantized_matmul`: the kernel, for any number of rows;
* :func:`one_row_product`: the same sums written in PyTorch, which Inductor compiles where the
  kernel cannot be built.

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

__all__ = ["KERNEL_SOURCE", "load_kernel", "kernel_loaded", "kernel_ready", "quantized_matmul", "one_row_product"]


# --8<-- [start:kernel]
KERNEL_SOURCE = r"""
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

namespace {
// The few vector operations the kernel needs, for the widest registers the CPU has.
#if defined(__AVX512F__)
constexpr int64_t W = 16;  // floats per register
typedef __m512 vec;
vec zero() { return _mm512_setzero_ps(); }
vec load(const float* p) { return _mm512_loadu_ps(p); }
vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
vec broadcast(float s) { return _mm512_set1_ps(s); }
float sum(vec v) { return _mm512_reduce_add_ps(v); }
vec int8_to_floats(const int8_t* p) {  // W int8 values
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
void int4_to_floats(const uint8_t* p, vec& low, vec& high) {  // W bytes: W low and W high nibbles, minus 8
  const __m512 values = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
  low = _mm512_permutexvar_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(15)), values);
  high = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), values);
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t W = 8;
typedef __m256 vec;
vec zero() { return _mm256_setzero_ps(); }
vec load(const float* p) { return _mm256_loadu_ps(p); }
vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
vec broadcast(float s) { return _mm256_set1_ps(s); }
float sum(vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
vec int8_to_floats(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
void int4_to_floats(const uint8_t* p, vec& low, vec& high) {
  __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)), eight = _mm256_set1_epi32(8);
  low = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(bytes, _mm256_set1_epi32(15)), eight));
  high = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bytes, 4), eight));
}
#else
#error "the quantized kernel needs AVX2 and FMA, or AVX-512"
#endif

float scale_of(const at::Half* s) { return _cvtsh_ss(s->x); }  // float16 -> float32, one instruction

// One output of int8: sum over groups g of scale[g] * sum_i q[g, i] * x[g, i].
float row_int8(const int8_t* q, const at::Half* scale, const float* x, int64_t n, int64_t group) {
  vec acc = zero();
  float rest = 0;
  for (int64_t g = 0; g < n / group; ++g, q += group, x += group) {
    vec a = zero(), b = zero();  // two sums, so that one product need not wait for the other
    int64_t i = 0;
    for (; i + 2 * W <= group; i += 2 * W) {
      a = fma(int8_to_floats(q + i), load(x + i), a);
      b = fma(int8_to_floats(q + i + W), load(x + i + W), b);
    }
    for (; i + W <= group; i += W) a = fma(int8_to_floats(q + i), load(x + i), a);
    float tail = 0;  // groups that are not a multiple of the register width
    for (; i < group; ++i) tail += q[i] * x[i];
    acc = fma(add(a, b), broadcast(scale_of(scale + g)), acc);
    rest += tail * scale_of(scale + g);
  }
  return rest + sum(acc);
}

// The same for int4: byte j of a group holds column j (low nibble) and j + group / 2 (high), as q + 8.
float row_int4(const uint8_t* q, const at::Half* scale, const float* x, int64_t n, int64_t group) {
  const int64_t half = group / 2;
  vec acc = zero();
  float rest = 0;
  for (int64_t g = 0; g < n / group; ++g, q += half, x += group) {
    vec a = zero(), b = zero(), low, high;
    int64_t j = 0;
    for (; j + W <= half; j += W) {
      int4_to_floats(q + j, low, high);
      a = fma(low, load(x + j), a);
      b = fma(high, load(x + half + j), b);
    }
    float tail = 0;
    for (; j < half; ++j) tail += ((q[j] & 15) - 8) * x[j] + ((q[j] >> 4) - 8) * x[half + j];
    acc = fma(add(a, b), broadcast(scale_of(scale + g)), acc);
    rest += tail * scale_of(scale + g);
  }
  return rest + sum(acc);
}

// y[m, o] for every row m of x and output o; threads share out the outputs.
at::Tensor quantized_matmul(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                            int64_t bits, int64_t group_size) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.is_cpu(),
              "quantized_matmul: x must be a contiguous float32 CPU matrix [rows, in]");
  TORCH_CHECK(qweight.is_contiguous() && scales.is_contiguous() && scales.scalar_type() == at::kHalf,
              "quantized_matmul: qweight and scales must be contiguous, scales float16");
  const int64_t rows = x.size(0), n = x.size(1), out = qweight.size(0);
  TORCH_CHECK((bits == 8 || bits == 4) && group_size > 0 && group_size % 2 == 0 && n % group_size == 0 &&
              qweight.dim() == 2 && qweight.size(1) == n * bits / 8 && qweight.element_size() == 1 &&
              scales.dim() == 2 && scales.size(0) == out && scales.size(1) == n / group_size,
              "quantized_matmul: the shapes of x, qweight and scales do not fit bits and group_size");
  at::Tensor y = at::empty({rows, out}, x.options());
  const float* xs = x.data_ptr<float>();
  const auto* qs = static_cast<const uint8_t*>(qweight.data_ptr());
  const at::Half* ss = scales.data_ptr<at::Half>();
  float* ys = y.data_ptr<float>();
  const int64_t row_bytes = qweight.size(1), groups = n / group_size;
  // A thread gets at least 32 KiB of weights: waking one costs more than reading less.
  at::parallel_for(0, out, std::max<int64_t>(1, 32768 / row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o)
      for (int64_t m = 0; m < rows; ++m)
        ys[m * out + o] = bits == 8
            ? row_int8((const int8_t*)qs + o * row_bytes, ss + o * groups, xs + m * n, n, group_size)
            : row_int4(qs + o * row_bytes, ss + o * groups, xs + m * n, n, group_size);
  });
  return y;
}
}  // namespace

TORCH_LIBRARY(llama, m) {
  m.def("quantized_matmul(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size) -> Tensor");
  m.impl("quantized_matmul", torch::dispatch(c10::DispatchKey::CPU, &quantized_matmul));
}
"""
# --8<-- [end:kernel]

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


def _output_like(x, qweight, scales, bits, group_size):
    """What ``torch.compile`` knows of the operator's result without running it: its shape and dtype."""
    return x.new_empty(x.size(0), qweight.size(0))


def kernel_loaded() -> bool:
    """Whether the kernel is built and loaded in this process (this never builds it)."""
    return _state.get("ready", False)


@torch.compiler.assume_constant_result
def kernel_ready() -> bool:
    """:func:`load_kernel`, called by ``torch.compile`` while it traces; the compiled graph keeps the answer."""
    return load_kernel()


def quantized_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                     group_size: int) -> torch.Tensor:
    """``F.linear(x, dequantize_tensor(qweight, scales, bits, group_size))`` by the kernel (after :func:`load_kernel`).

    Args:
        x: float32 ``[rows, in]``.
        qweight: int8 ``[out, in]`` (``bits=8``) or uint8 ``[out, in // 2]`` (``bits=4``).
        scales: float16 ``[out, in // group_size]``.
        bits: 8 or 4.
        group_size: inputs per scale.

    Returns:
        float32 ``[rows, out]``.
    """
    return torch.ops.llama.quantized_matmul(x.contiguous(), qweight, scales, bits, group_size)
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
