// Block driver and per-ISA float clones for the row-wise losses (see row_losses.h).
#include "row_losses.h"

#include "buffer_cache.h"

#include <limits>

namespace kdkernels::cpu {

#define KDK_ROWS_F32_DEF(S, G, A)                                                                 \
  KDK_TARGET_CLONES void rows_f32_##S##G##A(const float* s, const float* t, int64_t rows,         \
                                            int64_t K, const RowConsts<float>& c,                 \
                                            const float* gscale, float* grad, float* row_loss,    \
                                            float* ea, float* eb, float* rs) {                    \
    rows_impl<float, S, G, A>(s, t, rows, K, c, gscale, grad, row_loss, ea, eb, rs);              \
  }
KDK_ROWS_F32_DEF(0, 0, 0) KDK_ROWS_F32_DEF(0, 0, 1) KDK_ROWS_F32_DEF(0, 1, 0)
KDK_ROWS_F32_DEF(0, 1, 1) KDK_ROWS_F32_DEF(1, 0, 0) KDK_ROWS_F32_DEF(1, 0, 1)
KDK_ROWS_F32_DEF(1, 1, 0) KDK_ROWS_F32_DEF(1, 1, 1)
#undef KDK_ROWS_F32_DEF

namespace {

template <typename scalar_t, bool kSoftmax, bool kGrad, bool kAdaptive>
at::opmath_type<scalar_t> row_blocks(const scalar_t* s, const scalar_t* t,
                                     const at::opmath_type<scalar_t>* w, int64_t R, int64_t K,
                                     const RowConsts<at::opmath_type<scalar_t>>& c,
                                     at::opmath_type<scalar_t> gbase, scalar_t* grad,
                                     scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / K);
  const int64_t num_blocks = (R + rows_per_block - 1) / rows_per_block;
  std::vector<acc_t> partials(num_blocks, acc_t(0));
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    constexpr bool staged = !std::is_same_v<scalar_t, acc_t>;
    const int64_t span = rows_per_block * K;
    std::vector<acc_t> sbuf(staged ? span : 0), tbuf(staged ? span : 0),
        gbuf(staged && kGrad ? span : 0);
    std::vector<acc_t> ea(span), eb(span), rs(kSoftmax ? 4 * rows_per_block : 0);
    std::vector<acc_t> gscale(rows_per_block), row_loss(rows_per_block);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows_per_block;
      const int64_t n = std::min(rows_per_block, R - r0);
      const int64_t off = r0 * K;
      for (int64_t r = 0; r < n; ++r) gscale[r] = gbase * (w ? w[r0 + r] : acc_t(1));
      const acc_t* sa = load_as_acc(s + off, n * K, sbuf.data());
      const acc_t* ta = load_as_acc(t + off, n * K, tbuf.data());
      acc_t* ga = kGrad ? acc_out(grad + off, gbuf.data()) : nullptr;
      rows<acc_t, kSoftmax, kGrad, kAdaptive>(sa, ta, n, K, c, gscale.data(), ga,
                                              row_loss.data(), ea.data(), eb.data(), rs.data());
      if constexpr (kGrad) store_from_acc(ga, n * K, grad + off);
      acc_t part = 0;
      for (int64_t r = 0; r < n; ++r) {
        const acc_t v = row_loss[r] * (w ? w[r0 + r] : acc_t(1));
        if (out) out[r0 + r] = static_cast<scalar_t>(v);
        part += v;
      }
      partials[b] = part;
    }
  });
  return ordered_sum(partials);
}

// The row weights as acc_t into `out` (R values), read once in their own dtype and stride; returns
// Σ w (per-block partial sums added in block order). Checks in the same pass that every weight is
// finite and >= 0 (a ValueError naming the first bad row): the Python-side check is skipped under
// torch.compile, and a negative weight would otherwise give a meaningless loss.
template <typename w_t, typename acc_t>
double read_weights(const w_t* w, int64_t stride, int64_t R, acc_t* out, const char* op) {
  const int64_t num_blocks = (R + kBlock - 1) / kBlock;
  std::vector<double> partials(num_blocks, 0.0);
  std::vector<char> bad(num_blocks, 0);
  at::parallel_for(0, num_blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kBlock, i1 = std::min(R, i0 + kBlock);
      double part = 0.0;
      bool ok = true;
      for (int64_t i = i0; i < i1; ++i) {
        const double v = static_cast<double>(w[i * stride]);
        ok &= v >= 0.0 && v <= std::numeric_limits<double>::max();  // false for NaN too
        out[i] = static_cast<acc_t>(v);
        part += v;
      }
      partials[b] = part;
      bad[b] = !ok;
    }
  });
  for (int64_t b = 0; b < num_blocks; ++b) {
    if (!bad[b]) continue;
    for (int64_t i = b * kBlock; i < std::min(R, (b + 1) * kBlock); ++i) {
      const double v = static_cast<double>(w[i * stride]);
      TORCH_CHECK_VALUE(v >= 0.0 && v <= std::numeric_limits<double>::max(), op,
                        ": weight must be finite and >= 0, got ", v, " at row ", i);
    }
  }
  return ordered_sum(partials);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> row_loss_cpu(const at::Tensor& student,
                                                const at::Tensor& teacher,
                                                const std::optional<at::Tensor>& weight,
                                                const RowLossArgs& a) {
  const RowShape sh = check_row_inputs(student, teacher, weight, a.op);
  const int64_t R = sh.R, K = sh.K;
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const at::ScalarType acc_type = acc_dtype(s.scalar_type());
  at::Tensor w;
  double wsum = static_cast<double>(R);
  if (weight.has_value() && weight->defined()) {
    const at::Tensor wv = weight->reshape({R});  // a view when it can be: read with its stride
    w = at::empty({R}, s.options().dtype(acc_type));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wv.scalar_type(), "read_weights", [&] {
      if (acc_type == at::kDouble) {
        wsum = read_weights(wv.data_ptr<scalar_t>(), wv.stride(0), R, w.data_ptr<double>(), a.op);
      } else {
        wsum = read_weights(wv.data_ptr<scalar_t>(), wv.stride(0), R, w.data_ptr<float>(), a.op);
      }
    });
  }
  // mean: den = max(Σ w or R, eps), 0 when that normaliser is 0 (then loss 0 and gradient 0)
  const double den =
      a.reduction == kMean ? mean_denominator(wsum, clamp_eps(a.eps, acc_type), 1.0) : 1.0;
  at::Tensor grad = a.compute_grad ? empty_large_like(s) : at::empty({0}, s.options());
  if (den == 0.0) {
    if (a.compute_grad) grad.zero_();
    return {at::zeros({}, s.options()), grad};
  }
  at::Tensor out = a.reduction == kNone ? at::empty({R}, s.options()) : at::Tensor();
  double total = 0.0;
  if (R > 0 && K > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "row_loss_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const RowConsts<acc_t> c{static_cast<acc_t>(1.0 / a.temperature),
                               static_cast<acc_t>(a.temperature * a.temperature),
                               static_cast<acc_t>(a.beta), static_cast<acc_t>(a.gamma),
                               static_cast<acc_t>(a.detach_weight ? 0.0 : 1.0)};
      const acc_t gbase = static_cast<acc_t>(a.temperature / den);
      const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
      const scalar_t* sp = s.data_ptr<scalar_t>();
      const scalar_t* tp = t.data_ptr<scalar_t>();
      scalar_t* gp = a.compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.defined() ? out.data_ptr<scalar_t>() : nullptr;
      total = dispatch_bools(
          [&](auto kSoftmax, auto kGrad, auto kAdaptive) {
            return static_cast<double>(
                row_blocks<scalar_t, decltype(kSoftmax)::value, decltype(kGrad)::value,
                           decltype(kAdaptive)::value>(sp, tp, wp, R, K, c, gbase, gp, op));
          },
          a.softmax, a.compute_grad, a.adaptive);
    });
  } else if (a.compute_grad) {
    grad.zero_();
  }
  if (a.reduction != kNone) out = at::scalar_tensor(total / den, s.options());
  else if (R > 0 && K == 0) out.zero_();
  return {out, grad};
}

}  // namespace kdkernels::cpu
