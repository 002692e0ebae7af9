// Row-wise distillation losses shared by soft_label_kl and adaptive_distillation_loss (CPU).
//
// On tempered logits a = t/T, b = s/T of one row of K classes:
//   sigmoid, per class: p = σ(a), q = σ(b)
//       KL = p (a − b) + softplus(b) − softplus(a)          (= Bernoulli KL(p‖q))
//       H  = softplus(a) − p a                              (= Bernoulli entropy of p)
//       ∂KL/∂b = q − p
//   softmax, per row: p = softmax(a), q = softmax(b)
//       KL = Σ p (a − b) + lse(b) − lse(a),   H = lse(a) − Σ p a,   ∂KL/∂b = q − p
//   adaptive (ADL, Tang et al. 2019): D = KL + β H, e = 1 − exp(−D), w = e^γ, loss = w · KL
//       ∂loss/∂b = (q − p) · (w + γ KL e^(γ−1) exp(−D))  (the second term is dropped with detach_weight)
// Row loss = T² · (sum over classes for sigmoid); gradient to s = T · (q − p) · factor · w_r / norm.
#pragma once

#include "blocks.h"
#include "vec_math.h"

#include <limits>

namespace kdkernels::cpu {

template <typename acc_t>
struct RowConsts {
  acc_t inv_t;        // 1 / T
  acc_t t2;           // T²
  acc_t beta;         // ADL β
  acc_t gamma;        // ADL γ
  acc_t weight_grad;  // 1: gradient through the adaptive weight, 0: detach_weight
};

// The adaptive weight w = e^γ (γ = 0 gives the constant weight 1) and dw/de; scalar returns so
// the loops that call them vectorise.
template <typename acc_t>
KDK_INLINE acc_t adaptive_weight(acc_t e, acc_t gamma) {
  return gamma == acc_t(0) ? acc_t(1) : vmath::pow_unit_(e, gamma);
}
template <typename acc_t>
KDK_INLINE acc_t adaptive_weight_de(acc_t e, acc_t gamma, acc_t w) {
  return e > acc_t(0) ? gamma * w / e : acc_t(0);
}

// Sigmoid mode is elementwise: a block of rows is processed as one flat run of n elements (so the
// vector loop does not depend on K; with K = 4 a per-row loop would run its scalar, branchy
// epilogue on every element). g: the gradient factor of each element (its row's), loss: each
// element's KL or w·KL, summed per row by the caller.
template <typename acc_t, bool kGrad, bool kAdaptive>
KDK_INLINE void sigmoid_elems(const acc_t* s, const acc_t* t, int64_t n, const RowConsts<acc_t>& c,
                              const acc_t* g, acc_t* grad, acc_t* loss) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = t[i] * c.inv_t;
    const acc_t b = s[i] * c.inv_t;
    const acc_t ea = vmath::exp_neg_abs(a), eb = vmath::exp_neg_abs(b);
    const acc_t spa = vmath::softplus_from(a, ea), p = vmath::sigmoid_from(a, ea);
    const acc_t spb = vmath::softplus_from(b, eb), q = vmath::sigmoid_from(b, eb);
    const acc_t kl = p * (a - b) + spb - spa;
    if constexpr (!kAdaptive) {
      loss[i] = kl;
      if constexpr (kGrad) grad[i] = g[i] * (q - p);
    } else {
      const acc_t h = spa - p * a;
      acc_t d = kl + c.beta * h;
      d = d > acc_t(0) ? d : acc_t(0);
      const acc_t e = vmath::one_minus_exp_neg_(d);
      const acc_t w = adaptive_weight(e, c.gamma);
      loss[i] = w * kl;
      if constexpr (kGrad) {
        const acc_t dw_de = adaptive_weight_de(e, c.gamma, w);
        grad[i] = g[i] * (q - p) * (w + c.weight_grad * kl * dw_de * (acc_t(1) - e));
      }
    }
  }
}

// One row's softmax sums on the shifted tempered logits da = (t − max t)/T, db = (s − max s)/T
// (both <= 0): za = Σ exp(da), zb = Σ exp(db), sd = Σ exp(da)·(da − db) and, for ADL,
// sa = Σ exp(da)·da. The exps are written to ea/eb (K values each) for the gradient pass. Then
//   KL = sd / za + log zb − log za,   H = log za − sa / za
// (the maxima cancel: no large lse(a), lse(b) to subtract). Shifting before scaling keeps the
// max's exponent exactly 0 at any T: scaling first, a compiler may contract t/T − max into an
// fma whose rounding differs from the max's (a tiny T then made exp(±ulp(t/T)) overflow).
template <typename acc_t>
struct SoftmaxSums {
  acc_t za, zb, sd, sa;
};

template <typename acc_t, bool kAdaptive>
KDK_INLINE SoftmaxSums<acc_t> softmax_sums(const acc_t* s, const acc_t* t, int64_t K,
                                           const RowConsts<acc_t>& c, acc_t* ea, acc_t* eb) {
  acc_t ma = -std::numeric_limits<acc_t>::infinity(), mb = ma;
#pragma omp simd reduction(max : ma, mb)
  for (int64_t k = 0; k < K; ++k) {
    ma = t[k] > ma ? t[k] : ma;
    mb = s[k] > mb ? s[k] : mb;
  }
  acc_t za = 0, zb = 0, sd = 0, sa = 0;
#pragma omp simd reduction(+ : za, zb, sd, sa)
  for (int64_t k = 0; k < K; ++k) {
    const acc_t da = (t[k] - ma) * c.inv_t;
    const acc_t db = (s[k] - mb) * c.inv_t;
    const acc_t x = vmath::exp_(da);
    const acc_t y = vmath::exp_(db);
    ea[k] = x;
    eb[k] = y;
    za += x;
    zb += y;
    sd += x * (da - db);
    if constexpr (kAdaptive) sa += x * da;
  }
  return {za, zb, sd, sa};
}

// grad = gq · eb − gp · ea over one row of K.
template <typename acc_t>
KDK_INLINE void softmax_grad_row(const acc_t* ea, const acc_t* eb, int64_t K, acc_t gp, acc_t gq,
                                 acc_t* grad) {
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) grad[k] = gq * eb[k] - gp * ea[k];
}

// Softmax KL of one row (the non-adaptive path: with only two logs of per-row math, one row at a
// time in L1 measured faster than the three-pass block below). ea/eb: scratch of K values.
template <typename acc_t, bool kGrad>
KDK_INLINE acc_t softmax_kl_row(const acc_t* s, const acc_t* t, int64_t K,
                                const RowConsts<acc_t>& c, acc_t g, acc_t* grad, acc_t* ea,
                                acc_t* eb) {
  const SoftmaxSums<acc_t> m = softmax_sums<acc_t, false>(s, t, K, c, ea, eb);
  const acc_t kl = m.sd / m.za + std::log(m.zb) - std::log(m.za);
  if constexpr (kGrad) softmax_grad_row(ea, eb, K, g / m.za, g / m.zb, grad);
  return kl * c.t2;
}

// Softmax ADL over a block of rows, in three passes so that the per-row scalar math (two logs,
// the adaptive weight's exp and pow) runs as one vector loop over the rows instead of libm calls
// per row (measured 25 % faster than one row at a time at (400k, 80)):
//   1. per row: softmax_sums, exps kept in ea/eb
//   2. over rows: lse, KL, H, the adaptive weight → row loss and the two gradient scales
//   3. per row: grad = gq · eb − gp · ea
// ea/eb: rows·K values each; rs: 4·rows values of per-row scratch.
template <typename acc_t, bool kGrad>
KDK_INLINE void softmax_adl_rows(const acc_t* s, const acc_t* t, int64_t rows, int64_t K,
                                 const RowConsts<acc_t>& c, const acc_t* gscale, acc_t* grad,
                                 acc_t* row_loss, acc_t* ea, acc_t* eb, acc_t* rs) {
  acc_t *za = rs, *zb = rs + rows, *sd = rs + 2 * rows, *sa = rs + 3 * rows;
  for (int64_t r = 0; r < rows; ++r) {
    const SoftmaxSums<acc_t> m =
        softmax_sums<acc_t, true>(s + r * K, t + r * K, K, c, ea + r * K, eb + r * K);
    za[r] = m.za;
    zb[r] = m.zb;
    sd[r] = m.sd;
    sa[r] = m.sa;
  }
#pragma omp simd
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t log_za = vmath::log_(za[r]);
    const acc_t kl = sd[r] / za[r] + vmath::log_(zb[r]) - log_za;
    const acc_t h = log_za - sa[r] / za[r];
    acc_t d = kl + c.beta * h;
    d = d > acc_t(0) ? d : acc_t(0);
    const acc_t e = vmath::one_minus_exp_neg_(d);
    const acc_t w = adaptive_weight(e, c.gamma);
    const acc_t factor = w + c.weight_grad * kl * adaptive_weight_de(e, c.gamma, w) * (acc_t(1) - e);
    row_loss[r] = w * kl * c.t2;
    if constexpr (kGrad) {  // za/zb now hold the gradient scales gp/gq
      const acc_t g = gscale[r] * factor;
      za[r] = g / za[r];
      zb[r] = g / zb[r];
    }
  }
  if constexpr (kGrad) {
    for (int64_t r = 0; r < rows; ++r)
      softmax_grad_row(ea + r * K, eb + r * K, K, za[r], zb[r], grad + r * K);
  }
}

// Loss of `rows` consecutive rows; gscale[r] = T · w_r / norm (the row's gradient factor).
// Scratch: ea/eb rows·K values each, rs 4·rows values.
template <typename acc_t, bool kSoftmax, bool kGrad, bool kAdaptive>
KDK_INLINE void rows_impl(const acc_t* s, const acc_t* t, int64_t rows, int64_t K,
                          const RowConsts<acc_t>& c, const acc_t* gscale, acc_t* grad,
                          acc_t* row_loss, acc_t* ea, acc_t* eb, acc_t* rs) {
  if constexpr (kSoftmax && !kAdaptive) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r * K;
      acc_t* gr = kGrad ? grad + o : nullptr;
      row_loss[r] = softmax_kl_row<acc_t, kGrad>(s + o, t + o, K, c, gscale[r], gr, ea, eb);
    }
  } else if constexpr (kSoftmax) {
    // chunks of 32 rows: the chunk's exps (ea/eb) stay in L1 between the first and third pass
    constexpr int64_t kChunk = 32;
    for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
      const int64_t n = std::min(kChunk, rows - r0);
      softmax_adl_rows<acc_t, kGrad>(s + r0 * K, t + r0 * K, n, K, c, gscale + r0,
                                     kGrad ? grad + r0 * K : nullptr, row_loss + r0, ea, eb, rs);
    }
  } else {  // ea: per-element loss, eb: per-element gradient factor (rows·K values each)
    if constexpr (kGrad) {
      for (int64_t r = 0; r < rows; ++r) {
        const acc_t gr = gscale[r];
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) eb[r * K + k] = gr;
      }
    }
    sigmoid_elems<acc_t, kGrad, kAdaptive>(s, t, rows * K, c, eb, grad, ea);
    for (int64_t r = 0; r < rows; ++r) {
      acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < K; ++k) acc += ea[r * K + k];
      row_loss[r] = acc * c.t2;
    }
  }
}

// float entry points: one clone per ISA each (see vec_math.h).
#define KDK_ROWS_F32_DECL(S, G, A)                                                              \
  void rows_f32_##S##G##A(const float* s, const float* t, int64_t rows, int64_t K,              \
                          const RowConsts<float>& c, const float* gscale, float* grad,          \
                          float* row_loss, float* ea, float* eb, float* rs);
KDK_ROWS_F32_DECL(0, 0, 0) KDK_ROWS_F32_DECL(0, 0, 1) KDK_ROWS_F32_DECL(0, 1, 0)
KDK_ROWS_F32_DECL(0, 1, 1) KDK_ROWS_F32_DECL(1, 0, 0) KDK_ROWS_F32_DECL(1, 0, 1)
KDK_ROWS_F32_DECL(1, 1, 0) KDK_ROWS_F32_DECL(1, 1, 1)
#undef KDK_ROWS_F32_DECL

template <typename acc_t, bool kSoftmax, bool kGrad, bool kAdaptive>
void rows(const acc_t* s, const acc_t* t, int64_t n, int64_t K, const RowConsts<acc_t>& c,
          const acc_t* gscale, acc_t* grad, acc_t* row_loss, acc_t* ea, acc_t* eb, acc_t* rs) {
  if constexpr (std::is_same_v<acc_t, float>) {
#define KDK_CALL(S, G, A)                                              \
  if constexpr (kSoftmax == S && kGrad == G && kAdaptive == A)         \
    return rows_f32_##S##G##A(s, t, n, K, c, gscale, grad, row_loss, ea, eb, rs);
    KDK_CALL(0, 0, 0) KDK_CALL(0, 0, 1) KDK_CALL(0, 1, 0) KDK_CALL(0, 1, 1)
    KDK_CALL(1, 0, 0) KDK_CALL(1, 0, 1) KDK_CALL(1, 1, 0) KDK_CALL(1, 1, 1)
#undef KDK_CALL
  } else {
    rows_impl<acc_t, kSoftmax, kGrad, kAdaptive>(s, t, n, K, c, gscale, grad, row_loss, ea, eb, rs);
  }
}

// Drives rows() over (R, K) logits in fixed blocks of rows; returns (loss, grad of the loss).
// Checks the weights (finite, >= 0) in the pass that reads them.
std::tuple<at::Tensor, at::Tensor> row_loss_cpu(const at::Tensor& student,
                                                const at::Tensor& teacher,
                                                const std::optional<at::Tensor>& weight,
                                                const RowLossArgs& args);

}  // namespace kdkernels::cpu
