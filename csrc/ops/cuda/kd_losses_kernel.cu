// CUDA kernels for the three loss ops (one translation unit: each .cu with torch headers costs
// ~1.5 min of compile time). Same contract and math as the CPU kernels (csrc/ops/cpu/row_losses.h,
// confidence_masked_mse_kernel.cpp): the forward writes loss partials and the student gradient in
// one pass; backward is grad · grad_output (kdkernels/ops/_registration.py).
//
// Reductions are deterministic: per-block (masked MSE) or per-row (KL/ADL) partials are written to
// a buffer and summed by at::sum, no atomics. Offsets are int64. Loads are 16-byte vectors when
// the row/plane length and the pointers allow it. Accumulation in float (double for double).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "../cpu/common.h"

namespace kdkernels::cuda {

int compiled_cuda_version() { return CUDART_VERSION; }

namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

__device__ __forceinline__ float dexp(float x) { return __expf(x); }
__device__ __forceinline__ double dexp(double x) { return ::exp(x); }
__device__ __forceinline__ float dlog(float x) { return __logf(x); }
__device__ __forceinline__ double dlog(double x) { return ::log(x); }
__device__ __forceinline__ float dlog1p(float x) { return ::log1pf(x); }
__device__ __forceinline__ double dlog1p(double x) { return ::log1p(x); }
__device__ __forceinline__ float dexpm1(float x) { return ::expm1f(x); }
__device__ __forceinline__ double dexpm1(double x) { return ::expm1(x); }
__device__ __forceinline__ float dpow(float x, float y) { return ::powf(x, y); }
__device__ __forceinline__ double dpow(double x, double y) { return ::pow(x, y); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Vec {
  scalar_t v[VEC];
};

template <typename scalar_t>
int vec_width(int64_t inner, std::initializer_list<const void*> ptrs) {
  constexpr int bytes = 16;
  const int vec = bytes / static_cast<int>(sizeof(scalar_t));
  if (vec <= 1 || inner % vec) return 1;
  for (const void* p : ptrs) {
    if (p && reinterpret_cast<uintptr_t>(p) % bytes) return 1;
  }
  return vec;
}

// ---------------------------------------------------------------- confidence-masked MSE
// grid-stride over vectors of the (N, C, HW) tensor; mask index = (i / (C·HW))·HW + i % HW.
template <typename scalar_t, int VEC, bool kGrad, bool kNone>
__global__ void masked_mse_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                  const at::opmath_type<scalar_t>* __restrict__ mask, int64_t numel,
                                  int64_t C, int64_t HW, at::opmath_type<scalar_t> gscale,
                                  scalar_t* __restrict__ grad, scalar_t* __restrict__ out,
                                  at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  acc_t acc = 0;
  const int64_t nvec = numel / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const int64_t i0 = v * VEC;
    const V sv = reinterpret_cast<const V*>(s)[v];
    const V tv = reinterpret_cast<const V*>(t)[v];
    const int64_t hw0 = i0 % HW;
    const acc_t* m = mask + (i0 / (C * HW)) * HW + hw0;  // VEC divides HW: one plane per vector
    V gv, ov;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const acc_t d = static_cast<acc_t>(sv.v[j]) - static_cast<acc_t>(tv.v[j]);
      const acc_t md = m[j] * d;
      if constexpr (kNone) ov.v[j] = static_cast<scalar_t>(md * d);
      else acc += md * d;
      if constexpr (kGrad) gv.v[j] = static_cast<scalar_t>(gscale * md);
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

template <typename scalar_t, int VEC>
void launch_masked_mse(const at::Tensor& s, const at::Tensor& t, const at::Tensor& mask, int64_t C,
                       int64_t HW, double gscale, bool compute_grad, bool none, at::Tensor& grad,
                       at::Tensor& out, at::Tensor& partials, int blocks, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t numel = s.numel();
  auto sp = s.data_ptr<scalar_t>();
  auto tp = t.data_ptr<scalar_t>();
  auto mp = mask.data_ptr<acc_t>();
  scalar_t* gp = compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
  scalar_t* op = none ? out.data_ptr<scalar_t>() : nullptr;
  acc_t* pp = none ? nullptr : partials.data_ptr<acc_t>();
  const acc_t g = static_cast<acc_t>(gscale);
#define KDK_LAUNCH(G, NONE)                                                                       \
  masked_mse_kernel<scalar_t, VEC, G, NONE>                                                       \
      <<<blocks, kThreads, 0, stream>>>(sp, tp, mp, numel, C, HW, g, gp, op, pp)
  if (none) {
    if (compute_grad) KDK_LAUNCH(true, true); else KDK_LAUNCH(false, true);
  } else {
    if (compute_grad) KDK_LAUNCH(true, false); else KDK_LAUNCH(false, false);
  }
#undef KDK_LAUNCH
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> confidence_masked_mse_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& confidence,
    double threshold, double power, c10::string_view reduction, double eps, bool compute_grad) {
  TORCH_CHECK(student.dim() == 4 && student.sizes() == teacher.sizes(),
              "confidence_masked_mse: student and teacher must be (N, C, H, W) of one shape");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(),
              "confidence_masked_mse: student and teacher must share a dtype");
  const c10::cuda::CUDAGuard guard(student.device());
  const auto red = cpu::parse_reduction(reduction);
  const int64_t N = student.size(0), C = student.size(1);
  const int64_t HW = student.size(2) * student.size(3);
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const at::Tensor conf = confidence.reshape({N, HW}).to(cpu::acc_dtype(s.scalar_type()));
  at::Tensor mask = power == 1.0 ? conf : conf.pow(power);
  mask = (mask * conf.ge(threshold)).contiguous();
  const at::Tensor mask_sum = mask.sum(at::kDouble);
  at::Tensor grad = compute_grad ? at::empty_like(s) : at::empty({0}, s.options());
  at::Tensor out = red == cpu::kNone ? at::empty_like(s) : at::Tensor();
  // gradient scale 2/norm needs Σm on the host before the launch (one sync of a scalar)
  const double norm = red == cpu::kMean
                          ? double(std::max<int64_t>(C, 1)) * std::max(mask_sum.item<double>(), eps)
                          : 1.0;
  const int64_t numel = s.numel();
  const int blocks = static_cast<int>(std::clamp<int64_t>((numel + kThreads * 8 - 1) / (kThreads * 8), 1, 4096));
  at::Tensor partials = at::zeros({blocks}, s.options().dtype(cpu::acc_dtype(s.scalar_type())));
  if (numel > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "confidence_masked_mse_cuda", [&] {
      const int vec = std::min<int>(vec_width<scalar_t>(HW, {s.data_ptr(), t.data_ptr(),
                                                             compute_grad ? grad.data_ptr() : nullptr,
                                                             out.defined() ? out.data_ptr() : nullptr}), 4);
      if (vec == 4) {
        launch_masked_mse<scalar_t, 4>(s, t, mask, C, HW, 2.0 / norm, compute_grad, red == cpu::kNone, grad, out, partials, blocks, stream);
      } else {
        launch_masked_mse<scalar_t, 1>(s, t, mask, C, HW, 2.0 / norm, compute_grad, red == cpu::kNone, grad, out, partials, blocks, stream);
      }
    });
  }
  if (red != cpu::kNone) out = (partials.sum() / norm).to(s.scalar_type());
  return {out, grad};
}

// ---------------------------------------------------------------- soft-label KL / ADL (one warp per row)
template <typename acc_t>
struct RowParams {
  acc_t inv_t, t2, beta, gamma, weight_grad, gbase;
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

template <typename scalar_t, int VEC, bool kSoftmax, bool kGrad, bool kAdaptive>
__global__ void row_loss_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                const at::opmath_type<scalar_t>* __restrict__ weight, int64_t R,
                                int64_t K, RowParams<at::opmath_type<scalar_t>> p,
                                scalar_t* __restrict__ grad, at::opmath_type<scalar_t>* __restrict__ row_out) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= R) return;
  const int64_t base = row * K;
  const V* sv = reinterpret_cast<const V*>(s + base);
  const V* tv = reinterpret_cast<const V*>(t + base);
  const int64_t nvec = K / VEC;
  const acc_t w_r = weight ? weight[row] : acc_t(1);
  const acc_t g = p.gbase * w_r;
  acc_t row_loss;
  if constexpr (!kSoftmax) {
    acc_t acc = 0;
    for (int64_t v = lane; v < nvec; v += kWarp) {
      const V a_v = tv[v], b_v = sv[v];
      V gv;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const acc_t a = static_cast<acc_t>(a_v.v[j]) * p.inv_t;
        const acc_t b = static_cast<acc_t>(b_v.v[j]) * p.inv_t;
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
        if constexpr (kGrad) gv.v[j] = static_cast<scalar_t>(g * (qb - pa) * factor);
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
        const acc_t a = static_cast<acc_t>(a_v.v[j]) * p.inv_t;
        const acc_t b = static_cast<acc_t>(b_v.v[j]) * p.inv_t;
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
          const acc_t a = static_cast<acc_t>(a_v.v[j]) * p.inv_t;
          const acc_t b = static_cast<acc_t>(b_v.v[j]) * p.inv_t;
          gv.v[j] = static_cast<scalar_t>(gf * (dexp(b - lse_b) - dexp(a - lse_a)));
        }
        reinterpret_cast<V*>(grad + base)[v] = gv;
      }
    }
  }
  if (lane == 0) row_out[row] = row_loss * w_r;
}

template <typename scalar_t, int VEC, bool kSoftmax, bool kAdaptive>
void launch_rows(bool compute_grad, const scalar_t* s, const scalar_t* t,
                 const at::opmath_type<scalar_t>* w, int64_t R, int64_t K,
                 const RowParams<at::opmath_type<scalar_t>>& p, scalar_t* grad,
                 at::opmath_type<scalar_t>* row_out, cudaStream_t stream) {
  constexpr int rows_per_block = kThreads / kWarp;
  const int64_t blocks = (R + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "too many rows for one launch: ", R);
  if (compute_grad) {
    row_loss_kernel<scalar_t, VEC, kSoftmax, true, kAdaptive>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(s, t, w, R, K, p, grad, row_out);
  } else {
    row_loss_kernel<scalar_t, VEC, kSoftmax, false, kAdaptive>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(s, t, w, R, K, p, grad, row_out);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC>
void launch_rows_mode(bool softmax, bool adaptive, bool compute_grad, const scalar_t* s,
                      const scalar_t* t, const at::opmath_type<scalar_t>* w, int64_t R, int64_t K,
                      const RowParams<at::opmath_type<scalar_t>>& p, scalar_t* grad,
                      at::opmath_type<scalar_t>* row_out, cudaStream_t stream) {
  if (softmax && adaptive) launch_rows<scalar_t, VEC, true, true>(compute_grad, s, t, w, R, K, p, grad, row_out, stream);
  else if (softmax) launch_rows<scalar_t, VEC, true, false>(compute_grad, s, t, w, R, K, p, grad, row_out, stream);
  else if (adaptive) launch_rows<scalar_t, VEC, false, true>(compute_grad, s, t, w, R, K, p, grad, row_out, stream);
  else launch_rows<scalar_t, VEC, false, false>(compute_grad, s, t, w, R, K, p, grad, row_out, stream);
}

std::tuple<at::Tensor, at::Tensor> row_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                 const std::optional<at::Tensor>& weight,
                                                 const cpu::RowLossArgs& a, const char* op_name) {
  TORCH_CHECK(student.dim() == 2 && student.sizes() == teacher.sizes(), op_name,
              ": student_logits and teacher_logits must be (R, K) of one shape");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), op_name,
              ": student_logits and teacher_logits must share a dtype");
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t R = student.size(0), K = student.size(1);
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const auto acc_type = cpu::acc_dtype(s.scalar_type());
  at::Tensor w;
  double norm = 1.0;
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->numel() == R, op_name, ": weight must hold one value per row (", R, ")");
    w = weight->reshape({R}).to(acc_type).contiguous();
  }
  if (a.reduction == cpu::kMean) {  // one scalar sync: the gradient is written pre-normalised
    norm = std::max(w.defined() ? w.sum(at::kDouble).item<double>() : double(R), a.eps);
  }
  at::Tensor grad = a.compute_grad ? at::empty_like(s) : at::empty({0}, s.options());
  at::Tensor rows = at::zeros({R}, s.options().dtype(acc_type));
  if (R > 0 && K > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "row_loss_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const RowParams<acc_t> p{static_cast<acc_t>(1.0 / a.temperature),
                               static_cast<acc_t>(a.temperature * a.temperature),
                               static_cast<acc_t>(a.beta), static_cast<acc_t>(a.gamma),
                               static_cast<acc_t>(a.detach_weight ? 0.0 : 1.0),
                               static_cast<acc_t>(a.temperature / norm)};
      const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
      scalar_t* gp = a.compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
      const int vec = vec_width<scalar_t>(K, {s.data_ptr(), t.data_ptr(), gp});
      if (vec == 8) {
        launch_rows_mode<scalar_t, 8>(a.softmax, a.adaptive, a.compute_grad, s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), wp, R, K, p, gp, rows.data_ptr<acc_t>(), stream);
      } else if (vec == 4) {
        launch_rows_mode<scalar_t, 4>(a.softmax, a.adaptive, a.compute_grad, s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), wp, R, K, p, gp, rows.data_ptr<acc_t>(), stream);
      } else if (vec == 2) {
        launch_rows_mode<scalar_t, 2>(a.softmax, a.adaptive, a.compute_grad, s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), wp, R, K, p, gp, rows.data_ptr<acc_t>(), stream);
      } else {
        launch_rows_mode<scalar_t, 1>(a.softmax, a.adaptive, a.compute_grad, s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), wp, R, K, p, gp, rows.data_ptr<acc_t>(), stream);
      }
    });
  } else if (a.compute_grad) {
    grad.zero_();
  }
  at::Tensor out = a.reduction == cpu::kNone ? rows.to(s.scalar_type())
                                             : (rows.sum() / norm).to(s.scalar_type());
  return {out, grad};
}

std::tuple<at::Tensor, at::Tensor> soft_label_kl_cuda(
    const at::Tensor& student_logits, const at::Tensor& teacher_logits,
    const std::optional<at::Tensor>& weight, double temperature, c10::string_view mode,
    c10::string_view reduction, double eps, bool compute_grad) {
  const char* op = "soft_label_kl";
  const cpu::RowLossArgs args{temperature, cpu::parse_softmax(mode, op), false, 0.0, 0.0, false,
                              cpu::parse_reduction(reduction), eps, compute_grad};
  return row_loss_cuda(student_logits, teacher_logits, weight, args, op);
}

std::tuple<at::Tensor, at::Tensor> adaptive_distillation_loss_cuda(
    const at::Tensor& student_logits, const at::Tensor& teacher_logits,
    const std::optional<at::Tensor>& weight, double temperature, double beta, double gamma,
    c10::string_view mode, bool detach_weight, c10::string_view reduction, double eps,
    bool compute_grad) {
  const char* op = "adaptive_distillation_loss";
  const cpu::RowLossArgs args{temperature, cpu::parse_softmax(mode, op), true, beta, gamma,
                              detach_weight, cpu::parse_reduction(reduction), eps, compute_grad};
  return row_loss_cuda(student_logits, teacher_logits, weight, args, op);
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CUDA, m) {
  m.impl("confidence_masked_mse", &confidence_masked_mse_cuda);
  m.impl("soft_label_kl", &soft_label_kl_cuda);
  m.impl("adaptive_distillation_loss", &adaptive_distillation_loss_cuda);
}

}  // namespace kdkernels::cuda
