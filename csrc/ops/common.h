// Backend-neutral pieces of the native loss ops, included by the CPU kernels (ops/cpu/) and the
// CUDA unit (ops/cuda/): the reduction and mode codes, the argument structs built from the schema
// arguments with their value checks, the tensor metadata checks, the mean's normaliser, and the
// runtime-bool → template-parameter dispatch. Nothing here reads tensor data, so CUDA can call all
// of it on the host without a synchronisation. Must compile as C++17 (torch <= 2.11) and C++20.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>

namespace kdkernels {

// Matches kdkernels/_validate.py REDUCTIONS.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

// Errors are ValueErrors in Python (TORCH_CHECK_VALUE) and start with the op name,
// "kdkernels.<op>: <argument> must be …, got …".
inline Reduction parse_reduction(c10::string_view r, const char* op) {
  if (r == "none") return kNone;
  if (r == "mean") return kMean;
  if (r == "sum") return kSum;
  TORCH_CHECK_VALUE(false, op, ": reduction must be one of 'none', 'mean', 'sum', got '", r, "'");
}

// mode "softmax" (true) or "sigmoid" (false)
inline bool parse_softmax(c10::string_view mode, const char* op) {
  TORCH_CHECK_VALUE(mode == "softmax" || mode == "sigmoid", op,
                    ": mode must be 'softmax' or 'sigmoid', got '", mode, "'");
  return mode == "softmax";
}

inline double check_finite(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), op, ": ", name, " must be a finite number, got ", v);
  return v;
}
inline double check_positive(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v) && v > 0, op, ": ", name, " must be a finite number > 0, got ", v);
  return v;
}
inline double check_non_negative(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v) && v >= 0, op, ": ", name,
                    " must be a finite number >= 0, got ", v);
  return v;
}

// The schema arguments of soft_label_kl and adaptive_distillation_loss, checked; any backend.
struct RowLossArgs {
  const char* op;  // "kdkernels.<op>", the prefix of every error message
  double temperature;
  bool softmax;
  bool adaptive;
  double beta;
  double gamma;
  bool detach_weight;
  Reduction reduction;
  double eps;
  bool compute_grad;

  static RowLossArgs soft_label_kl(double temperature, c10::string_view mode,
                                   c10::string_view reduction, double eps, bool compute_grad) {
    const char* op = "kdkernels.soft_label_kl";
    return {op,
            check_positive(temperature, op, "temperature"),
            parse_softmax(mode, op),
            /*adaptive=*/false,
            0.0,
            0.0,
            false,
            parse_reduction(reduction, op),
            check_positive(eps, op, "eps"),
            compute_grad};
  }

  static RowLossArgs adaptive_distillation_loss(double temperature, double beta, double gamma,
                                                c10::string_view mode, bool detach_weight,
                                                c10::string_view reduction, double eps,
                                                bool compute_grad) {
    const char* op = "kdkernels.adaptive_distillation_loss";
    return {op,
            check_positive(temperature, op, "temperature"),
            parse_softmax(mode, op),
            /*adaptive=*/true,
            check_non_negative(beta, op, "beta"),
            check_non_negative(gamma, op, "gamma"),
            detach_weight,
            parse_reduction(reduction, op),
            check_positive(eps, op, "eps"),
            compute_grad};
  }
};

// The schema arguments of separable_weighted_mse, checked; any backend.
struct SeparableMseArgs {
  const char* op;
  Reduction reduction;
  double eps;
  bool compute_grad;

  static SeparableMseArgs parse(c10::string_view reduction, double eps, bool compute_grad) {
    const char* op = "kdkernels.separable_weighted_mse";
    return {op, parse_reduction(reduction, op), check_positive(eps, op, "eps"), compute_grad};
  }
};

// (N, C, H·W) of separable_weighted_mse's inputs, after the metadata checks (shapes, dtypes,
// devices; no data is read).
struct FeatureShape {
  int64_t N, C, HW;
};

inline FeatureShape check_separable_inputs(const at::Tensor& student, const at::Tensor& teacher,
                                           const at::Tensor& spatial_weight,
                                           const std::optional<at::Tensor>& channel_weight,
                                           const char* op) {
  TORCH_CHECK_VALUE(student.dim() == 4 && student.sizes() == teacher.sizes(), op,
                    ": student and teacher must be (N, C, H, W) of one shape, got ",
                    student.sizes(), " and ", teacher.sizes());
  TORCH_CHECK_TYPE(student.scalar_type() == teacher.scalar_type(), op,
                   ": student and teacher must share a dtype, got ", student.scalar_type(),
                   " and ", teacher.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(student.scalar_type()) &&
                       at::isFloatingType(spatial_weight.scalar_type()),
                   op, ": student, teacher and spatial_weight must be floating tensors");
  TORCH_CHECK_VALUE(teacher.device() == student.device() &&
                        spatial_weight.device() == student.device(),
                    op, ": teacher and spatial_weight must be on student's device ",
                    student.device());
  const FeatureShape sh{student.size(0), student.size(1), student.size(2) * student.size(3)};
  TORCH_CHECK_VALUE(spatial_weight.numel() == sh.N * sh.HW, op,
                    ": spatial_weight must hold N*H*W = ", sh.N * sh.HW, " values, got shape ",
                    spatial_weight.sizes());
  if (channel_weight.has_value() && channel_weight->defined()) {
    const at::Tensor& wc = *channel_weight;
    TORCH_CHECK_VALUE(wc.dim() == 2 && wc.size(0) == sh.N && wc.size(1) == sh.C, op,
                      ": channel_weight must be (N, C) = (", sh.N, ", ", sh.C, "), got shape ",
                      wc.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(wc.scalar_type()), op,
                     ": channel_weight must be a floating tensor, got ", wc.scalar_type());
    TORCH_CHECK_VALUE(wc.device() == student.device(), op,
                      ": channel_weight must be on student's device ", student.device());
  }
  return sh;
}

// (R, K) of the row losses' logits, after the metadata checks.
struct RowShape {
  int64_t R, K;
};

inline RowShape check_row_inputs(const at::Tensor& student, const at::Tensor& teacher,
                                 const std::optional<at::Tensor>& weight, const char* op) {
  TORCH_CHECK_VALUE(student.dim() == 2 && student.sizes() == teacher.sizes(), op,
                    ": student_logits and teacher_logits must be (R, K) of one shape, got ",
                    student.sizes(), " and ", teacher.sizes());
  TORCH_CHECK_TYPE(student.scalar_type() == teacher.scalar_type(), op,
                   ": student_logits and teacher_logits must share a dtype, got ",
                   student.scalar_type(), " and ", teacher.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(student.scalar_type()), op,
                   ": student_logits must be a floating tensor");
  TORCH_CHECK_VALUE(teacher.device() == student.device(), op,
                    ": teacher_logits must be on student_logits' device ", student.device());
  const RowShape sh{student.size(0), student.size(1)};
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK_VALUE(weight->numel() == sh.R, op, ": weight must hold one value per row (",
                      sh.R, "), got shape ", weight->sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(weight->scalar_type()), op,
                     ": weight must be a floating tensor, got ", weight->scalar_type());
    TORCH_CHECK_VALUE(weight->device() == student.device(), op,
                      ": weight must be on student_logits' device ", student.device());
  }
  return sh;
}

// Accumulation dtype: float64 for float64, float32 for float32/float16/bfloat16.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// eps in the accumulation type, raised to that type's smallest normal value: eps = 1e-300 would
// round to 0 in float32, and max(Σ, 0) could then be a 0 denominator.
template <typename acc_t>
inline acc_t clamp_eps(double eps) {
  const acc_t e = static_cast<acc_t>(eps);
  const acc_t lo = std::numeric_limits<acc_t>::min();
  return e > lo ? e : lo;
}
inline double clamp_eps(double eps, at::ScalarType acc) {
  return acc == at::kDouble ? clamp_eps<double>(eps) : static_cast<double>(clamp_eps<float>(eps));
}

// The mean's denominator mult · max(sum, eps), where `sum` is the normaliser (Σ w_s of the
// separable MSE, Σ w_r or R of the row losses). Returns exactly 0 when the normaliser is exactly 0
// (empty mask, all-zero weights, no rows): the caller then returns a loss of 0 and an all-zero
// gradient, whatever eps is. Otherwise the result is > 0 (eps from clamp_eps), or NaN for a NaN sum (NaN is
// propagated, never hidden by the max).
template <typename T>
C10_HOST_DEVICE inline T mean_denominator(T sum, T eps, T mult) {
  if (sum == T(0)) return T(0);
  return mult * (sum > eps ? sum : (sum <= eps ? eps : sum));
}

// libm functions callable from host and device code (the shared per-row / per-channel finishing
// code of ../decoupled_kd.h and ../pearson_feature_loss.h): the CUDA overloads on the device,
// std:: on the host; float and double.
template <typename T>
C10_HOST_DEVICE inline T hd_log(T x) {
#ifdef __CUDA_ARCH__
  return ::log(x);
#else
  return std::log(x);
#endif
}
template <typename T>
C10_HOST_DEVICE inline T hd_exp(T x) {
#ifdef __CUDA_ARCH__
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
template <typename T>
C10_HOST_DEVICE inline T hd_log1p(T x) {
#ifdef __CUDA_ARCH__
  return ::log1p(x);
#else
  return std::log1p(x);
#endif
}
template <typename T>
C10_HOST_DEVICE inline T hd_sqrt(T x) {
#ifdef __CUDA_ARCH__
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// Runtime bools → template parameters, written once for every backend: calls
// f(std::bool_constant<b0>{}, std::bool_constant<b1>{}, …) with the values of the bools, in order,
// so one call instantiates all 2^n variants. In f, `decltype(c)::value` is the constexpr bool:
//   dispatch_bools([&](auto softmax, auto grad) {
//     run<decltype(softmax)::value, decltype(grad)::value>(…);
//   }, args.softmax, args.compute_grad);
template <typename F>
decltype(auto) dispatch_bools(F&& f) {
  return std::forward<F>(f)();
}
template <typename F, typename... Bools>
decltype(auto) dispatch_bools(F&& f, bool b, Bools... rest) {
  if (b) {
    return dispatch_bools([&](auto... c) -> decltype(auto) { return f(std::true_type{}, c...); },
                          rest...);
  }
  return dispatch_bools([&](auto... c) -> decltype(auto) { return f(std::false_type{}, c...); },
                        rest...);
}

}  // namespace kdkernels
