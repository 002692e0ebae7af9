// Fused CPU kernel for kdkernels::confidence_masked_mse.
//
//   m[n,h,w]  = conf^power · [conf ≥ threshold]                (computed once, N·H·W values)
//   l[n,c,h,w] = m · (s − t)²
//   mean: Σ l / (C · max(Σ m, eps)),  sum: Σ l,  none: l
//   ∂loss/∂s  = 2 m (s − t) / norm                              (written in the same pass)
//
// One pass over student/teacher: each fixed-size block of a (n, c) plane yields its loss partial
// and, when asked, its gradient, so backward is one multiply by grad_output.
#include "buffer_cache.h"
#include "common.h"
#include "vec_math.h"

#include <torch/library.h>

#include <cmath>

namespace kdkernels::cpu {
namespace {

template <typename acc_t, bool kGrad, bool kNone>
KDK_INLINE acc_t mse_block_impl(const acc_t* s, const acc_t* t, const acc_t* m, int64_t n,
                                acc_t gscale, acc_t* grad, acc_t* out) {
  acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t d = s[i] - t[i];
    const acc_t md = m[i] * d;
    if constexpr (kNone) {
      out[i] = md * d;
    } else {
      acc += md * d;
    }
    if constexpr (kGrad) grad[i] = gscale * md;
  }
  return acc;
}

#define KDK_MSE_F32(NAME, G, NONE)                                                           \
  KDK_TARGET_CLONES float NAME(const float* s, const float* t, const float* m, int64_t n,    \
                               float gscale, float* grad, float* out) {                      \
    return mse_block_impl<float, G, NONE>(s, t, m, n, gscale, grad, out);                    \
  }
KDK_MSE_F32(mse_block_f32_sum, false, false)
KDK_MSE_F32(mse_block_f32_sum_grad, true, false)
KDK_MSE_F32(mse_block_f32_none, false, true)
KDK_MSE_F32(mse_block_f32_none_grad, true, true)
#undef KDK_MSE_F32

template <typename acc_t, bool kGrad, bool kNone>
acc_t mse_block(const acc_t* s, const acc_t* t, const acc_t* m, int64_t n, acc_t gscale,
                acc_t* grad, acc_t* out) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if constexpr (kGrad && kNone) return mse_block_f32_none_grad(s, t, m, n, gscale, grad, out);
    if constexpr (!kGrad && kNone) return mse_block_f32_none(s, t, m, n, gscale, grad, out);
    if constexpr (kGrad && !kNone) return mse_block_f32_sum_grad(s, t, m, n, gscale, grad, out);
    if constexpr (!kGrad && !kNone) return mse_block_f32_sum(s, t, m, n, gscale, grad, out);
  } else {
    return mse_block_impl<acc_t, kGrad, kNone>(s, t, m, n, gscale, grad, out);
  }
}

// m = conf^power · [conf ≥ threshold] into `mask` (acc_t, N·HW values); returns Σ m in fixed
// block order. One pass over the confidence in its own dtype and strides (via a contiguous view).
template <typename conf_t, typename acc_t>
double build_mask(const conf_t* conf, int64_t n, double threshold, double power, acc_t* mask) {
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partials(num_blocks, 0.0);
  const acc_t thr = static_cast<acc_t>(threshold), pw = static_cast<acc_t>(power);
  at::parallel_for(0, num_blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kBlock, i1 = std::min(n, i0 + kBlock);
      acc_t part = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const acc_t c = static_cast<acc_t>(conf[i]);
        const acc_t v = c >= thr ? (pw == acc_t(1) ? c : std::pow(c, pw)) : acc_t(0);
        mask[i] = v;
        part += v;
      }
      partials[b] = static_cast<double>(part);
    }
  });
  return ordered_sum(partials);
}

template <typename scalar_t, bool kGrad, bool kNone>
at::opmath_type<scalar_t> masked_mse_planes(const scalar_t* s, const scalar_t* t,
                                            const at::opmath_type<scalar_t>* mask, int64_t N,
                                            int64_t C, int64_t HW,
                                            at::opmath_type<scalar_t> gscale, scalar_t* grad,
                                            scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks_per_plane = (HW + kBlock - 1) / kBlock;
  const int64_t num_blocks = N * C * blocks_per_plane;
  std::vector<acc_t> partials(kNone ? 0 : num_blocks, acc_t(0));
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    const bool staged = !std::is_same_v<scalar_t, acc_t>;
    std::vector<acc_t> sbuf(staged ? kBlock : 0), tbuf(staged ? kBlock : 0),
        gbuf(staged ? kBlock : 0), obuf(staged ? kBlock : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t plane = b / blocks_per_plane;
      const int64_t j0 = (b % blocks_per_plane) * kBlock;
      const int64_t len = std::min(kBlock, HW - j0);
      const int64_t off = plane * HW + j0;
      const acc_t* m = mask + (plane / C) * HW + j0;
      const acc_t* sa = load_as_acc(s + off, len, sbuf.data());
      const acc_t* ta = load_as_acc(t + off, len, tbuf.data());
      acc_t* ga = kGrad ? acc_out(grad + off, gbuf.data()) : nullptr;
      acc_t* oa = kNone ? acc_out(out + off, obuf.data()) : nullptr;
      const acc_t part = mse_block<acc_t, kGrad, kNone>(sa, ta, m, len, gscale, ga, oa);
      if constexpr (kGrad) store_from_acc(ga, len, grad + off);
      if constexpr (kNone) {
        store_from_acc(oa, len, out + off);
      } else {
        partials[b] = part;
      }
    }
  });
  return ordered_sum(partials);
}

std::tuple<at::Tensor, at::Tensor> confidence_masked_mse_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& confidence,
    double threshold, double power, c10::string_view reduction, double eps, bool compute_grad) {
  TORCH_CHECK(student.dim() == 4 && student.sizes() == teacher.sizes(),
              "confidence_masked_mse: student and teacher must be (N, C, H, W) of one shape");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(),
              "confidence_masked_mse: student and teacher must share a dtype");
  const Reduction red = parse_reduction(reduction);
  const int64_t N = student.size(0), C = student.size(1);
  const int64_t HW = student.size(2) * student.size(3);
  TORCH_CHECK(confidence.numel() == N * HW,
              "confidence_masked_mse: confidence must hold N*H*W values");
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  TORCH_CHECK(at::isFloatingType(confidence.scalar_type()),
              "confidence_masked_mse: confidence must be a floating tensor");
  const at::Tensor conf = confidence.reshape({N * HW}).contiguous();
  at::Tensor mask = at::empty({N * HW}, s.options().dtype(acc_dtype(s.scalar_type())));
  double mask_sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, conf.scalar_type(), "build_mask", [&] {
    using conf_t = scalar_t;
    if (mask.scalar_type() == at::kDouble) {
      mask_sum = build_mask(conf.data_ptr<conf_t>(), N * HW, threshold, power, mask.data_ptr<double>());
    } else {
      mask_sum = build_mask(conf.data_ptr<conf_t>(), N * HW, threshold, power, mask.data_ptr<float>());
    }
  });
  const double norm = red == kMean ? double(std::max<int64_t>(C, 1)) * std::max(mask_sum, eps) : 1.0;

  at::Tensor grad = compute_grad ? empty_large_like(s) : at::empty({0}, s.options());
  at::Tensor out = red == kNone ? empty_large_like(s) : at::Tensor();
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, s.scalar_type(), "confidence_masked_mse_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const acc_t gscale = static_cast<acc_t>(2.0 / norm);
        const acc_t* m = mask.data_ptr<acc_t>();
        const scalar_t* sp = s.data_ptr<scalar_t>();
        const scalar_t* tp = t.data_ptr<scalar_t>();
        scalar_t* gp = compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
        scalar_t* op = red == kNone ? out.data_ptr<scalar_t>() : nullptr;
        if (red == kNone) {
          if (compute_grad) masked_mse_planes<scalar_t, true, true>(sp, tp, m, N, C, HW, gscale, gp, op);
          else masked_mse_planes<scalar_t, false, true>(sp, tp, m, N, C, HW, gscale, gp, op);
        } else {
          total = compute_grad
                      ? masked_mse_planes<scalar_t, true, false>(sp, tp, m, N, C, HW, gscale, gp, op)
                      : masked_mse_planes<scalar_t, false, false>(sp, tp, m, N, C, HW, gscale, gp, op);
        }
      });
  if (red != kNone) out = at::scalar_tensor(total / norm, s.options());
  return {out, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CPU, m) {
  m.impl("confidence_masked_mse", &confidence_masked_mse_cpu);
}

}  // namespace kdkernels::cpu
