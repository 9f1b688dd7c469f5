r"""The C++ source of :mod:`llama.quantization.kernel`'s one-row product, in the sections the chapter shows.

* ``kernel``: the products with ``x`` as it is, in float32: ``sum_g scale[o, g] * sum_i q[o, g, i]
  * x[g, i]``, with AVX-512 (16 floats a register), AVX2 (8) or plain C++ (1);
* the products of GGUF's ``Q8_0``, with ``x`` rounded to int8 per group, in
  :mod:`llama.quantization.rounded_source`, which is compiled after ``kernel``;
* ``operator``: ``torch.ops.llama.quantized_matmul``, which shares the output rows out among threads.

:func:`llama.quantization.kernel.load_kernel` compiles it for the CPU it runs on (``-march=native``), so the
``#if defined(__AVX512VNNI__)`` and ``__AVX2__`` blocks pick the instructions that CPU has.
"""

from llama.quantization.rounded_source import ROUNDED_SOURCE

# --8<-- [start:kernel]
KERNEL_SOURCE = r"""
// PyTorch's stable C++ interface (torch/csrc/stable): a few small headers, which compile in a
// fraction of the time <torch/library.h> and ATen's Tensor take.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Half.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

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
#else  // any other CPU: one float at a time (the compiler vectorises what it can)
constexpr int64_t W = 1;
typedef float vec;
vec zero() { return 0; }
vec load(const float* p) { return *p; }
vec fma(vec a, vec b, vec c) { return a * b + c; }
vec add(vec a, vec b) { return a + b; }
vec broadcast(float s) { return s; }
float sum(vec v) { return v; }
vec int8_to_floats(const int8_t* p) { return *p; }
void int4_to_floats(const uint8_t* p, vec& low, vec& high) { low = (*p & 15) - 8, high = (*p >> 4) - 8; }
#endif

using Half = torch::headeronly::Half;  // float16, as the scales are stored
#if defined(__F16C__)
float scale_of(const Half* s) { return _cvtsh_ss(s->x); }  // float16 -> float32, one instruction
#else
float scale_of(const Half* s) { return float(*s); }
#endif

// One output of int8: sum over groups g of scale[g] * sum_i q[g, i] * x[g, i].
float row_int8(const int8_t* q, const Half* scale, const float* x, int64_t n, int64_t group) {
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
float row_int4(const uint8_t* q, const Half* scale, const float* x, int64_t n, int64_t group) {
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

"""
# --8<-- [end:kernel]

KERNEL_SOURCE += ROUNDED_SOURCE  # the int8-activation products: llama.quantization.rounded_source


# --8<-- [start:operator]
KERNEL_SOURCE += r"""
// y[m, o] for every row m of x and output o; threads share out the outputs.
using torch::stable::Tensor;
using torch::headeronly::ScalarType;

Tensor quantized_matmul(Tensor x, Tensor qweight, Tensor scales, int64_t bits, int64_t group_size,
                        bool int8_activations) {
  STD_TORCH_CHECK(x.dim() == 2 && x.scalar_type() == ScalarType::Float && x.is_contiguous() && x.is_cpu(),
                  "quantized_matmul: x must be a contiguous float32 CPU matrix [rows, in]");
  STD_TORCH_CHECK(qweight.is_contiguous() && scales.is_contiguous() && scales.scalar_type() == ScalarType::Half,
                  "quantized_matmul: qweight and scales must be contiguous, scales float16");
  const int64_t rows = x.size(0), n = x.size(1), out = qweight.size(0);
  STD_TORCH_CHECK((bits == 8 || bits == 4) && group_size > 0 && group_size % 2 == 0 && n % group_size == 0 &&
                  qweight.dim() == 2 && qweight.size(1) == n * bits / 8 && qweight.element_size() == 1 &&
                  scales.dim() == 2 && scales.size(0) == out && scales.size(1) == n / group_size,
                  "quantized_matmul: the shapes of x, qweight and scales do not fit bits and group_size");
  // The output, made by the C function that torch's compiled code calls: torch::stable::new_empty
  // goes through the dispatcher, which a small layer's call would notice.
  const int64_t sizes[2] = {rows, out}, strides[2] = {out, 1};
  AtenTensorHandle handle;
  STD_TORCH_CHECK(aoti_torch_empty_strided(2, sizes, strides, aoti_torch_dtype_float32(),
                                           aoti_torch_device_type_cpu(), 0, &handle) == AOTI_TORCH_SUCCESS,
                  "quantized_matmul: the output could not be allocated");
  Tensor y(handle);
  const float* xs = x.const_data_ptr<float>();
  const auto* qs = static_cast<const uint8_t*>(qweight.const_data_ptr());
  const Half* ss = static_cast<const Half*>(scales.const_data_ptr());
  float* ys = y.mutable_data_ptr<float>();
  const int64_t row_bytes = qweight.size(1), groups = n / group_size;
  thread_local Workspace workspace;  // x rounded to int8, once per call, into buffers kept between calls
  static const std::vector<Rounded> none;
  const std::vector<Rounded>& rounded = int8_activations ? round_rows(workspace, xs, rows, n, group_size, bits) : none;
  // A thread gets at least 32 KiB of weights: waking one costs more than reading less. Timed one call
  // at a time on a 2-core AVX-512 EPYC, a 128 x 288 int8 product (36 KiB) ran no faster on two threads
  // than on one, a 288 x 288 one (81 KiB) did; this splits from 64 KiB.
  torch::stable::parallel_for(0, out, std::max<int64_t>(1, 32768 / row_bytes), [&](int64_t begin, int64_t end) {
    int64_t o = begin;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    if (int8_activations && group_size == 32)  // four outputs at a time (see pair_rows)
      for (; o + 4 <= end; o += 4)
        for (int64_t m = 0; m < rows; ++m)
          (bits == 8 ? pair_rows<8, 4> : pair_rows<4, 4>)(qs + o * row_bytes, row_bytes, ss + o * groups, groups,
                                                           rounded[m], ys + m * out + o);
#endif
    for (; o < end; ++o) {
      const uint8_t* q = qs + o * row_bytes;
      for (int64_t m = 0; m < rows; ++m)
        ys[m * out + o] = int8_activations
            ? (bits == 8 ? row_rounded<8>(q, ss + o * groups, rounded[m], n, group_size)
                         : row_rounded<4>(q, ss + o * groups, rounded[m], n, group_size))
            : (bits == 8 ? row_int8((const int8_t*)q, ss + o * groups, xs + m * n, n, group_size)
                         : row_int4(q, ss + o * groups, xs + m * n, n, group_size));
    }
  });
  return y;
}
}  // namespace

STABLE_TORCH_LIBRARY(llama, m) {
  m.def("quantized_matmul(Tensor x, Tensor qweight, Tensor scales, int bits, int group_size, "
        "bool int8_activations=False) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(llama, CPU, m) {
  m.impl("quantized_matmul", TORCH_BOX(&quantized_matmul));
}
"""
# --8<-- [end:operator]
