// Backend-neutral pieces of kdkernels::pearson_feature_loss (PKD), shared by the CPU kernel
// (ops/cpu/pearson_feature_loss_kernel.cpp) and the CUDA kernel (ops/cuda/...): the input checks
// and the per-channel statistics computed from the shifted sums of pass 1. Nothing here reads
// tensor data, so CUDA calls the checks on the host without a synchronisation.
//
// Per channel c, over its M = N·H·W values (x = s or t, K_x = the channel's first value):
//   pass 1:  Σu, Σv, Σu², Σv², Σuv  with u = s − K_s, v = t − K_t   (shifted: stable for |mean| ≫ std)
//   stats:   ū = Σu/M, C_ss = Σu² − Σu·ū (= Σ(s − μ_s)²), C_tt likewise, C_st = Σuv − Σu·v̄
//            σ_s = sqrt(C_ss / (M − 1)), a = 1 / (σ_s + ε), b = 1 / (σ_t + ε), ε = 1e-6
//            p = a (a C_ss − b C_st) / ((M − 1) σ_s), and p = 0 when σ_s = 0
//   pass 2:  ds = (s − K_s) − ū, dt = (t − K_t) − v̄, d = a·ds − b·dt   (d = ŝ − t̂)
//            loss_c = scale · Σ d² / 2,  ∂loss/∂s = scale · a · (d − p · ds)
// The gradient: with L = scale/2 Σ_i d_i², ∂ŝ_i/∂s_j = a (δ_ij − 1/M) − a² ds_i ∂σ_s/∂s_j and
// ∂σ_s/∂s_j = ds_j / ((M − 1) σ_s), so ∂L/∂s_j = scale · a · [d_j − mean(d) − p · ds_j] with
// a Σ_i d_i ds_i = a (a C_ss − b C_st); mean(d) = 0 (ŝ and t̂ have zero mean). At σ_s = 0 the
// derivative of σ_s is taken as 0 (as torch.std's backward does), so p = 0: no 0/0.
#pragma once

#include "common.h"

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace kdkernels {

constexpr const char* kPearsonOp = "kdkernels.pearson_feature_loss";
constexpr double kPearsonEps = 1e-6;  // MMRazor's PKDLoss: (x − mean) / (std + 1e-6)

// (N, C, H·W) and M = N·H·W of the checked inputs.
struct PearsonShape {
  int64_t N, C, HW, M;
};

inline PearsonShape check_pearson_inputs(const at::Tensor& student, const at::Tensor& teacher) {
  const char* op = kPearsonOp;
  TORCH_CHECK_VALUE(student.dim() == 4, op, ": student must have shape (N, C, H, W), got ",
                    student.sizes());
  TORCH_CHECK_VALUE(student.sizes() == teacher.sizes(), op,
                    ": student and teacher must have the same shape, got ", student.sizes(),
                    " and ", teacher.sizes());
  TORCH_CHECK_TYPE(student.scalar_type() == teacher.scalar_type(), op,
                   ": student and teacher must have the same dtype, got ", student.scalar_type(),
                   " and ", teacher.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(student.scalar_type()), op,
                   ": student must be a floating tensor, got ", student.scalar_type());
  TORCH_CHECK_VALUE(teacher.device() == student.device(), op,
                    ": teacher must be on student's device ", student.device(), ", got ",
                    teacher.device());
  const PearsonShape sh{student.size(0), student.size(1), student.size(2) * student.size(3),
                        student.size(0) * student.size(2) * student.size(3)};
  TORCH_CHECK_VALUE(sh.M >= 2, op,
                    ": student must hold at least 2 values per channel (N·H·W >= 2) for the "
                    "unbiased standard deviation, got shape ",
                    student.sizes());
  return sh;
}

// N·C·H·W, the divisor of "mean" (as a double: exact far beyond int32).
inline double pearson_numel(const PearsonShape& sh) {
  return static_cast<double>(sh.N) * static_cast<double>(sh.C) * static_cast<double>(sh.HW);
}

// ∂loss/∂(Σ d²/2) of the reduction: 1/(N·C·H·W) (mean), 1 (sum), 1/M per channel (none).
inline double pearson_grad_scale(Reduction red, const PearsonShape& sh) {
  return red == kMean ? 1.0 / pearson_numel(sh) : (red == kSum ? 1.0 : 1.0 / static_cast<double>(sh.M));
}

// The per-channel values pass 2 needs (see the top of this file).
template <typename T>
struct PearsonStats {
  T ks, kt;          // shifts: the channel's first student / teacher value
  T mean_u, mean_v;  // means of s − K_s, t − K_t
  T a, b;            // 1 / (σ_s + ε), 1 / (σ_t + ε)
  T p;               // coefficient of ds in the gradient
};

template <typename T>
C10_HOST_DEVICE inline PearsonStats<T> pearson_stats(T ks, T kt, T su, T sv, T suu, T svv, T suv,
                                                     T m, T eps) {
  const T mean_u = su / m, mean_v = sv / m;
  T css = suu - su * mean_u;
  T ctt = svv - sv * mean_v;
  css = css < T(0) ? T(0) : css;  // rounding; NaN stays NaN (the comparison is false)
  ctt = ctt < T(0) ? T(0) : ctt;
  const T cst = suv - su * mean_v;
  const T dof = m - T(1);
  const T sigma_s = hd_sqrt(css / dof), sigma_t = hd_sqrt(ctt / dof);
  const T a = T(1) / (sigma_s + eps), b = T(1) / (sigma_t + eps);
  const T p = sigma_s > T(0) ? a * (a * css - b * cst) / (dof * sigma_s) : T(0);
  return {ks, kt, mean_u, mean_v, a, b, p};
}

}  // namespace kdkernels
