// CUDA kernel for kdkernels::decoupled_kd (DKD): one warp per row. Pass 1 keeps per lane an online
// non-target max and rescaled sums (merged across the warp), the row is finished with the
// backend-neutral dkd_finish_row (../decoupled_kd.h, which has the math), pass 2 writes the
// student gradient. Same contract as the CPU kernel, with one difference: the label values are
// not checked here (that would need a copy to the host); a row whose label is outside [0, K) gets
// a NaN loss and a NaN gradient, and Python checks them with an in-graph assert.
//
// No host synchronisation: "mean" divides by the row count B, a host constant. Deterministic: the
// rows' losses are written to a buffer and summed by at::sum. int64 offsets; float accumulation
// (double for double).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../decoupled_kd.h"
#include "device_utils.cuh"

namespace kdkernels::cuda {
namespace {

template <typename scalar_t, bool kGrad>
__global__ void decoupled_kd_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                    const int64_t* __restrict__ labels, int64_t R, int64_t K,
                                    DkdConsts<at::opmath_type<scalar_t>> p,
                                    scalar_t* __restrict__ grad,
                                    at::opmath_type<scalar_t>* __restrict__ row_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= R) return;
  const int64_t base = row * K;
  const int64_t g = labels[row];
  const bool valid = g >= 0 && g < K;
  acc_t ma = -INFINITY, mb = -INFINITY, za = 0, zb = 0, d = 0;
  for (int64_t k = lane; k < K; k += kWarp) {
    if (k == g) continue;
    const acc_t a = temper(static_cast<acc_t>(t[base + k]), p.inv_t);
    const acc_t b = temper(static_cast<acc_t>(s[base + k]), p.inv_t);
    if (a > ma) {
      const acc_t r = dexp(ma - a);
      za *= r;
      d *= r;
      ma = a;
    }
    if (b > mb) {
      zb *= dexp(mb - b);
      mb = b;
    }
    const acc_t x = dexp(a - ma);
    za += x;
    d += x * (a - b);
    zb += dexp(b - mb);
  }
  const acc_t gma = warp_max(ma), gmb = warp_max(mb);
  const acc_t ra = ma == -INFINITY ? acc_t(0) : dexp(ma - gma);
  const acc_t rb = mb == -INFINITY ? acc_t(0) : dexp(mb - gmb);
  za = warp_sum(za * ra);
  d = warp_sum(d * ra);
  zb = warp_sum(zb * rb);
  const acc_t nan = acc_t(NAN);
  const acc_t ag = valid ? temper(static_cast<acc_t>(t[base + g]), p.inv_t) : nan;
  const acc_t bg = valid ? temper(static_cast<acc_t>(s[base + g]), p.inv_t) : nan;
  const DkdRow<acc_t> r = dkd_finish_row(DkdRowSums<acc_t>{gma, gmb, za, zb, d, ag, bg}, p.alpha,
                                         p.beta, p.t2, p.G);
  if constexpr (kGrad) {
    for (int64_t k = lane; k < K; k += kWarp) {
      const acc_t a = temper(static_cast<acc_t>(t[base + k]), p.inv_t);
      const acc_t b = temper(static_cast<acc_t>(s[base + k]), p.inv_t);
      const acc_t v = k == g ? r.g_target : r.gq * dexp(b - gmb) - r.gp * dexp(a - gma);
      grad[base + k] = static_cast<scalar_t>(v);
    }
  }
  if (lane == 0) row_out[row] = r.loss;
}

std::tuple<at::Tensor, at::Tensor> decoupled_kd_cuda(const at::Tensor& student_logits,
                                                     const at::Tensor& teacher_logits,
                                                     const at::Tensor& labels, double temperature,
                                                     double alpha, double beta,
                                                     c10::string_view reduction, bool compute_grad) {
  const DkdArgs a = DkdArgs::parse(temperature, alpha, beta, reduction, compute_grad);
  const RowShape sh = check_dkd_inputs(student_logits, teacher_logits, labels);
  const c10::cuda::CUDAGuard guard(student_logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t R = sh.R, K = sh.K;
  const at::Tensor s = student_logits.contiguous();
  const at::Tensor t = teacher_logits.contiguous();
  const at::Tensor y = labels.contiguous();
  at::Tensor grad = a.compute_grad ? at::empty_like(s, at::MemoryFormat::Contiguous)
                                   : at::empty({0}, s.options());
  if (R == 0) {  // "mean" of no rows is 0, like the other row losses
    return {a.reduction == kNone ? at::empty({0}, s.options()) : at::zeros({}, s.options()), grad};
  }
  const double den = a.reduction == kMean ? static_cast<double>(R) : 1.0;
  at::Tensor rows = at::empty({R}, s.options().dtype(acc_dtype(s.scalar_type())));
  constexpr int rows_per_block = kThreads / kWarp;
  const int64_t blocks = (R + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(blocks < (int64_t(1) << 31), kDkdOp, ": too many rows for one launch: ", R);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "decoupled_kd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const DkdConsts<acc_t> p = DkdConsts<acc_t>::make(a, den);
    scalar_t* gp = a.compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
    dispatch_bools(
        [&](auto kGrad) {
          decoupled_kd_kernel<scalar_t, decltype(kGrad)::value>
              <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
                  s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), R, K, p,
                  gp, rows.data_ptr<acc_t>());
        },
        a.compute_grad);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (a.reduction == kNone) return {rows.to(s.scalar_type()), grad};
  at::Tensor total = rows.sum();
  if (a.reduction == kMean) total = total / den;
  return {total.to(s.scalar_type()), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CUDA, m) {
  m.impl("decoupled_kd", &decoupled_kd_cuda);
}

}  // namespace kdkernels::cuda
