// Fused CPU kernel for kdkernels::confidence_masked_mse.
//
//   keep[n,h,w] = !(conf < threshold)                          (a NaN confidence is kept: NaN out)
//   m[n,h,w]    = keep ? conf^power : masked out               (computed once, N·H·W values)
//   l[n,c,h,w]  = keep ? m · (s − t)² : 0
//   mean: Σ l / (C · max(Σ m, eps)), and 0 when Σ m == 0;  sum: Σ l;  none: l
//   ∂loss/∂s    = keep ? 2 m (s − t) / norm : 0                 (written in the same pass)
//
// A masked-out pixel contributes exactly 0 to the loss, the normaliser and the gradient, whatever
// s, t and conf^power are (inf/NaN features, a negative power at conf = 0, a fractional power of
// a negative confidence). One pass over student/teacher: each fixed-size block of a (n, c) plane
// yields its loss partial and, when asked, its gradient, so backward is one multiply by
// grad_output.
#include "blocks.h"
#include "buffer_cache.h"
#include "vec_math.h"

#include <torch/library.h>

#include <cmath>

namespace kdkernels::cpu {
namespace {

// The mask encodes "masked out" as +0 (see build_mask). Products are taken for every element and
// then selected, so the loop stays branch-free and vectorises.
template <typename acc_t, bool kGrad, bool kNone>
KDK_INLINE acc_t mse_block_impl(const acc_t* s, const acc_t* t, const acc_t* m, int64_t n,
                                acc_t gscale, acc_t* grad, acc_t* out) {
  acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = vmath::not_plus_zero(m[i]);
    const acc_t d = s[i] - t[i];
    const acc_t md = m[i] * d;
    const acc_t l = keep ? md * d : acc_t(0);
    if constexpr (kNone) {
      out[i] = l;
    } else {
      acc += l;
    }
    if constexpr (kGrad) {
      const acc_t g = gscale * md;
      grad[i] = keep ? g : acc_t(0);
    }
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

// m into `mask` (acc_t, N·HW values) in one pass over the confidence (its own dtype, via a
// contiguous view); returns Σ m, partial sums per block added in block order.
// Encoding: a masked-out pixel (conf < threshold) is stored as +0; a kept pixel whose m is ±0 is
// stored as −0 (the same value, another bit pattern). So the main pass tells them apart:
// a masked-out pixel gives exactly 0, a kept one m (s − t)² (0 · inf = NaN, as in the formula).
template <typename conf_t, typename acc_t>
double build_mask(const conf_t* conf, int64_t n, acc_t thr, acc_t pw, acc_t* mask) {
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partials(num_blocks, 0.0);
  at::parallel_for(0, num_blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kBlock, i1 = std::min(n, i0 + kBlock);
      acc_t part = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const acc_t c = static_cast<acc_t>(conf[i]);
        acc_t v = pw == acc_t(1) ? c : std::pow(c, pw);
        v = v == acc_t(0) ? -acc_t(0) : v;
        v = c < thr ? acc_t(0) : v;
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
  const MaskedMseArgs a = MaskedMseArgs::parse(threshold, power, reduction, eps, compute_grad);
  const FeatureShape sh = check_masked_mse_inputs(student, teacher, confidence, a.op);
  const int64_t N = sh.N, C = sh.C, HW = sh.HW;
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const at::Tensor conf = confidence.reshape({N * HW}).contiguous();
  const at::ScalarType acc_type = acc_dtype(s.scalar_type());
  at::Tensor mask = at::empty({N * HW}, s.options().dtype(acc_type));
  double mask_sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, conf.scalar_type(), "build_mask", [&] {
    using conf_t = scalar_t;
    if (acc_type == at::kDouble) {
      mask_sum = build_mask<conf_t, double>(conf.data_ptr<conf_t>(), N * HW, a.threshold, a.power,
                                            mask.data_ptr<double>());
    } else {
      mask_sum = build_mask<conf_t, float>(conf.data_ptr<conf_t>(), N * HW,
                                           static_cast<float>(a.threshold),
                                           static_cast<float>(a.power), mask.data_ptr<float>());
    }
  });
  // mean: den = C · max(Σ m, eps), 0 when Σ m == 0 (then loss 0 and gradient 0, any eps)
  const double den =
      a.reduction == kMean
          ? mean_denominator(mask_sum, clamp_eps(a.eps, acc_type), double(std::max<int64_t>(C, 1)))
          : 1.0;
  at::Tensor grad = compute_grad ? empty_large_like(s) : at::empty({0}, s.options());
  if (den == 0.0) {
    if (compute_grad) grad.zero_();
    return {at::zeros({}, s.options()), grad};
  }

  const bool none = a.reduction == kNone;
  at::Tensor out = none ? empty_large_like(s) : at::Tensor();
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, s.scalar_type(), "confidence_masked_mse_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const acc_t gscale = static_cast<acc_t>(2.0 / den);
        const acc_t* m = mask.data_ptr<acc_t>();
        const scalar_t* sp = s.data_ptr<scalar_t>();
        const scalar_t* tp = t.data_ptr<scalar_t>();
        scalar_t* gp = compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
        scalar_t* op = none ? out.data_ptr<scalar_t>() : nullptr;
        total = dispatch_bools(
            [&](auto kGrad, auto kNone) {
              return static_cast<double>(
                  masked_mse_planes<scalar_t, decltype(kGrad)::value, decltype(kNone)::value>(
                      sp, tp, m, N, C, HW, gscale, gp, op));
            },
            compute_grad, none);
      });
  if (!none) out = at::scalar_tensor(total / den, s.options());
  return {out, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CPU, m) {
  m.impl("confidence_masked_mse", &confidence_masked_mse_cpu);
}

}  // namespace kdkernels::cpu
