// Backend-neutral pieces of kdkernels::decoupled_kd (DKD, Zhao et al. 2022), shared by the CPU
// kernel (ops/cpu/decoupled_kd_kernel.cpp) and the CUDA kernel (ops/cuda/decoupled_kd_kernel.cu):
// the argument and input checks, and the per-row finish from the sums of one pass over the row.
// Nothing here reads tensor data, so CUDA calls the checks on the host without a synchronisation.
//
// One row of K logits with target g, tempered a = t/T (teacher), b = s/T (student):
//   non-target log-sum-exp  L_a = log Σ_{k≠g} exp(a_k),  L_b likewise
//   NCKD = Σ_{k≠g} p̂_k (a_k − b_k) + L_b − L_a,   p̂_k = exp(a_k − L_a),  q̂_k = exp(b_k − L_b)
//   TCKD = binary KL over [p_g, 1 − p_g] = Bernoulli KL(σ(u_t) ‖ σ(u_s)),
//          u_t = a_g − L_a, u_s = b_g − L_b   (p_g = softmax(a)_g = σ(u_t))
//        = σ(u_t)(u_t − u_s) + softplus(u_s) − softplus(u_t)
//   row  = T² (α TCKD + β NCKD)
// The one pass over the row keeps the non-target maxima m_a, m_b and
//   z_a = Σ_{k≠g} exp(a_k − m_a),  z_b likewise,  d = Σ_{k≠g} exp(a_k − m_a)(a_k − b_k)
// so L_a = m_a + log z_a and Σ p̂ (a − b) = d / z_a. The target is never inside a sum: a target
// logit far above the others (a confident teacher) neither overflows nor cancels, unlike
// 1 − p_g computed as a difference.
// Gradient w.r.t. b (δ = σ(u_s) − σ(u_t)):  ∂TCKD/∂b_g = δ,  ∂TCKD/∂b_k = −δ q̂_k (k ≠ g),
//   ∂NCKD/∂b_k = q̂_k − p̂_k (k ≠ g), 0 for g. So with the row's scale G (∂/∂s = T·∂/∂b · scale):
//   grad_k = gq · exp(b_k − m_b) − gp · exp(a_k − m_a)  (k ≠ g),  grad_g = G α δ
//   gq = G (β − α δ) / z_b,  gp = G β / z_a.
#pragma once

#include "common.h"

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace kdkernels {

constexpr const char* kDkdOp = "kdkernels.decoupled_kd";

// The schema arguments of decoupled_kd, checked; any backend.
struct DkdArgs {
  double temperature, alpha, beta;
  Reduction reduction;
  bool compute_grad;

  static DkdArgs parse(double temperature, double alpha, double beta, c10::string_view reduction,
                       bool compute_grad) {
    const char* op = kDkdOp;
    return {check_positive(temperature, op, "temperature"), check_non_negative(alpha, op, "alpha"),
            check_non_negative(beta, op, "beta"), parse_reduction(reduction, op), compute_grad};
  }
};

// (B, K) logits and (B,) int64 labels, metadata only (the label values are checked by the CPU
// kernel while it reads them; CUDA writes NaN for a row whose label is out of range).
inline RowShape check_dkd_inputs(const at::Tensor& student, const at::Tensor& teacher,
                                 const at::Tensor& labels) {
  const char* op = kDkdOp;
  const RowShape sh = check_row_inputs(student, teacher, std::nullopt, op);
  TORCH_CHECK_VALUE(sh.K >= 2, op, ": student_logits must have K >= 2 classes, got ", sh.K);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == sh.R, op,
                    ": labels must be (B,) with one class index per row (", sh.R, "), got shape ",
                    labels.sizes());
  TORCH_CHECK_VALUE(labels.device() == student.device(), op,
                    ": labels must be on student_logits' device ", student.device());
  return sh;
}

// softplus(x) and σ(x) from one exp(−|x|).
template <typename T>
C10_HOST_DEVICE inline void dkd_softplus_sigmoid(T x, T& softplus, T& sigmoid) {
  const T e = hd_exp(x < T(0) ? x : -x);
  const T inv = T(1) / (T(1) + e);
  softplus = (x > T(0) ? x : T(0)) + hd_log1p(e);
  sigmoid = x >= T(0) ? inv : e * inv;
}

// The per-call constants of the kernels: 1/T, T², α, β and the gradient scale G = T / den, with
// den = B for "mean", 1 otherwise (∂/∂s = T·∂/∂b / den).
template <typename T>
struct DkdConsts {
  T inv_t, t2, alpha, beta, G;

  static DkdConsts make(const DkdArgs& a, double den) {
    return {static_cast<T>(1.0 / a.temperature), static_cast<T>(a.temperature * a.temperature),
            static_cast<T>(a.alpha), static_cast<T>(a.beta), static_cast<T>(a.temperature / den)};
  }
};

// The sums of one pass over a row (see the top of this file), and the target's tempered logits.
template <typename T>
struct DkdRowSums {
  T ma, mb, za, zb, d, ag, bg;
};

// The row's loss (T² (α TCKD + β NCKD)) and its gradient coefficients for the scale G.
template <typename T>
struct DkdRow {
  T loss, gq, gp, g_target;
};

template <typename T>
C10_HOST_DEVICE inline DkdRow<T> dkd_finish_row(const DkdRowSums<T>& r, T alpha, T beta, T t2, T G) {
  const T la = r.ma + hd_log(r.za), lb = r.mb + hd_log(r.zb);
  const T nckd = r.d / r.za + lb - la;
  const T ut = r.ag - la, us = r.bg - lb;
  T sp_t, p_t, sp_s, q_s;
  dkd_softplus_sigmoid(ut, sp_t, p_t);
  dkd_softplus_sigmoid(us, sp_s, q_s);
  const T tckd = p_t * (ut - us) + sp_s - sp_t;
  const T loss = t2 * (alpha * tckd + beta * nckd);
  // A NaN or ±inf row loss (e.g. an infinite target logit, where σ saturates and δ stays finite)
  // makes the whole row's gradient NaN, as autograd through the formula does: NaN in, NaN out.
  const T poison = loss * T(0);
  const T delta = q_s - p_t + poison;
  return {loss, G * (beta - alpha * delta) / r.zb + poison, G * beta / r.za + poison,
          G * alpha * delta};
}

}  // namespace kdkernels
