r"""The C++ of the kernel's other product, with the activations rounded to int8 (GGUF's ``Q8_0`` math).

``x`` is rounded to int8 per group of the weight, once per call; a group's products are then
integer sums (AVX-512 VNNI ``vpdpbusd``, AVX2 ``vpmaddubsw``, or plain C++), and one float multiply
per group adds each to its row. :mod:`llama.quantization.kernel_source` puts this section between
the float products it builds on and the operator that calls both.
"""

# --8<-- [start:int8_activations]
ROUNDED_SOURCE = r"""
// ----- int8 activations: the math of GGUF's Q8_0 x Q8_0 product -----------------------------------
// x is rounded once per call, per group of the weight: d = max|x_group| / 127, q = round(x / d).
// A group's products are then integers, summed exactly in int32; one float multiply per group
// (by its weight scale times d) adds them to the row's float sum.
struct Rounded {  // one row of x, in the buffers of a Workspace
  const int8_t* q;      // [n] the rounded values
  const float* d;       // [groups] their scales
  const int32_t* sum;   // [groups] sum of q: the offset of an unsigned operand (below)
  const int32_t* init;  // AVX-512, groups of 32: start of each pair of groups' int32 sums
  const int8_t* perm;   // AVX-512, int4: q of each pair of groups in the order of the nibbles
};

// The buffers of the rounded rows, one set per calling thread, kept from call to call: a decode
// step makes dozens of calls, and allocating them each time costs more than rounding a row.
struct Workspace {
  std::vector<int8_t> q, perm;
  std::vector<float> d;
  std::vector<int32_t> sum, init;
  std::vector<Rounded> rows;
};

// Rounds one group of x into q (the same rounding as PyTorch's reference: x / d, not x * (1 / d),
// to the nearest integer, ties to even); returns the sum of q.
int32_t round_group(const float* x, int64_t group, float d, int8_t* q) {
  int64_t i = 0;
  int32_t s = 0;
  if (d == 0) {
    std::fill_n(q, group, 0);
    return 0;
  }
#if defined(__AVX512F__)
  const __m512 vd = _mm512_set1_ps(d), hi = _mm512_set1_ps(127.f), lo = _mm512_set1_ps(-127.f);
  __m512i sums = _mm512_setzero_si512();
  for (; i + 16 <= group; i += 16) {
    __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + i), vd),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);  // ties to even
    __m512i v = _mm512_cvtps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, r)));
    _mm_storeu_si128((__m128i*)(q + i), _mm512_cvtepi32_epi8(v));
    sums = _mm512_add_epi32(sums, v);
  }
  s = _mm512_reduce_add_epi32(sums);
#endif
  for (; i < group; ++i) {
    q[i] = (int8_t)std::nearbyint(std::min(127.f, std::max(-127.f, x[i] / d)));
    s += q[i];
  }
  return s;
}

float group_absmax(const float* x, int64_t group) {
  int64_t i = 0;
  float amax = 0;
#if defined(__AVX512F__)
  __m512 m = _mm512_setzero_ps();
  for (; i + 16 <= group; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  amax = _mm512_reduce_max_ps(m);
#endif
  for (; i < group; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

// `count` values of a buffer that starts on a 64-byte boundary: the AVX-512 loads of pair_rows
// read 64 bytes at a time, and one that straddles two cache lines costs two reads.
template <class T>
T* aligned(std::vector<T>& v, int64_t count) {
  v.resize(count + 64 / sizeof(T));  // resize keeps the capacity: after the first calls, nothing is allocated
  const auto address = reinterpret_cast<std::uintptr_t>(v.data());
  return reinterpret_cast<T*>((address + 63) / 64 * 64);
}

// Rounds `rows` rows of x into the workspace; returns a Rounded per row, pointing into it.
const std::vector<Rounded>& round_rows(Workspace& w, const float* x, int64_t rows, int64_t n, int64_t group,
                                       int64_t bits) {
  const int64_t groups = n / group;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  const bool pairs = group == 32;  // the layout of pair_rows's two groups per register
#else
  const bool pairs = false;
#endif
  // per row; an odd last group gets a partner of zeros, so that pair_rows reads whole pairs of x
  const int64_t pair_count = pairs ? (groups + 1) / 2 : 0, padded = pairs ? 2 * pair_count : groups;
  int8_t* qs = aligned(w.q, rows * padded * group);
  float* ds = aligned(w.d, rows * padded);
  int32_t* sums = aligned(w.sum, rows * padded);
  int32_t* inits = aligned(w.init, rows * pair_count * 16);
  int8_t* perms = aligned(w.perm, bits == 4 ? rows * pair_count * 64 : 0);
  w.rows.clear();
  for (int64_t m = 0; m < rows; ++m) {
    int8_t* q = qs + m * padded * group;
    float* d = ds + m * padded;
    int32_t* sum = sums + m * padded;
    for (int64_t g = 0; g < groups; ++g) {
      d[g] = group_absmax(x + m * n + g * group, group) / 127.f;
      sum[g] = round_group(x + m * n + g * group, group, d[g], q + g * group);
    }
    std::fill_n(q + groups * group, (padded - groups) * group, 0);  // the zero partner, if any
    std::fill_n(d + groups, padded - groups, 0.f);
    std::fill_n(sum + groups, padded - groups, 0);
    int32_t* init = inits + m * pair_count * 16;
    int8_t* perm = bits == 4 ? perms + m * pair_count * 64 : nullptr;
    // see pair_rows: the offsets sit in lanes 0 and 8 (int8) or 0 and 4 (int4)
    for (int64_t p = 0; p < pair_count; ++p) {
      std::fill_n(init + 16 * p, 16, 0);
      init[16 * p] = (bits == 8 ? -128 : -8) * sum[2 * p];
      init[16 * p + (bits == 8 ? 8 : 4)] = (bits == 8 ? -128 : -8) * sum[2 * p + 1];
      if (perm)  // low nibbles of both groups, then high nibbles: x[0:16] of each, then x[16:32]
        for (int64_t k = 0; k < 4; ++k)
          std::copy_n(q + 64 * p + 32 * (k % 2) + 16 * (k / 2), 16, perm + 64 * p + 16 * k);
    }
    w.rows.push_back(Rounded{q, d, sum, init, perm});
  }
  return w.rows;
}

#if defined(__AVX2__)
float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
// 32 products of signed bytes w * x, in 8 int32 sums. The instructions multiply unsigned by
// signed bytes, so x's sign moves onto w: |x| * (sign(x) w).
__m256i dot32(__m256i w, __m256i x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
#else  // pairs summed in int16 (at most 2 * 127 * 127: no overflow), then in int32
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x)),
                           _mm256_set1_epi16(1));
#endif
}
__m256i dot32u(__m256i u, __m256i x) {  // u unsigned (int4's nibbles, 0..15), x signed
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
#endif
}
#endif

// sum_i w[i] x[i] over one group, exact, one value at a time (the compiler vectorises what it
// can). int4: byte j holds w[j] and w[j + group / 2] as nibbles u = w + 8: sum u x - 8 sum x.
template <int BITS>
int32_t group_dot(const uint8_t* w, const int8_t* x, int64_t group, int32_t xsum) {
  int32_t s = 0;
  if (BITS == 8) {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < group; ++i) s += int32_t((int8_t)w[i]) * x[i];
    return s;
  }
  const int64_t half = group / 2;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < half; ++j) s += (w[j] & 15) * x[j] + (w[j] >> 4) * x[half + j];
  return s - 8 * xsum;
}

#if defined(__AVX2__)
// The same for a group of a multiple of 32 values, in 8 int32 lanes (whose sum it is).
template <int BITS>
__m256i group_dot256(const uint8_t* w, const int8_t* x, int64_t group, int32_t xsum) {
  __m256i acc = _mm256_setzero_si256();
  if (BITS == 8) {
    for (int64_t i = 0; i < group; i += 32)
      acc = _mm256_add_epi32(acc, dot32(_mm256_loadu_si256((const __m256i*)(w + i)),
                                        _mm256_loadu_si256((const __m256i*)(x + i))));
    return acc;
  }
  const int64_t half = group / 2;
  const __m128i low4 = _mm_set1_epi8(15);
  for (int64_t j = 0; j < half; j += 16) {  // 16 bytes: 16 low nibbles (x[j:j+16]), 16 high (x[half+j:...])
    __m128i b = _mm_loadu_si128((const __m128i*)(w + j));
    __m256i u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), low4), _mm_and_si128(b, low4));
    __m256i xs = _mm256_loadu2_m128i((const __m128i*)(x + half + j), (const __m128i*)(x + j));
    acc = _mm256_add_epi32(acc, dot32u(u, xs));
  }
  return _mm256_add_epi32(acc, _mm256_zextsi128_si256(_mm_cvtsi32_si128(-8 * xsum)));
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// R outputs (rows q, q + row_bytes, ...) for groups of 32, into y[0..R): two groups per register, one
// instruction for their 64 products (vpdpbusd) of w + 128 (int8: w xor 0x80) or int4's nibbles, from
// sums that start at -128 sum(x) or -8 sum(x) (x.init) to take the offset back; as floats, times the
// pair's scales (lanes 0-7, 8-15 for int8; 0-3, 8-11 and 4-7, 12-15 for int4). x is loaded once for
// R rows, whose R sums are independent: the CPU overlaps one row's instructions with the next's.
template <int BITS, int R>
void pair_rows(const uint8_t* q, int64_t row_bytes, const Half* scale, int64_t groups, const Rounded& x, float* y) {
  const __m512i flip = _mm512_set1_epi8((char)0x80), low4 = _mm512_set1_epi8(15);
  const __m512i shift = _mm512_setr_epi64(0, 0, 0, 0, 0x0004000400040004, 0x0004000400040004,
                                          0x0004000400040004, 0x0004000400040004);
  const __m512i which = BITS == 8 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                                  : _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
  const int64_t ahead = std::max<int64_t>(8192, 2 * R * row_bytes);
  __m512 acc[R] = {};  // zeros
  for (int64_t g = 0; g < groups; g += 2) {
    const bool alone = g + 1 == groups;  // an odd last group: read only its bytes (x's partner is zeros)
    const __m512i init = _mm512_load_si512(x.init + 8 * g);
    const __m512i xs = _mm512_load_si512(BITS == 8 ? x.q + g * 32 : x.perm + g * 32);
    const __m128 d = _mm_castpd_ps(_mm_load_sd((const double*)(x.d + g)));
    for (int r = 0; r < R; ++r) {
      const uint8_t* w = q + r * row_bytes + g * BITS * 4;
      // Reading R rows side by side hides the order of the bytes from the CPU's prefetcher, which
      // then fetches late from memory: ask for the rows two blocks ahead, in their order in memory.
      if (R > 1) _mm_prefetch((const char*)(q + ahead + ((g / 2) * R + r) * BITS * 8), _MM_HINT_T0);
      __m512i u;
      if (BITS == 8) {
        u = _mm512_xor_si512(alone ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, w) : _mm512_loadu_si512(w), flip);
      } else {
        __m256i b = alone ? _mm256_maskz_loadu_epi8(0xFFFF, w) : _mm256_loadu_si256((const __m256i*)w);
        u = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(b), shift), low4);
      }
      const __m512i p = _mm512_dpbusd_epi32(init, u, xs);
      const Half* sr = scale + r * groups + g;  // the pair's two float16 scales, read as 32 bits
      const __m128 s = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(alone ? int32_t(sr->x) : *(const int32_t*)sr)), d);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(which, _mm512_castps128_ps512(s)), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = _mm512_reduce_add_ps(acc[r]);
}
#endif

// One output: sum over groups g of (scale[g] d[g]) * group_dot(g).
template <int BITS>
float row_rounded(const uint8_t* q, const Half* scale, const Rounded& x, int64_t n, int64_t group) {
  const int64_t groups = n / group, bytes = group * BITS / 8;
  int64_t g = 0;
  float total = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if (group == 32) {  // the AVX-512 loop, for one output
    pair_rows<BITS, 1>(q, 0, scale, groups, x, &total);
    return total;
  }
#endif
#if defined(__AVX2__)
  if (group % 32 == 0) {  // each group's int32 lanes become floats, times its scale, into 8 float sums
    __m256 acc = _mm256_setzero_ps();
    for (; g < groups; ++g)
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(group_dot256<BITS>(q + g * bytes, x.q + g * group, group, x.sum[g])),
                            _mm256_set1_ps(scale_of(scale + g) * x.d[g]), acc);
    total += hsum_ps(acc);
  }
#endif
  for (; g < groups; ++g)  // other group sizes, and CPUs without AVX2
    total += float(group_dot<BITS>(q + g * bytes, x.q + g * group, group, x.sum[g])) *
             (scale_of(scale + g) * x.d[g]);
  return total;
}
"""
# --8<-- [end:int8_activations]
