// CPU kernel for kdkernels::decoupled_kd (DKD): per row T² (α TCKD + β NCKD) and its student
// gradient in one forward, from one pass over the row for the sums and one for the gradient (the
// row's exponentials stay in L1 between them). Math and gradient: ../decoupled_kd.h.
#include "../decoupled_kd.h"

#include "blocks.h"
#include "buffer_cache.h"
#include "vec_math.h"

#include <torch/library.h>

#include <limits>

namespace kdkernels::cpu {
namespace {

// One row: its loss; with kGrad the gradient (K values). ea/eb: scratch of K values each.
template <typename acc_t, bool kGrad>
KDK_INLINE acc_t dkd_row(const acc_t* s, const acc_t* t, int64_t K, int64_t g,
                         const DkdConsts<acc_t>& c, acc_t* grad, acc_t* ea, acc_t* eb) {
  acc_t ma = -std::numeric_limits<acc_t>::infinity(), mb = ma;
#pragma omp simd reduction(max : ma, mb)
  for (int64_t k = 0; k < K; ++k) {
    const bool other = k != g;
    ma = (other & (t[k] > ma)) ? t[k] : ma;
    mb = (other & (s[k] > mb)) ? s[k] : mb;
  }
  // exponents shifted before scaling, (t − max)/T <= 0: exactly 0 at the max for any T (scaling
  // first lets the compiler contract t/T − max into an fma that overflows exp at a tiny T)
  acc_t za = 0, zb = 0, d = 0;
#pragma omp simd reduction(+ : za, zb, d)
  for (int64_t k = 0; k < K; ++k) {
    const bool other = k != g;
    const acc_t a = t[k] * c.inv_t, b = s[k] * c.inv_t;
    const acc_t x = other ? vmath::exp_((t[k] - ma) * c.inv_t) : acc_t(0);
    const acc_t y = other ? vmath::exp_((s[k] - mb) * c.inv_t) : acc_t(0);
    ea[k] = x;
    eb[k] = y;
    za += x;
    zb += y;
    d += other ? x * (a - b) : acc_t(0);
  }
  const DkdRowSums<acc_t> sums{ma * c.inv_t, mb * c.inv_t, za, zb, d, t[g] * c.inv_t, s[g] * c.inv_t};
  const DkdRow<acc_t> row = dkd_finish_row(sums, c.alpha, c.beta, c.t2, c.G);
  if constexpr (kGrad) {
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) grad[k] = row.gq * eb[k] - row.gp * ea[k];
    grad[g] = row.g_target;
  }
  return row.loss;
}

template <typename acc_t, bool kGrad>
KDK_INLINE void dkd_rows_impl(const acc_t* s, const acc_t* t, const int64_t* labels, int64_t rows,
                              int64_t K, const DkdConsts<acc_t>& c, acc_t* grad, acc_t* row_loss,
                              acc_t* ea, acc_t* eb) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * K;
    row_loss[r] = dkd_row<acc_t, kGrad>(s + o, t + o, K, labels[r], c, kGrad ? grad + o : nullptr,
                                        ea, eb);
  }
}

// float: one clone per ISA (see vec_math.h).
KDK_TARGET_CLONES void dkd_rows_f32_grad(const float* s, const float* t, const int64_t* labels,
                                         int64_t rows, int64_t K, const DkdConsts<float>& c,
                                         float* grad, float* row_loss, float* ea, float* eb) {
  dkd_rows_impl<float, true>(s, t, labels, rows, K, c, grad, row_loss, ea, eb);
}
KDK_TARGET_CLONES void dkd_rows_f32_nograd(const float* s, const float* t, const int64_t* labels,
                                           int64_t rows, int64_t K, const DkdConsts<float>& c,
                                           float* grad, float* row_loss, float* ea, float* eb) {
  dkd_rows_impl<float, false>(s, t, labels, rows, K, c, grad, row_loss, ea, eb);
}

template <typename acc_t, bool kGrad>
void dkd_rows(const acc_t* s, const acc_t* t, const int64_t* labels, int64_t rows, int64_t K,
              const DkdConsts<acc_t>& c, acc_t* grad, acc_t* row_loss, acc_t* ea, acc_t* eb) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if constexpr (kGrad) return dkd_rows_f32_grad(s, t, labels, rows, K, c, grad, row_loss, ea, eb);
    else return dkd_rows_f32_nograd(s, t, labels, rows, K, c, grad, row_loss, ea, eb);
  } else {
    dkd_rows_impl<acc_t, kGrad>(s, t, labels, rows, K, c, grad, row_loss, ea, eb);
  }
}

// The first row in [r0, r0 + n) whose label is outside [0, K), or -1.
int64_t first_bad_label(const int64_t* labels, int64_t r0, int64_t n, int64_t K) {
  bool ok = true;
  for (int64_t r = r0; r < r0 + n; ++r) ok &= (labels[r] >= 0) & (labels[r] < K);
  if (ok) return -1;
  for (int64_t r = r0; r < r0 + n; ++r)
    if (labels[r] < 0 || labels[r] >= K) return r;
  return -1;
}

// Blocks of rows in parallel; returns Σ row losses (partials per block, added in block order),
// writes each row's loss to `out` when not null. Throws for a label outside [0, K).
template <typename scalar_t, bool kGrad>
double dkd_blocks(const scalar_t* s, const scalar_t* t, const int64_t* labels, int64_t R,
                  int64_t K, const DkdConsts<at::opmath_type<scalar_t>>& c, scalar_t* grad,
                  scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / K);
  const int64_t num_blocks = (R + rows_per_block - 1) / rows_per_block;
  std::vector<acc_t> partials(num_blocks, acc_t(0));
  std::vector<int64_t> bad(num_blocks, -1);
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    constexpr bool staged = !std::is_same_v<scalar_t, acc_t>;
    const int64_t span = rows_per_block * K;
    std::vector<acc_t> sbuf(staged ? span : 0), tbuf(staged ? span : 0),
        gbuf(staged && kGrad ? span : 0), ea(K), eb(K), row_loss(rows_per_block);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows_per_block, n = std::min(rows_per_block, R - r0), off = r0 * K;
      bad[b] = first_bad_label(labels, r0, n, K);
      if (bad[b] >= 0) continue;
      const acc_t* sa = load_as_acc(s + off, n * K, sbuf.data());
      const acc_t* ta = load_as_acc(t + off, n * K, tbuf.data());
      acc_t* ga = kGrad ? acc_out(grad + off, gbuf.data()) : nullptr;
      dkd_rows<acc_t, kGrad>(sa, ta, labels + r0, n, K, c, ga, row_loss.data(), ea.data(), eb.data());
      if constexpr (kGrad) store_from_acc(ga, n * K, grad + off);
      acc_t part = 0;
      for (int64_t r = 0; r < n; ++r) {
        if (out) out[r0 + r] = static_cast<scalar_t>(row_loss[r]);
        part += row_loss[r];
      }
      partials[b] = part;
    }
  });
  for (int64_t b = 0; b < num_blocks; ++b) {
    TORCH_CHECK_VALUE(bad[b] < 0, kDkdOp, ": labels must be in [0, ", K, "), got ",
                      labels[bad[b] < 0 ? 0 : bad[b]], " at row ", bad[b]);
  }
  return static_cast<double>(ordered_sum(partials));
}

std::tuple<at::Tensor, at::Tensor> decoupled_kd_cpu(const at::Tensor& student_logits,
                                                    const at::Tensor& teacher_logits,
                                                    const at::Tensor& labels, double temperature,
                                                    double alpha, double beta,
                                                    c10::string_view reduction, bool compute_grad) {
  const DkdArgs a = DkdArgs::parse(temperature, alpha, beta, reduction, compute_grad);
  const RowShape sh = check_dkd_inputs(student_logits, teacher_logits, labels);
  const int64_t R = sh.R, K = sh.K;
  const at::Tensor s = student_logits.contiguous();
  const at::Tensor t = teacher_logits.contiguous();
  const at::Tensor y = labels.contiguous();
  at::Tensor grad = a.compute_grad ? empty_large_like(s) : at::empty({0}, s.options());
  at::Tensor out = a.reduction == kNone ? at::empty({R}, s.options()) : at::Tensor();
  if (R == 0) {  // "mean" of no rows is 0, like the other row losses
    return {a.reduction == kNone ? out : at::zeros({}, s.options()), grad};
  }
  // mean: Σ rows / B (MMRazor's "batchmean"); the gradient scale G = T / B folds it in
  const double den = a.reduction == kMean ? static_cast<double>(R) : 1.0;
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "decoupled_kd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const DkdConsts<acc_t> c = DkdConsts<acc_t>::make(a, den);
    scalar_t* gp = a.compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.defined() ? out.data_ptr<scalar_t>() : nullptr;
    const auto run = [&](auto kGrad) {
      return dkd_blocks<scalar_t, decltype(kGrad)::value>(
          s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), R, K, c, gp, op);
    };
    total = a.compute_grad ? run(std::true_type{}) : run(std::false_type{});
  });
  if (a.reduction != kNone) out = at::scalar_tensor(total / den, s.options());
  return {out, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CPU, m) {
  m.impl("decoupled_kd", &decoupled_kd_cpu);
}

}  // namespace kdkernels::cpu
