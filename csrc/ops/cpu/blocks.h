// Shared pieces of the fused CPU kernels: fixed-size blocks and their ordered sums, dtype staging.
// The backend-neutral parts (reductions, argument structs and checks, the mean's normaliser, the
// bool → template dispatch) are in ../common.h.
#pragma once

#include "../common.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace kdkernels::cpu {

// Elements per reduction block. Partial sums are taken per block and added in block order, so the
// result does not depend on the number of threads or on how parallel_for splits the range.
constexpr int64_t kBlock = 4096;

template <typename acc_t>
acc_t ordered_sum(const std::vector<acc_t>& partials) {
  acc_t total = 0;
  for (acc_t v : partials) total += v;
  return total;
}

// Staging of one block in the accumulation type. float/double are used in place; half and
// bfloat16 are widened into `buf` (and narrowed back by store_from_acc).
template <typename scalar_t, typename acc_t>
inline const acc_t* load_as_acc(const scalar_t* src, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(src[i]);
    return buf;
  }
}

template <typename scalar_t, typename acc_t>
inline acc_t* acc_out(scalar_t* dst, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return dst;
  } else {
    return buf;
  }
}

template <typename scalar_t, typename acc_t>
inline void store_from_acc(const acc_t* src, int64_t n, scalar_t* dst) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

}  // namespace kdkernels::cpu
