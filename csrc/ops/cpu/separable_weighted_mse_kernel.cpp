// Fused CPU kernel for kdkernels::separable_weighted_mse, the one feature-imitation MSE kernel:
// FGD's focal term (a spatial map times a per-channel weight) and kdkernels.confidence_masked_mse,
// which passes its confidence mask as the spatial weight and no channel weight.
//
//   w[n,c,h,w]  = w_s[n,h,w] · w_c[n,c]                       (w_c = 1 when channel_weight is None)
//   l[n,c,h,w]  = w ≠ 0 ? w · (s − t)² : 0
//   mean: Σ l / (C · max(Σ w_s, eps)), and 0 when Σ w_s == 0;  sum: Σ l;  none: l
//   ∂loss/∂s    = w ≠ 0 ? 2 w (s − t) / norm : 0               (written in the same pass)
//
// An element whose weight w is 0 (±0) contributes exactly 0 to the loss and the gradient, whatever
// s and t are (inf/NaN features). A NaN weight is kept (NaN ≠ 0) and propagates, NaN in → NaN out.
// Weight values are not checked here: the public op checks them in Python, and the mask of
// confidence_masked_mse is NaN on purpose where the confidence is NaN.
// One pass over student/teacher: each fixed-size block of an (n, c) plane yields its loss partial
// and, when asked, its gradient, so backward is one multiply by grad_output.
#include "blocks.h"
#include "buffer_cache.h"
#include "vec_math.h"

#include <torch/library.h>

namespace kdkernels::cpu {
namespace {

// The products are taken for every element and then zeroed where the weight is 0, so the loop
// stays branch-free and vectorises. float: the zeroing is a bit mask (all ones where w ≠ 0, NaN
// included), not a select: with `w != 0 ? … : 0` GCC sinks the loads of s and t under the
// condition and emits masked loads (vmaskmovps), which made the fwd+bwd 1.45x slower at FPN sizes
// on AVX2. double (baseline SSE2, no clones): a select on `(w != 0) | (w != w)` (the same test;
// the `|` keeps it branch-free, where a lone `w != 0` does not vectorise).
template <typename acc_t, bool kGrad, bool kNone>
KDK_INLINE acc_t mse_block_impl(const acc_t* s, const acc_t* t, const acc_t* ws, acc_t wc,
                                int64_t n, acc_t gscale, acc_t* grad, acc_t* out) {
  acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t w = ws[i] * wc;
    const acc_t d = s[i] - t[i];
    const acc_t wd = w * d;
    acc_t l, g;
    if constexpr (std::is_same_v<acc_t, float>) {
      const int32_t keep = -static_cast<int32_t>(w != 0.0f);
      l = vmath::bits_to_float(vmath::bits_of(wd * d) & keep);
      g = vmath::bits_to_float(vmath::bits_of(gscale * wd) & keep);
    } else {
      const bool keep = (w != acc_t(0)) | (w != w);
      l = keep ? wd * d : acc_t(0);
      g = keep ? gscale * wd : acc_t(0);
    }
    if constexpr (kNone) {
      out[i] = l;
    } else {
      acc += l;
    }
    if constexpr (kGrad) grad[i] = g;
  }
  return acc;
}

#define KDK_MSE_F32(NAME, G, NONE)                                                            \
  KDK_TARGET_CLONES float NAME(const float* s, const float* t, const float* ws, float wc,     \
                               int64_t n, float gscale, float* grad, float* out) {            \
    return mse_block_impl<float, G, NONE>(s, t, ws, wc, n, gscale, grad, out);                \
  }
KDK_MSE_F32(mse_block_f32_sum, false, false)
KDK_MSE_F32(mse_block_f32_sum_grad, true, false)
KDK_MSE_F32(mse_block_f32_none, false, true)
KDK_MSE_F32(mse_block_f32_none_grad, true, true)
#undef KDK_MSE_F32

template <typename acc_t, bool kGrad, bool kNone>
acc_t mse_block(const acc_t* s, const acc_t* t, const acc_t* ws, acc_t wc, int64_t n,
                acc_t gscale, acc_t* grad, acc_t* out) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if constexpr (kGrad && kNone) return mse_block_f32_none_grad(s, t, ws, wc, n, gscale, grad, out);
    if constexpr (!kGrad && kNone) return mse_block_f32_none(s, t, ws, wc, n, gscale, grad, out);
    if constexpr (kGrad && !kNone) return mse_block_f32_sum_grad(s, t, ws, wc, n, gscale, grad, out);
    if constexpr (!kGrad && !kNone) return mse_block_f32_sum(s, t, ws, wc, n, gscale, grad, out);
  } else {
    return mse_block_impl<acc_t, kGrad, kNone>(s, t, ws, wc, n, gscale, grad, out);
  }
}

// Σ w_s over n contiguous values, read in their own dtype; when `out` is given, the values are
// also written there as acc_t (for a spatial weight of another dtype). Per-block partial sums are
// added in block order.
template <typename w_t, typename acc_t>
double spatial_weight_sum(const w_t* ws, int64_t n, acc_t* out) {
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partials(num_blocks, 0.0);
  at::parallel_for(0, num_blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kBlock, i1 = std::min(n, i0 + kBlock);
      acc_t part = 0;
      if (out) {
        for (int64_t i = i0; i < i1; ++i) {
          const acc_t v = static_cast<acc_t>(ws[i]);
          out[i] = v;
          part += v;
        }
      } else {
        for (int64_t i = i0; i < i1; ++i) part += static_cast<acc_t>(ws[i]);
      }
      partials[b] = static_cast<double>(part);
    }
  });
  return ordered_sum(partials);
}

template <typename scalar_t, bool kGrad, bool kNone>
at::opmath_type<scalar_t> separable_mse_planes(const scalar_t* s, const scalar_t* t,
                                               const at::opmath_type<scalar_t>* ws,
                                               const at::opmath_type<scalar_t>* wc, int64_t N,
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
      const acc_t* w = ws + (plane / C) * HW + j0;
      const acc_t cw = wc ? wc[plane] : acc_t(1);
      const acc_t* sa = load_as_acc(s + off, len, sbuf.data());
      const acc_t* ta = load_as_acc(t + off, len, tbuf.data());
      acc_t* ga = kGrad ? acc_out(grad + off, gbuf.data()) : nullptr;
      acc_t* oa = kNone ? acc_out(out + off, obuf.data()) : nullptr;
      const acc_t part = mse_block<acc_t, kGrad, kNone>(sa, ta, w, cw, len, gscale, ga, oa);
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

// The channel weights as acc_t, (N·C) values in (n, c) order, read with their strides; empty when
// there are none.
template <typename acc_t>
std::vector<acc_t> read_channel_weight(const std::optional<at::Tensor>& channel_weight) {
  std::vector<acc_t> out;
  if (!channel_weight.has_value() || !channel_weight->defined()) return out;
  const at::Tensor& wc = *channel_weight;
  const int64_t N = wc.size(0), C = wc.size(1);
  out.resize(N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wc.scalar_type(), "channel_weight", [&] {
    const scalar_t* p = wc.data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        out[n * C + c] = static_cast<acc_t>(p[n * wc.stride(0) + c * wc.stride(1)]);
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> separable_weighted_mse_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& spatial_weight,
    const std::optional<at::Tensor>& channel_weight, c10::string_view reduction, double eps,
    bool compute_grad) {
  const SeparableMseArgs a = SeparableMseArgs::parse(reduction, eps, compute_grad);
  const FeatureShape sh = check_separable_inputs(student, teacher, spatial_weight, channel_weight, a.op);
  const int64_t N = sh.N, C = sh.C, HW = sh.HW;
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const at::ScalarType acc_type = acc_dtype(s.scalar_type());
  // w_s as contiguous acc_t values: in place when it already is (the mask of confidence_masked_mse),
  // else converted while it is summed.
  const at::Tensor ws_in = spatial_weight.reshape({N * HW}).contiguous();
  const bool in_place = ws_in.scalar_type() == acc_type;
  const at::Tensor ws = in_place ? ws_in : at::empty({N * HW}, s.options().dtype(acc_type));
  double ws_sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ws_in.scalar_type(), "spatial_weight", [&] {
    if (acc_type == at::kDouble) {
      ws_sum = spatial_weight_sum<scalar_t, double>(ws_in.data_ptr<scalar_t>(), N * HW,
                                                    in_place ? nullptr : ws.data_ptr<double>());
    } else {
      ws_sum = spatial_weight_sum<scalar_t, float>(ws_in.data_ptr<scalar_t>(), N * HW,
                                                   in_place ? nullptr : ws.data_ptr<float>());
    }
  });
  // mean: den = C · max(Σ w_s, eps), 0 when Σ w_s == 0 (then loss 0 and gradient 0, any eps)
  const double den =
      a.reduction == kMean
          ? mean_denominator(ws_sum, clamp_eps(a.eps, acc_type), double(std::max<int64_t>(C, 1)))
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
      at::kHalf, at::kBFloat16, s.scalar_type(), "separable_weighted_mse_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const std::vector<acc_t> wc = read_channel_weight<acc_t>(channel_weight);
        const acc_t gscale = static_cast<acc_t>(2.0 / den);
        const acc_t* wsp = ws.data_ptr<acc_t>();
        const acc_t* wcp = wc.empty() ? nullptr : wc.data();
        const scalar_t* sp = s.data_ptr<scalar_t>();
        const scalar_t* tp = t.data_ptr<scalar_t>();
        scalar_t* gp = compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
        scalar_t* op = none ? out.data_ptr<scalar_t>() : nullptr;
        total = dispatch_bools(
            [&](auto kGrad, auto kNone) {
              return static_cast<double>(
                  separable_mse_planes<scalar_t, decltype(kGrad)::value, decltype(kNone)::value>(
                      sp, tp, wsp, wcp, N, C, HW, gscale, gp, op));
            },
            compute_grad, none);
      });
  if (!none) out = at::scalar_tensor(total / den, s.options());
  return {out, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CPU, m) {
  m.impl("separable_weighted_mse", &separable_weighted_mse_cpu);
}

}  // namespace kdkernels::cpu
