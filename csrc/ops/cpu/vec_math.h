// Branch-free elementwise math that GCC/Clang auto-vectorise, plus the ISA dispatch macro.
//
// The ATen `at::vec::Vectorized` ISA is fixed when an extension is compiled (an extension built
// with portable flags only gets the scalar fallback, whose exp/log are per-lane libm calls). We
// instead write the hot loops over plain float arrays with the branch-free exp/log below and let
// the compiler emit one clone per ISA (`KDK_TARGET_CLONES`), selected at load time through an
// ifunc. The binary stays portable (no -march=native) and runs AVX-512 / AVX2+FMA code where the
// CPU has it. float64 uses libm (it is the precise path for tests and gradcheck).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(KDK_NO_CLONES)
#define KDK_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define KDK_CLONES_ENABLED 1
#else
#define KDK_TARGET_CLONES
#define KDK_CLONES_ENABLED 0
#endif

#define KDK_INLINE inline __attribute__((always_inline))

namespace kdkernels::vmath {

// Bit casts that compile as C++17 (torch <= 2.11 builds extensions with -std=c++17, where
// std::bit_cast does not exist) and C++20. __builtin_bit_cast (GCC >= 11, Clang >= 9) is what
// std::bit_cast is built on: a value operation, so it vectorises inside `omp simd` loops (no
// address-taken local, which such a loop would turn into a per-lane array in memory). The memcpy
// fallback is for compilers without it (-DKDK_NO_BUILTIN_BIT_CAST forces it; GCC 12 folds it and
// still vectorises). python_tests/test_cmake_build.py checks both, at -std=c++17 and c++20.
#if defined(__has_builtin) && !defined(KDK_NO_BUILTIN_BIT_CAST)
#if __has_builtin(__builtin_bit_cast)
#define KDK_HAS_BUILTIN_BIT_CAST 1
#endif
#endif

template <typename To, typename From>
KDK_INLINE To bit_cast_(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast_ needs types of one size");
#ifdef KDK_HAS_BUILTIN_BIT_CAST
  return __builtin_bit_cast(To, from);
#else
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
#endif
}

KDK_INLINE float bits_to_float(int32_t b) { return bit_cast_<float>(b); }
// The bits of a float / double as a same-size integer (compare bit patterns, e.g. +0 vs -0).
KDK_INLINE int32_t bits_of(float f) { return bit_cast_<int32_t>(f); }
KDK_INLINE int64_t bits_of(double d) { return bit_cast_<int64_t>(d); }

// False only for +0 (the masked-out marker of the masked MSE; −0, NaN and every other value are
// true). Float compares and copysign (bitwise and/or): with `|`, not `||`, the loop that calls it
// stays branch-free and vectorises at every ISA level, float64 on baseline SSE2 included (a 64-bit
// integer compare of the bits would need SSE4.1).
template <typename T>
KDK_INLINE bool not_plus_zero(T m) {
  return (m != T(0)) | (std::copysign(T(1), m) < T(0));
}

// exp(x), Cephes polynomial, ~1 ulp on [-87, 88]; 0 below -87.3, clamped above 88.3.
KDK_INLINE float exp_(float x) {
  const float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  // round to nearest with the 1.5*2^23 trick (vectorises without SSE4.1 roundps)
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const float scale = bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.3f ? 0.0f : p * scale;
}

// log(x) for normal x > 0 (Cephes logf, ~1 ulp).
KDK_INLINE float log_(float x) {
  const int32_t bits = bits_of(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = bits_to_float((bits & 0x807fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// log1p(y) for y >= 0: log(u) * y / (u - 1) with u = 1 + y keeps full relative precision.
KDK_INLINE float log1p_(float y) {
  const float u = 1.0f + y;
  const float d = u - 1.0f;
  return d == 0.0f ? y : log_(u) * (y / d);
}

// 1 - exp(-d) for d >= 0, accurate for small d.
KDK_INLINE float one_minus_exp_neg_(float d) {
  const float series = d * (1.0f - d * (0.5f - d * (1.0f / 6.0f)));
  return d < 1e-3f ? series : 1.0f - exp_(-d);
}

KDK_INLINE double exp_(double x) { return std::exp(x); }
KDK_INLINE double log_(double x) { return std::log(x); }
KDK_INLINE double log1p_(double y) { return std::log1p(y); }
KDK_INLINE double one_minus_exp_neg_(double d) { return -std::expm1(-d); }

// softplus(x) = log(1 + e^x) and sigmoid(x), both from the one e = exp(-|x|) (exp_neg_abs).
// Scalar returns only: a struct or out-reference inside an `omp simd` loop becomes a per-lane
// array in memory and stops the vectoriser.
template <typename T>
KDK_INLINE T exp_neg_abs(T x) { return exp_(x < T(0) ? x : -x); }
template <typename T>
KDK_INLINE T softplus_from(T x, T e) { return (x > T(0) ? x : T(0)) + log1p_(e); }
template <typename T>
KDK_INLINE T sigmoid_from(T x, T e) {
  const T inv = T(1) / (T(1) + e);
  return x >= T(0) ? inv : e * inv;
}

// e^gamma for e in [0, 1]; 0^gamma = 0 for gamma > 0, and 1 for gamma == 0 (the caller's case).
template <typename T>
KDK_INLINE T pow_unit_(T e, T gamma) {
  return e > T(1e-30) ? exp_(gamma * log_(e)) : T(0);
}

}  // namespace kdkernels::vmath
