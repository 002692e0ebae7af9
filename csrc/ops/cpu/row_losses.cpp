// Block driver and per-ISA float clones for the row-wise losses (see row_losses.h).
#include "row_losses.h"

#include "buffer_cache.h"

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
    std::vector<acc_t> ea(span), eb(span), rs(kSoftmax ? 6 * rows_per_block : 0);
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

template <typename scalar_t, bool kSoftmax, bool kAdaptive>
at::opmath_type<scalar_t> row_blocks_grad_switch(bool compute_grad, const scalar_t* s,
                                                 const scalar_t* t,
                                                 const at::opmath_type<scalar_t>* w, int64_t R,
                                                 int64_t K,
                                                 const RowConsts<at::opmath_type<scalar_t>>& c,
                                                 at::opmath_type<scalar_t> gbase, scalar_t* grad,
                                                 scalar_t* out) {
  return compute_grad
             ? row_blocks<scalar_t, kSoftmax, true, kAdaptive>(s, t, w, R, K, c, gbase, grad, out)
             : row_blocks<scalar_t, kSoftmax, false, kAdaptive>(s, t, w, R, K, c, gbase, grad, out);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> row_loss_cpu(const at::Tensor& student,
                                                const at::Tensor& teacher,
                                                const std::optional<at::Tensor>& weight,
                                                const RowLossArgs& a, const char* op_name) {
  TORCH_CHECK(student.dim() == 2 && student.sizes() == teacher.sizes(), op_name,
              ": student_logits and teacher_logits must be (R, K) of one shape");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), op_name,
              ": student_logits and teacher_logits must share a dtype");
  const int64_t R = student.size(0), K = student.size(1);
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const auto acc_type = acc_dtype(s.scalar_type());
  at::Tensor w;
  double wsum = static_cast<double>(R);
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->numel() == R, op_name, ": weight must hold one value per row (", R,
                "), got ", weight->numel());
    w = weight->reshape({R}).to(acc_type).contiguous();
    wsum = w.sum(at::kDouble).item<double>();
  }
  const double norm = a.reduction == kMean ? std::max(wsum, a.eps) : 1.0;
  at::Tensor grad = a.compute_grad ? empty_large_like(s) : at::empty({0}, s.options());
  at::Tensor out = a.reduction == kNone ? at::empty({R}, s.options()) : at::Tensor();
  double total = 0.0;
  if (R > 0 && K > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "row_loss_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const RowConsts<acc_t> c{static_cast<acc_t>(1.0 / a.temperature),
                               static_cast<acc_t>(a.temperature * a.temperature),
                               static_cast<acc_t>(a.beta), static_cast<acc_t>(a.gamma),
                               static_cast<acc_t>(a.detach_weight ? 0.0 : 1.0)};
      const acc_t gbase = static_cast<acc_t>(a.temperature / norm);
      const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
      const scalar_t* sp = s.data_ptr<scalar_t>();
      const scalar_t* tp = t.data_ptr<scalar_t>();
      scalar_t* gp = a.compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.defined() ? out.data_ptr<scalar_t>() : nullptr;
      const bool cg = a.compute_grad;
      if (a.softmax && a.adaptive) {
        total = row_blocks_grad_switch<scalar_t, true, true>(cg, sp, tp, wp, R, K, c, gbase, gp, op);
      } else if (a.softmax) {
        total = row_blocks_grad_switch<scalar_t, true, false>(cg, sp, tp, wp, R, K, c, gbase, gp, op);
      } else if (a.adaptive) {
        total = row_blocks_grad_switch<scalar_t, false, true>(cg, sp, tp, wp, R, K, c, gbase, gp, op);
      } else {
        total = row_blocks_grad_switch<scalar_t, false, false>(cg, sp, tp, wp, R, K, c, gbase, gp, op);
      }
    });
  } else if (a.compute_grad) {
    grad.zero_();
  }
  if (a.reduction != kNone) out = at::scalar_tensor(total / norm, s.options());
  else if (R > 0 && K == 0) out.zero_();
  return {out, grad};
}

}  // namespace kdkernels::cpu
