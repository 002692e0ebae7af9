// CUDA kernels for the three loss ops (one translation unit: each .cu with torch headers costs
// ~1.5 min of compile time). Same contract and math as the CPU kernels (csrc/ops/cpu/row_losses.h,
// separable_weighted_mse_kernel.cpp); argument parsing, checks, the mean's normaliser and the
// bool → template dispatch are shared with them (csrc/ops/common.h). The forward writes loss
// partials and the student gradient in one pass; backward is grad · grad_output
// (kdkernels/ops/_registration.py).
//
// No host synchronisation: the normalisers (Σ w_s, Σ w) are reduced into device scalars, the
// gradient scale and the final division are computed on the device (mean_scale_kernel,
// finish_mean_kernel), so a call never stalls the stream and can be captured in a CUDA graph.
// Values that need the data (weights finite and >= 0) are not checked here: that would need a
// copy to the host (Python checks them with KDKERNELS_CHECK_VALUES=1).
//
// Reductions are deterministic: per-block (weighted MSE) or per-row (KL/ADL) partials are written to
// a buffer and summed by at::sum, no atomics. Offsets and loop indices are int64. Loads are
// 16-byte vectors when the row/plane length and the pointers allow it. Accumulation in float
// (double for double). Inputs of any strides and storage offsets: student/teacher and the feature
// weights are made contiguous here, the row weight is read with its stride.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>

#include "../common.h"
#include "device_utils.cuh"

namespace kdkernels::cuda {

int compiled_cuda_version() { return CUDART_VERSION; }

namespace {

// A scalar the kernels read from device memory (computed on the device: no host sync) or, when
// `ptr` is null, a host constant.
template <typename T>
struct DeviceScalar {
  const T* ptr;
  T value;
  __device__ __forceinline__ T get() const { return ptr ? *ptr : value; }
};

// ---------------------------------------------------------------- the mean's normaliser, on device
// scale[0] = num / den, the gradient scale; scale[1] = den = mult · max(sum, eps) — or both 0 when
// the normaliser *sum is exactly 0 (common.h: mean_denominator), and the kernels then write an
// exactly-zero gradient and finish_mean_kernel a zero loss.
template <typename acc_t>
__global__ void mean_scale_kernel(const acc_t* __restrict__ sum, acc_t eps, acc_t mult, acc_t num,
                                  acc_t* __restrict__ scale) {
  const acc_t den = kdkernels::mean_denominator(*sum, eps, mult);
  scale[0] = den == acc_t(0) ? acc_t(0) : num / den;
  scale[1] = den;
}

// loss = total / den, exactly 0 when den == 0.
template <typename scalar_t, typename acc_t>
__global__ void finish_mean_kernel(const acc_t* __restrict__ total, DeviceScalar<acc_t> den,
                                   scalar_t* __restrict__ loss) {
  const acc_t d = den.get();
  loss[0] = static_cast<scalar_t>(d == acc_t(0) ? acc_t(0) : *total / d);
}

// Launches mean_scale_kernel on the device scalar `sum`; returns scale (2 values, see above).
at::Tensor mean_scale(const at::Tensor& sum, double eps, double mult, double num, cudaStream_t stream) {
  at::Tensor scale = at::empty({2}, sum.options());
  AT_DISPATCH_FLOATING_TYPES(sum.scalar_type(), "mean_scale", [&] {
    mean_scale_kernel<scalar_t><<<1, 1, 0, stream>>>(
        sum.data_ptr<scalar_t>(), clamp_eps<scalar_t>(eps), static_cast<scalar_t>(mult),
        static_cast<scalar_t>(num), scale.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return scale;
}

// The mean loss (input dtype) from the device scalar `total` (acc dtype) and den (device or host).
at::Tensor finish_mean(const at::Tensor& total, const at::Tensor& scale, double host_den,
                       at::ScalarType dtype, cudaStream_t stream) {
  at::Tensor loss = at::empty({}, total.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "finish_mean", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const DeviceScalar<acc_t> den{scale.defined() ? scale.data_ptr<acc_t>() + 1 : nullptr,
                                  static_cast<acc_t>(host_den)};
    finish_mean_kernel<scalar_t, acc_t><<<1, 1, 0, stream>>>(total.data_ptr<acc_t>(), den,
                                                             loss.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return loss;
}

// ---------------------------------------------------------------- separable weighted MSE
// w = w_s[n,h,w] · w_c[n,c] (w_c = 1 without channel weights); an element with w == 0 gives
// exactly 0 (loss and gradient) whatever its features; a NaN weight is kept and propagates.
// Grid-stride over vectors of the (N, C, HW) tensor; plane = i / HW = n·C + c, spatial index
// n·HW + i % HW.
template <typename scalar_t, int VEC, bool kGrad, bool kNone>
__global__ void separable_mse_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                     const at::opmath_type<scalar_t>* __restrict__ ws,
                                     const at::opmath_type<scalar_t>* __restrict__ wc,
                                     int64_t numel, int64_t C, int64_t HW,
                                     DeviceScalar<at::opmath_type<scalar_t>> gscale_arg,
                                     scalar_t* __restrict__ grad, scalar_t* __restrict__ out,
                                     at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const acc_t gscale = gscale_arg.get();
  const bool zero_grad = gscale == acc_t(0);  // the mean's normaliser is 0: gradient exactly 0
  acc_t acc = 0;
  const int64_t nvec = numel / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const int64_t i0 = v * VEC;
    const V sv = reinterpret_cast<const V*>(s)[v];
    const V tv = reinterpret_cast<const V*>(t)[v];
    const int64_t plane = i0 / HW;  // VEC divides HW: one plane per vector
    const acc_t* w = ws + (plane / C) * HW + (i0 - plane * HW);
    const acc_t cw = wc ? wc[plane] : acc_t(1);
    V gv, ov;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const acc_t wj = w[j] * cw;
      const bool keep = wj != acc_t(0);  // true for NaN
      const acc_t d = static_cast<acc_t>(sv.v[j]) - static_cast<acc_t>(tv.v[j]);
      const acc_t wd = wj * d;
      const acc_t l = keep ? wd * d : acc_t(0);
      if constexpr (kNone) ov.v[j] = static_cast<scalar_t>(l);
      else acc += l;
      if constexpr (kGrad) gv.v[j] = static_cast<scalar_t>(keep && !zero_grad ? gscale * wd : acc_t(0));
    }
    if constexpr (kGrad) reinterpret_cast<V*>(grad)[v] = gv;
    if constexpr (kNone) reinterpret_cast<V*>(out)[v] = ov;
  }
  if constexpr (!kNone) {
    __shared__ acc_t warp_partials[kThreads / kWarp];
    acc = warp_sum(acc);
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    if (lane == 0) warp_partials[warp] = acc;
    __syncthreads();
    if (warp == 0) {
      acc = lane < kThreads / kWarp ? warp_partials[lane] : acc_t(0);
      acc = warp_sum(acc);
      if (lane == 0) partials[blockIdx.x] = acc;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> separable_weighted_mse_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& spatial_weight,
    const std::optional<at::Tensor>& channel_weight, c10::string_view reduction, double eps,
    bool compute_grad) {
  const SeparableMseArgs a = SeparableMseArgs::parse(reduction, eps, compute_grad);
  const FeatureShape sh = check_separable_inputs(student, teacher, spatial_weight, channel_weight, a.op);
  const c10::cuda::CUDAGuard guard(student.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = sh.N, C = sh.C, HW = sh.HW;
  const bool mean = a.reduction == kMean, none = a.reduction == kNone;
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const at::ScalarType acc_type = acc_dtype(s.scalar_type());
  const at::TensorOptions acc_options = s.options().dtype(acc_type);
  // the weights as contiguous acc_t (no copy when they already are: the confidence mask), small
  const at::Tensor ws = spatial_weight.reshape({N * HW}).contiguous().to(acc_type);
  const bool has_wc = channel_weight.has_value() && channel_weight->defined();
  const at::Tensor wc = has_wc ? channel_weight->reshape({N * C}).contiguous().to(acc_type) : at::Tensor();
  // mean: scale = {2 / den, den} with den = C · max(Σ w_s, eps) (0 when Σ w_s == 0), on the device
  const at::Tensor scale =
      mean ? mean_scale(ws.sum(), a.eps, double(std::max<int64_t>(C, 1)), 2.0, stream) : at::Tensor();

  at::Tensor grad = compute_grad ? at::empty_like(s, at::MemoryFormat::Contiguous)
                                 : at::empty({0}, s.options());
  at::Tensor out = none ? at::empty_like(s, at::MemoryFormat::Contiguous) : at::Tensor();
  const int64_t numel = s.numel();
  const int blocks = static_cast<int>(std::clamp<int64_t>((numel + kThreads * 8 - 1) / (kThreads * 8), 1, 4096));
  at::Tensor partials = numel > 0 ? at::empty({blocks}, acc_options) : at::zeros({1}, acc_options);
  if (numel > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "separable_weighted_mse_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const DeviceScalar<acc_t> gscale{scale.defined() ? scale.data_ptr<acc_t>() : nullptr, acc_t(2)};
      const scalar_t* sp = s.data_ptr<scalar_t>();
      const scalar_t* tp = t.data_ptr<scalar_t>();
      const acc_t* wsp = ws.data_ptr<acc_t>();
      const acc_t* wcp = has_wc ? wc.data_ptr<acc_t>() : nullptr;
      scalar_t* gp = compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
      scalar_t* op = none ? out.data_ptr<scalar_t>() : nullptr;
      acc_t* pp = partials.data_ptr<acc_t>();
      const bool vec4 = vec_width<scalar_t>(HW, {sp, tp, gp, op}) >= 4;
      dispatch_bools(
          [&](auto kVec4, auto kGrad, auto kNone) {
            separable_mse_kernel<scalar_t, decltype(kVec4)::value ? 4 : 1, decltype(kGrad)::value,
                                 decltype(kNone)::value>
                <<<blocks, kThreads, 0, stream>>>(sp, tp, wsp, wcp, numel, C, HW, gscale, gp, op, pp);
          },
          vec4, compute_grad, none);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (none) return {out, grad};
  const at::Tensor total = partials.sum();
  if (!mean) return {total.to(s.scalar_type()), grad};
  return {finish_mean(total, scale, 1.0, s.scalar_type(), stream), grad};
}

// ---------------------------------------------------------------- soft-label KL / ADL (one warp per row)
template <typename acc_t>
struct RowParams {
  acc_t inv_t, t2, beta, gamma, weight_grad;
};

template <typename acc_t>
__device__ __forceinline__ void adaptive_weight(acc_t kl, acc_t h, const RowParams<acc_t>& p,
                                                acc_t& w, acc_t& factor) {
  acc_t d = kl + p.beta * h;
  d = d > acc_t(0) ? d : acc_t(0);
  const acc_t e = -dexpm1(-d);
  w = p.gamma == acc_t(0) ? acc_t(1) : (e > acc_t(0) ? dpow(e, p.gamma) : acc_t(0));
  const acc_t dw_de = e > acc_t(0) ? p.gamma * w / e : acc_t(0);
  factor = w + p.weight_grad * kl * dw_de * (acc_t(1) - e);
}

template <typename acc_t>
__device__ __forceinline__ void softplus_sigmoid(acc_t x, acc_t& sp, acc_t& sig) {
  const acc_t e = dexp(-fabs(x));
  const acc_t inv = acc_t(1) / (acc_t(1) + e);
  sp = (x > acc_t(0) ? x : acc_t(0)) + dlog1p(e);
  sig = x >= acc_t(0) ? inv : e * inv;
}

// weight: acc_t values read with stride w_stride (any stride, 0 for an expanded weight), or null.
// gscale: T / den (mean) or T; 0 when the mean's normaliser is 0 → the gradient is exactly 0.
template <typename scalar_t, int VEC, bool kSoftmax, bool kGrad, bool kAdaptive>
__global__ void row_loss_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                const at::opmath_type<scalar_t>* __restrict__ weight,
                                int64_t w_stride, int64_t R, int64_t K,
                                RowParams<at::opmath_type<scalar_t>> p,
                                DeviceScalar<at::opmath_type<scalar_t>> gscale_arg,
                                scalar_t* __restrict__ grad,
                                at::opmath_type<scalar_t>* __restrict__ row_out) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= R) return;
  const int64_t base = row * K;
  const V* sv = reinterpret_cast<const V*>(s + base);
  const V* tv = reinterpret_cast<const V*>(t + base);
  const int64_t nvec = K / VEC;
  const acc_t w_r = weight ? weight[row * w_stride] : acc_t(1);
  const acc_t gscale = gscale_arg.get();
  const bool zero_grad = gscale == acc_t(0);
  const acc_t g = gscale * w_r;
  acc_t row_loss;
  if constexpr (!kSoftmax) {
    acc_t acc = 0;
    for (int64_t v = lane; v < nvec; v += kWarp) {
      const V a_v = tv[v], b_v = sv[v];
      V gv;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const acc_t a = temper(static_cast<acc_t>(a_v.v[j]), p.inv_t);
        const acc_t b = temper(static_cast<acc_t>(b_v.v[j]), p.inv_t);
        acc_t spa, pa, spb, qb;
        softplus_sigmoid(a, spa, pa);
        softplus_sigmoid(b, spb, qb);
        const acc_t kl = pa * (a - b) + spb - spa;
        acc_t factor = 1;
        if constexpr (kAdaptive) {
          acc_t w;
          adaptive_weight(kl, spa - pa * a, p, w, factor);
          acc += w * kl;
        } else {
          acc += kl;
        }
        if constexpr (kGrad) gv.v[j] = static_cast<scalar_t>(zero_grad ? acc_t(0) : g * (qb - pa) * factor);
      }
      if constexpr (kGrad) reinterpret_cast<V*>(grad + base)[v] = gv;
    }
    row_loss = warp_sum(acc) * p.t2;
  } else {
    // pass 1: online (max, Σexp, Σexp·(a−b), Σexp·a) per lane, merged across the warp
    acc_t ma = -INFINITY, mb = -INFINITY, za = 0, zb = 0, sd = 0, sa = 0;
    for (int64_t v = lane; v < nvec; v += kWarp) {
      const V a_v = tv[v], b_v = sv[v];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const acc_t a = temper(static_cast<acc_t>(a_v.v[j]), p.inv_t);
        const acc_t b = temper(static_cast<acc_t>(b_v.v[j]), p.inv_t);
        if (a > ma) {
          const acc_t r = dexp(ma - a);
          za *= r; sd *= r; sa *= r; ma = a;
        }
        if (b > mb) { zb *= dexp(mb - b); mb = b; }
        const acc_t x = dexp(a - ma);
        za += x; sd += x * (a - b); sa += x * a;
        zb += dexp(b - mb);
      }
    }
    const acc_t gma = warp_max(ma), gmb = warp_max(mb);
    const acc_t ra = ma == -INFINITY ? acc_t(0) : dexp(ma - gma);
    const acc_t rb = mb == -INFINITY ? acc_t(0) : dexp(mb - gmb);
    za = warp_sum(za * ra); sd = warp_sum(sd * ra); sa = warp_sum(sa * ra); zb = warp_sum(zb * rb);
    const acc_t lse_a = gma + dlog(za), lse_b = gmb + dlog(zb);
    const acc_t kl = sd / za + lse_b - lse_a;
    acc_t factor = 1, w = 1;
    if constexpr (kAdaptive) adaptive_weight(kl, lse_a - sa / za, p, w, factor);
    row_loss = w * kl * p.t2;
    if constexpr (kGrad) {
      const acc_t gf = g * factor;
      for (int64_t v = lane; v < nvec; v += kWarp) {
        const V a_v = tv[v], b_v = sv[v];
        V gv;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t a = temper(static_cast<acc_t>(a_v.v[j]), p.inv_t);
          const acc_t b = temper(static_cast<acc_t>(b_v.v[j]), p.inv_t);
          gv.v[j] = static_cast<scalar_t>(zero_grad ? acc_t(0) : gf * (dexp(b - lse_b) - dexp(a - lse_a)));
        }
        reinterpret_cast<V*>(grad + base)[v] = gv;
      }
    }
  }
  if (lane == 0) row_out[row] = row_loss * w_r;
}

template <typename scalar_t, int VEC>
void launch_rows(const RowLossArgs& a, const scalar_t* s, const scalar_t* t,
                 const at::opmath_type<scalar_t>* w, int64_t w_stride, int64_t R, int64_t K,
                 const RowParams<at::opmath_type<scalar_t>>& p,
                 DeviceScalar<at::opmath_type<scalar_t>> gscale, scalar_t* grad,
                 at::opmath_type<scalar_t>* row_out, cudaStream_t stream) {
  constexpr int rows_per_block = kThreads / kWarp;
  const int64_t blocks = (R + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(blocks < (int64_t(1) << 31), a.op, ": too many rows for one launch: ", R);
  dispatch_bools(
      [&](auto kSoftmax, auto kGrad, auto kAdaptive) {
        row_loss_kernel<scalar_t, VEC, decltype(kSoftmax)::value, decltype(kGrad)::value,
                        decltype(kAdaptive)::value>
            <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(s, t, w, w_stride, R, K, p,
                                                                    gscale, grad, row_out);
      },
      a.softmax, a.compute_grad, a.adaptive);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> row_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                 const std::optional<at::Tensor>& weight,
                                                 const RowLossArgs& a) {
  const RowShape sh = check_row_inputs(student, teacher, weight, a.op);
  const c10::cuda::CUDAGuard guard(student.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t R = sh.R, K = sh.K;
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const at::ScalarType acc_type = acc_dtype(s.scalar_type());
  const at::TensorOptions acc_options = s.options().dtype(acc_type);
  // weight: a view with its own stride when it already has the accumulation dtype
  const at::Tensor w = weight.has_value() && weight->defined()
                           ? weight->reshape({R}).to(acc_type)
                           : at::Tensor();
  // mean: gradient scale T / den, den = max(Σ w, eps) on the device (no host sync), or
  // max(R, eps) on the host without weights; den == 0 gives loss 0 and gradient 0.
  const bool mean = a.reduction == kMean;
  at::Tensor scale;
  double host_den = 1.0;
  if (mean && w.defined()) {
    scale = mean_scale(w.sum(), a.eps, 1.0, a.temperature, stream);
  } else if (mean) {
    host_den = mean_denominator(static_cast<double>(R), clamp_eps(a.eps, acc_type), 1.0);
  }
  at::Tensor grad = a.compute_grad ? at::empty_like(s, at::MemoryFormat::Contiguous)
                                   : at::empty({0}, s.options());
  if (host_den == 0.0) {  // mean of no rows
    if (a.compute_grad) grad.zero_();
    return {at::zeros({}, s.options()), grad};
  }
  const bool launch = R > 0 && K > 0;
  at::Tensor rows = launch ? at::empty({R}, acc_options) : at::zeros({R}, acc_options);
  if (launch) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "row_loss_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const RowParams<acc_t> p{static_cast<acc_t>(1.0 / a.temperature),
                               static_cast<acc_t>(a.temperature * a.temperature),
                               static_cast<acc_t>(a.beta), static_cast<acc_t>(a.gamma),
                               static_cast<acc_t>(a.detach_weight ? 0.0 : 1.0)};
      const DeviceScalar<acc_t> gscale{scale.defined() ? scale.data_ptr<acc_t>() : nullptr,
                                       static_cast<acc_t>(a.temperature / host_den)};
      const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
      const int64_t w_stride = w.defined() ? w.stride(0) : 0;
      const scalar_t* sp = s.data_ptr<scalar_t>();
      const scalar_t* tp = t.data_ptr<scalar_t>();
      scalar_t* gp = a.compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
      acc_t* rp = rows.data_ptr<acc_t>();
      const int vec = vec_width<scalar_t>(K, {sp, tp, gp});
      if (vec == 8) {
        launch_rows<scalar_t, 8>(a, sp, tp, wp, w_stride, R, K, p, gscale, gp, rp, stream);
      } else if (vec == 4) {
        launch_rows<scalar_t, 4>(a, sp, tp, wp, w_stride, R, K, p, gscale, gp, rp, stream);
      } else if (vec == 2) {
        launch_rows<scalar_t, 2>(a, sp, tp, wp, w_stride, R, K, p, gscale, gp, rp, stream);
      } else {
        launch_rows<scalar_t, 1>(a, sp, tp, wp, w_stride, R, K, p, gscale, gp, rp, stream);
      }
    });
  } else if (a.compute_grad) {
    grad.zero_();
  }
  if (a.reduction == kNone) return {rows.to(s.scalar_type()), grad};
  const at::Tensor total = rows.sum();
  if (!mean) return {total.to(s.scalar_type()), grad};
  return {finish_mean(total, scale, host_den, s.scalar_type(), stream), grad};
}

std::tuple<at::Tensor, at::Tensor> soft_label_kl_cuda(
    const at::Tensor& student_logits, const at::Tensor& teacher_logits,
    const std::optional<at::Tensor>& weight, double temperature, c10::string_view mode,
    c10::string_view reduction, double eps, bool compute_grad) {
  return row_loss_cuda(student_logits, teacher_logits, weight,
                       RowLossArgs::soft_label_kl(temperature, mode, reduction, eps, compute_grad));
}

std::tuple<at::Tensor, at::Tensor> adaptive_distillation_loss_cuda(
    const at::Tensor& student_logits, const at::Tensor& teacher_logits,
    const std::optional<at::Tensor>& weight, double temperature, double beta, double gamma,
    c10::string_view mode, bool detach_weight, c10::string_view reduction, double eps,
    bool compute_grad) {
  return row_loss_cuda(student_logits, teacher_logits, weight,
                       RowLossArgs::adaptive_distillation_loss(temperature, beta, gamma, mode,
                                                               detach_weight, reduction, eps,
                                                               compute_grad));
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CUDA, m) {
  m.impl("separable_weighted_mse", &separable_weighted_mse_cuda);
  m.impl("soft_label_kl", &soft_label_kl_cuda);
  m.impl("adaptive_distillation_loss", &adaptive_distillation_loss_cuda);
}

}  // namespace kdkernels::cuda
