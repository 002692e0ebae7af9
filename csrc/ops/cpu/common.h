// Shared pieces of the fused CPU kernels: reduction codes, fixed-size blocks, dtype staging.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace kdkernels::cpu {

// Matches kdkernels/_registry.py REDUCTIONS.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

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

inline Reduction parse_reduction(c10::string_view r) {
  if (r == "none") return kNone;
  if (r == "mean") return kMean;
  if (r == "sum") return kSum;
  TORCH_CHECK(false, "reduction must be one of 'none', 'mean', 'sum', got '", r, "'");
}

// mode "softmax" (true) or "sigmoid" (false)
inline bool parse_softmax(c10::string_view mode, const char* op) {
  TORCH_CHECK(mode == "softmax" || mode == "sigmoid", op,
              ": mode must be 'softmax' or 'sigmoid', got '", mode, "'");
  return mode == "softmax";
}

// Parameters of the row-wise losses (soft_label_kl, adaptive_distillation_loss), any backend.
struct RowLossArgs {
  double temperature;
  bool softmax;
  bool adaptive;
  double beta;
  double gamma;
  bool detach_weight;
  Reduction reduction;
  double eps;
  bool compute_grad;
};

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace kdkernels::cpu
