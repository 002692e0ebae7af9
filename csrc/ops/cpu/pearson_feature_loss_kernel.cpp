// Fused CPU kernel for kdkernels::pearson_feature_loss (PKD, Cao et al. 2022; MMRazor PKDLoss).
//
// Per channel c over its M = N·H·W values, x̂ = (x − μ_x) / (σ_x + 1e-6) (σ unbiased), and
//   mean: Σ_c Σ (ŝ − t̂)² / (2·N·C·H·W);  sum: Σ_c Σ (ŝ − t̂)² / 2;
//   none: per channel Σ (ŝ − t̂)² / (2M), returned as (1, C, 1, 1) (the public op reshapes it to
//         (C,); this shape lets the shared backward broadcast grad_output over the channel).
// Two passes over student and teacher, the gradient included (formulas and their derivation:
// ../pearson_feature_loss.h):
//   pass 1: per fixed-size block of a channel, the shifted sums Σu, Σv, Σu², Σv², Σuv; the
//           blocks of a channel are added in block order, then the channel's statistics
//           (μ, 1/(σ + ε), the gradient coefficient p) follow in closed form;
//   pass 2: d = ŝ − t̂ elementwise: the loss partial Σ d² per block (exact even when ŝ ≈ t̂,
//           where the closed form Σŝ² + Σt̂² − 2Σŝt̂ would cancel) and ∂loss/∂s = scale·a·(d − p·ds).
// Blocks are kBlock consecutive values of one channel (spanning (n, c) planes when H·W is
// small), so results do not depend on the thread count. With many channels a thread runs both
// passes on one channel after the other (pass 2 then rereads it from cache). Sums in at::opmath_type (float for
// float/half/bfloat16, double for double); 64-bit offsets; inputs of any strides (made
// contiguous once); NaN in → NaN out for the channel it is in.
#include "../pearson_feature_loss.h"
#include "blocks.h"
#include "buffer_cache.h"
#include "vec_math.h"

#include <torch/library.h>

#include <cmath>

namespace kdkernels::cpu {
namespace {

// sums[0..4] += Σu, Σv, Σu², Σv², Σuv over one contiguous segment, u = s − ks, v = t − kt.
template <typename acc_t>
KDK_INLINE void moments_impl(const acc_t* s, const acc_t* t, int64_t n, acc_t ks, acc_t kt,
                             acc_t* sums) {
  acc_t su = 0, sv = 0, suu = 0, svv = 0, suv = 0;
#pragma omp simd reduction(+ : su, sv, suu, svv, suv)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t u = s[i] - ks;
    const acc_t v = t[i] - kt;
    su += u;
    sv += v;
    suu += u * u;
    svv += v * v;
    suv += u * v;
  }
  sums[0] += su;
  sums[1] += sv;
  sums[2] += suu;
  sums[3] += svv;
  sums[4] += suv;
}

// Σ d² over one contiguous segment, d = a·ds − b·dt, ds = (s − ks) − mu, dt = (t − kt) − mv;
// with kGrad, grad[i] = ga · (d − p · ds) (ga = scale · a).
template <typename acc_t, bool kGrad>
KDK_INLINE acc_t pass2_impl(const acc_t* s, const acc_t* t, int64_t n, acc_t ks, acc_t kt,
                            acc_t mu, acc_t mv, acc_t a, acc_t b, acc_t p, acc_t ga, acc_t* grad) {
  acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t ds = (s[i] - ks) - mu;
    const acc_t dt = (t[i] - kt) - mv;
    const acc_t d = a * ds - b * dt;
    acc += d * d;
    if constexpr (kGrad) grad[i] = ga * (d - p * ds);
  }
  return acc;
}

KDK_TARGET_CLONES void moments_f32(const float* s, const float* t, int64_t n, float ks, float kt,
                                   float* sums) {
  moments_impl<float>(s, t, n, ks, kt, sums);
}
KDK_TARGET_CLONES float pass2_f32(const float* s, const float* t, int64_t n, float ks, float kt,
                                  float mu, float mv, float a, float b, float p, float ga,
                                  float* grad) {
  return pass2_impl<float, false>(s, t, n, ks, kt, mu, mv, a, b, p, ga, grad);
}
KDK_TARGET_CLONES float pass2_f32_grad(const float* s, const float* t, int64_t n, float ks,
                                       float kt, float mu, float mv, float a, float b, float p,
                                       float ga, float* grad) {
  return pass2_impl<float, true>(s, t, n, ks, kt, mu, mv, a, b, p, ga, grad);
}

template <typename acc_t>
void moments(const acc_t* s, const acc_t* t, int64_t n, acc_t ks, acc_t kt, acc_t* sums) {
  if constexpr (std::is_same_v<acc_t, float>) {
    moments_f32(s, t, n, ks, kt, sums);
  } else {
    moments_impl<acc_t>(s, t, n, ks, kt, sums);
  }
}

template <typename acc_t, bool kGrad>
acc_t pass2(const acc_t* s, const acc_t* t, int64_t n, const PearsonStats<acc_t>& st, acc_t ga,
            acc_t* grad) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if constexpr (kGrad) {
      return pass2_f32_grad(s, t, n, st.ks, st.kt, st.mean_u, st.mean_v, st.a, st.b, st.p, ga, grad);
    } else {
      return pass2_f32(s, t, n, st.ks, st.kt, st.mean_u, st.mean_v, st.a, st.b, st.p, ga, grad);
    }
  } else {
    return pass2_impl<acc_t, kGrad>(s, t, n, st.ks, st.kt, st.mean_u, st.mean_v, st.a, st.b, st.p,
                                    ga, grad);
  }
}

// Calls f(offset, len) for the contiguous segments of values [m0, m1) of channel c of a
// contiguous (N, C, HW) tensor (value m of the channel is at n = m / HW, j = m % HW).
template <typename F>
inline void for_segments(int64_t c, int64_t C, int64_t HW, int64_t m0, int64_t m1, F&& f) {
  int64_t n = m0 / HW, j = m0 - n * HW;
  for (int64_t m = m0; m < m1; ++n, j = 0) {
    const int64_t len = std::min(m1 - m, HW - j);
    f((n * C + c) * HW + j, len);
    m += len;
  }
}

template <typename scalar_t>
struct Layout {
  const scalar_t* s;
  const scalar_t* t;
  int64_t C, HW, M, blocks_per_channel;
};

// Both passes; returns each channel's Σ d². Every block's sums and every per-channel sum over the
// blocks (in block order) are the same whichever schedule runs, so the result does not depend on
// the schedule or the thread count:
//   by channel (C >= 4 threads): a thread takes whole channels and runs pass 1, the statistics and
//     pass 2 on one channel after the other, so pass 2 rereads the channel from cache (a channel
//     of an FPN level is 0.1–1 MB of student + teacher) and there are two parallel regions less;
//   by block (few channels): pass 1 over all blocks in parallel, the statistics, pass 2 likewise.
template <typename scalar_t, bool kGrad>
std::vector<at::opmath_type<scalar_t>> pearson_passes(const Layout<scalar_t>& L, double scale,
                                                      scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool staged = !std::is_same_v<scalar_t, acc_t>;
  const int64_t C = L.C, bpc = L.blocks_per_channel, num_blocks = C * bpc;
  std::vector<acc_t> moment_parts(num_blocks * 5, acc_t(0)), square_parts(num_blocks, acc_t(0));
  std::vector<PearsonStats<acc_t>> stats(C);
  struct Buffers {  // staging of half/bfloat16 values in acc_t
    std::vector<acc_t> s, t, g;
    Buffers() : s(staged ? kBlock : 0), t(staged ? kBlock : 0), g(staged && kGrad ? kBlock : 0) {}
  };

  auto moments_block = [&](int64_t b, Buffers& buf) {
    const int64_t c = b / bpc, m0 = (b % bpc) * kBlock;
    const acc_t ks = static_cast<acc_t>(L.s[c * L.HW]), kt = static_cast<acc_t>(L.t[c * L.HW]);
    acc_t* sums = moment_parts.data() + b * 5;
    for_segments(c, C, L.HW, m0, std::min(L.M, m0 + kBlock), [&](int64_t off, int64_t len) {
      moments(load_as_acc(L.s + off, len, buf.s.data()), load_as_acc(L.t + off, len, buf.t.data()),
              len, ks, kt, sums);
    });
  };
  auto channel_stats = [&](int64_t c) {
    acc_t sum[5] = {0, 0, 0, 0, 0};
    for (int64_t k = 0; k < bpc; ++k) {
      for (int q = 0; q < 5; ++q) sum[q] += moment_parts[(c * bpc + k) * 5 + q];
    }
    stats[c] = pearson_stats<acc_t>(static_cast<acc_t>(L.s[c * L.HW]),
                                    static_cast<acc_t>(L.t[c * L.HW]), sum[0], sum[1], sum[2],
                                    sum[3], sum[4], static_cast<acc_t>(L.M),
                                    static_cast<acc_t>(kPearsonEps));
  };
  auto pass2_block = [&](int64_t b, Buffers& buf) {
    const int64_t c = b / bpc, m0 = (b % bpc) * kBlock;
    const PearsonStats<acc_t>& st = stats[c];
    const acc_t ga = static_cast<acc_t>(scale * static_cast<double>(st.a));
    acc_t part = 0;
    for_segments(c, C, L.HW, m0, std::min(L.M, m0 + kBlock), [&](int64_t off, int64_t len) {
      acc_t* g = kGrad ? acc_out(grad + off, buf.g.data()) : nullptr;
      part += pass2<acc_t, kGrad>(load_as_acc(L.s + off, len, buf.s.data()),
                                  load_as_acc(L.t + off, len, buf.t.data()), len, st, ga, g);
      if constexpr (kGrad) store_from_acc(g, len, grad + off);
    });
    square_parts[b] = part;
  };

  if (C >= 4 * static_cast<int64_t>(at::get_num_threads())) {
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      Buffers buf;
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t k = 0; k < bpc; ++k) moments_block(c * bpc + k, buf);
        channel_stats(c);
        for (int64_t k = 0; k < bpc; ++k) pass2_block(c * bpc + k, buf);
      }
    });
  } else {
    at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
      Buffers buf;
      for (int64_t b = b0; b < b1; ++b) moments_block(b, buf);
    });
    for (int64_t c = 0; c < C; ++c) channel_stats(c);  // C·(blocks per channel) additions
    at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
      Buffers buf;
      for (int64_t b = b0; b < b1; ++b) pass2_block(b, buf);
    });
  }
  std::vector<acc_t> losses(C, acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t k = 0; k < bpc; ++k) losses[c] += square_parts[c * bpc + k];
  }
  return losses;
}


std::tuple<at::Tensor, at::Tensor> pearson_feature_loss_cpu(const at::Tensor& student,
                                                            const at::Tensor& teacher,
                                                            c10::string_view reduction,
                                                            bool compute_grad) {
  const Reduction red = parse_reduction(reduction, kPearsonOp);
  const PearsonShape sh = check_pearson_inputs(student, teacher);
  const int64_t C = sh.C, HW = sh.HW, M = sh.M;
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const double numel = pearson_numel(sh);
  const double scale = pearson_grad_scale(red, sh);
  at::Tensor grad = compute_grad ? empty_large_like(s) : at::empty({0}, s.options());
  at::Tensor out = red == kNone ? at::empty({1, C, 1, 1}, s.options()) : at::Tensor();
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, s.scalar_type(), "pearson_feature_loss_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Layout<scalar_t> L{s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), C, HW, M,
                                 (M + kBlock - 1) / kBlock};
        const auto losses =
            compute_grad ? pearson_passes<scalar_t, true>(L, scale, grad.data_ptr<scalar_t>())
                         : pearson_passes<scalar_t, false>(L, scale, nullptr);
        if (red == kNone) {
          scalar_t* o = out.data_ptr<scalar_t>();
          for (int64_t c = 0; c < C; ++c) {
            o[c] = static_cast<scalar_t>(losses[c] / (acc_t(2) * static_cast<acc_t>(M)));
          }
        } else {
          for (int64_t c = 0; c < C; ++c) total += static_cast<double>(losses[c]);
        }
      });
  if (red == kNone) return {out, grad};
  // mean of no channels (C = 0) is 0/0 = NaN, as torch's mean of an empty tensor (the reference)
  const double loss = red == kMean ? total / (2.0 * numel) : total / 2.0;
  return {at::scalar_tensor(loss, s.options()), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CPU, m) {
  m.impl("pearson_feature_loss", &pearson_feature_loss_cpu);
}

}  // namespace kdkernels::cpu
