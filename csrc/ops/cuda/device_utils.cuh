// Device helpers shared by the CUDA kernels (ops/cuda/*.cu): fast/precise math per accumulation
// type, warp reductions, 16-byte vector loads and their width check.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>

namespace kdkernels::cuda {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

__device__ __forceinline__ float dexp(float x) { return __expf(x); }
__device__ __forceinline__ double dexp(double x) { return ::exp(x); }
__device__ __forceinline__ float dlog(float x) { return __logf(x); }
__device__ __forceinline__ double dlog(double x) { return ::log(x); }
__device__ __forceinline__ float dlog1p(float x) { return ::log1pf(x); }
__device__ __forceinline__ double dlog1p(double x) { return ::log1p(x); }
__device__ __forceinline__ float dexpm1(float x) { return ::expm1f(x); }
__device__ __forceinline__ double dexpm1(double x) { return ::expm1(x); }
__device__ __forceinline__ float dpow(float x, float y) { return ::powf(x, y); }
__device__ __forceinline__ double dpow(double x, double y) { return ::pow(x, y); }

// x / T as a rounded product that is never contracted into an fma with a later subtraction: the
// kernels compare, shift by and subtract tempered logits, so every use must see the same rounded
// value (an fma of x·inv_t − max keeps the exact product: at a tiny T, exp(±ulp) of the max overflowed).
__device__ __forceinline__ float temper(float x, float inv_t) { return __fmul_rn(x, inv_t); }
__device__ __forceinline__ double temper(double x, double inv_t) { return __dmul_rn(x, inv_t); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Vec {
  scalar_t v[VEC];
};

template <typename scalar_t>
int vec_width(int64_t inner, std::initializer_list<const void*> ptrs) {
  constexpr int bytes = 16;
  const int vec = bytes / static_cast<int>(sizeof(scalar_t));
  if (vec <= 1 || inner % vec) return 1;
  for (const void* p : ptrs) {
    if (p && reinterpret_cast<uintptr_t>(p) % bytes) return 1;
  }
  return vec;
}

}  // namespace kdkernels::cuda
