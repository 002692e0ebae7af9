// CUDA kernel of kdkernels::pearson_feature_loss (PKD, Cao et al. 2022; MMRazor PKDLoss). Same
// contract and math as the CPU kernel (../cpu/pearson_feature_loss_kernel.cpp); the input checks
// and the per-channel statistics are shared with it (../pearson_feature_loss.h).
//
// Two passes over student and teacher, the gradient included:
//   moments_kernel  one block per chunk of kChunk consecutive values of one channel (value m of
//                   channel c at plane n = m / HW, pixel m % HW): the shifted sums Σu, Σv, Σu²,
//                   Σv², Σuv (u = s − K_s, K_s the channel's first value) → partials (C·chunks, 5);
//   stats_kernel    one thread per channel: the chunks' partials added in chunk order, then μ,
//                   a = 1/(σ_s + ε), b, p and scale·a (pearson_stats);
//   pass2_kernel    same chunks: d = a·ds − b·dt, ∂loss/∂s = scale·a·(d − p·ds), partial Σ d²;
//   channel_loss_kernel  one thread per channel: Σ_chunks Σ d² / 2, in chunk order.
// "mean"/"sum" add the C channel losses with at::sum; "none" returns each channel's Σ d²/(2M) as
// (1, C, 1, 1). No host synchronisation (N, C, H, W are known on the host). Deterministic: fixed
// chunks and fixed block reductions, no atomics. Sums in float (double for double); offsets int64;
// inputs of any strides (made contiguous here).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>

#include "../pearson_feature_loss.h"

namespace kdkernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kBlockThreads = 256;
constexpr int kItems = 16;                                 // values per thread and chunk
constexpr int64_t kChunk = int64_t(kBlockThreads) * kItems;  // values of one channel per block
constexpr int kStats = 8;  // per channel: K_s, K_t, ū, v̄, a, b, p, scale·a

template <typename T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sums of NV values per thread (fixed reduction tree); valid in thread 0.
template <typename T, int NV>
__device__ __forceinline__ void block_reduce_sum(T (&v)[NV]) {
  __shared__ T partial[NV][kBlockThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int q = 0; q < NV; ++q) {
    v[q] = warp_reduce_sum(v[q]);
    if (lane == 0) partial[q][warp] = v[q];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int q = 0; q < NV; ++q) {
      v[q] = warp_reduce_sum(lane < kBlockThreads / kWarpSize ? partial[q][lane] : T(0));
    }
  }
}

// The values of chunk k of channel c that thread threadIdx.x visits: m = m0 + threadIdx.x,
// m0 + threadIdx.x + kBlockThreads, … < m1, with their offsets in the contiguous (N, C, HW)
// tensor; the plane index n advances without a division per value.
struct ChunkWalk {
  int64_t m, m1, n, j;
  const int64_t C, HW, c;

  __device__ ChunkWalk(int64_t c_, int64_t k, int64_t C_, int64_t HW_, int64_t M)
      : C(C_), HW(HW_), c(c_) {
    const int64_t m0 = k * kChunk;
    m = m0 + threadIdx.x;
    m1 = m0 + kChunk < M ? m0 + kChunk : M;
    n = m / HW;
    j = m - n * HW;
  }
  __device__ __forceinline__ bool valid() const { return m < m1; }
  __device__ __forceinline__ int64_t offset() const { return (n * C + c) * HW + j; }
  __device__ __forceinline__ void next() {
    m += kBlockThreads;
    j += kBlockThreads;
    if (j >= HW) {
      const int64_t q = j / HW;
      n += q;
      j -= q * HW;
    }
  }
};

template <typename scalar_t>
__global__ void moments_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               int64_t C, int64_t HW, int64_t M, int64_t chunks,
                               at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x, c = b / chunks, k = b - c * chunks;
  const acc_t ks = static_cast<acc_t>(s[c * HW]), kt = static_cast<acc_t>(t[c * HW]);
  acc_t v[5] = {0, 0, 0, 0, 0};
  for (ChunkWalk w(c, k, C, HW, M); w.valid(); w.next()) {
    const int64_t off = w.offset();
    const acc_t u = static_cast<acc_t>(s[off]) - ks;
    const acc_t x = static_cast<acc_t>(t[off]) - kt;
    v[0] += u;
    v[1] += x;
    v[2] += u * u;
    v[3] += x * x;
    v[4] += u * x;
  }
  block_reduce_sum(v);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int q = 0; q < 5; ++q) partials[b * 5 + q] = v[q];
  }
}

template <typename scalar_t>
__global__ void stats_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                             const at::opmath_type<scalar_t>* __restrict__ partials, int64_t C,
                             int64_t HW, int64_t M, int64_t chunks, double scale,
                             at::opmath_type<scalar_t>* __restrict__ stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  acc_t sum[5] = {0, 0, 0, 0, 0};
  for (int64_t k = 0; k < chunks; ++k) {
#pragma unroll
    for (int q = 0; q < 5; ++q) sum[q] += partials[(c * chunks + k) * 5 + q];
  }
  const PearsonStats<acc_t> st = pearson_stats<acc_t>(
      static_cast<acc_t>(s[c * HW]), static_cast<acc_t>(t[c * HW]), sum[0], sum[1], sum[2],
      sum[3], sum[4], static_cast<acc_t>(M), static_cast<acc_t>(kPearsonEps));
  acc_t* out = stats + c * kStats;
  out[0] = st.ks;
  out[1] = st.kt;
  out[2] = st.mean_u;
  out[3] = st.mean_v;
  out[4] = st.a;
  out[5] = st.b;
  out[6] = st.p;
  out[7] = static_cast<acc_t>(scale * static_cast<double>(st.a));
}

template <typename scalar_t, bool kGrad>
__global__ void pass2_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                             const at::opmath_type<scalar_t>* __restrict__ stats, int64_t C,
                             int64_t HW, int64_t M, int64_t chunks, scalar_t* __restrict__ grad,
                             at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x, c = b / chunks, k = b - c * chunks;
  const acc_t* st = stats + c * kStats;
  const acc_t ks = st[0], kt = st[1], mu = st[2], mv = st[3], a = st[4], bb = st[5], p = st[6],
              ga = st[7];
  acc_t v[1] = {0};
  for (ChunkWalk w(c, k, C, HW, M); w.valid(); w.next()) {
    const int64_t off = w.offset();
    const acc_t ds = (static_cast<acc_t>(s[off]) - ks) - mu;
    const acc_t dt = (static_cast<acc_t>(t[off]) - kt) - mv;
    const acc_t d = a * ds - bb * dt;
    v[0] += d * d;
    if constexpr (kGrad) grad[off] = static_cast<scalar_t>(ga * (d - p * ds));
  }
  block_reduce_sum(v);
  if (threadIdx.x == 0) partials[b] = v[0];
}

template <typename acc_t>
__global__ void channel_loss_kernel(const acc_t* __restrict__ partials, int64_t C, int64_t chunks,
                                    acc_t* __restrict__ loss) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  acc_t sum = 0;
  for (int64_t k = 0; k < chunks; ++k) sum += partials[c * chunks + k];
  loss[c] = sum / acc_t(2);
}

std::tuple<at::Tensor, at::Tensor> pearson_feature_loss_cuda(const at::Tensor& student,
                                                             const at::Tensor& teacher,
                                                             c10::string_view reduction,
                                                             bool compute_grad) {
  const Reduction red = parse_reduction(reduction, kPearsonOp);
  const PearsonShape sh = check_pearson_inputs(student, teacher);
  const c10::cuda::CUDAGuard guard(student.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t C = sh.C, HW = sh.HW, M = sh.M;
  const at::Tensor s = student.contiguous();
  const at::Tensor t = teacher.contiguous();
  const at::ScalarType acc_type = acc_dtype(s.scalar_type());
  const at::TensorOptions acc_options = s.options().dtype(acc_type);
  const double numel = pearson_numel(sh);
  const double scale = pearson_grad_scale(red, sh);
  const int64_t chunks = (M + kChunk - 1) / kChunk;
  const int64_t blocks = C * chunks;
  TORCH_CHECK(blocks < (int64_t(1) << 31), kPearsonOp, ": too many values for one launch: ",
              student.sizes());

  at::Tensor grad = compute_grad ? at::empty_like(s, at::MemoryFormat::Contiguous)
                                 : at::empty({0}, s.options());
  at::Tensor channel_loss = at::zeros({C}, acc_options);  // Σ d² / 2 per channel
  if (blocks > 0) {
    at::Tensor moments = at::empty({blocks, 5}, acc_options);
    at::Tensor stats = at::empty({C, kStats}, acc_options);
    at::Tensor squares = at::empty({blocks}, acc_options);
    const int channel_blocks = static_cast<int>((C + kBlockThreads - 1) / kBlockThreads);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, s.scalar_type(), "pearson_feature_loss_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const scalar_t* sp = s.data_ptr<scalar_t>();
          const scalar_t* tp = t.data_ptr<scalar_t>();
          moments_kernel<scalar_t><<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(
              sp, tp, C, HW, M, chunks, moments.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          stats_kernel<scalar_t><<<channel_blocks, kBlockThreads, 0, stream>>>(
              sp, tp, moments.data_ptr<acc_t>(), C, HW, M, chunks, scale, stats.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          dispatch_bools(
              [&](auto kGrad) {
                pass2_kernel<scalar_t, decltype(kGrad)::value>
                    <<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(
                        sp, tp, stats.data_ptr<acc_t>(), C, HW, M, chunks,
                        compute_grad ? grad.data_ptr<scalar_t>() : nullptr,
                        squares.data_ptr<acc_t>());
              },
              compute_grad);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          channel_loss_kernel<acc_t><<<channel_blocks, kBlockThreads, 0, stream>>>(
              squares.data_ptr<acc_t>(), C, chunks, channel_loss.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  if (red == kNone) {
    return {channel_loss.div(static_cast<double>(M)).to(s.scalar_type()).view({1, C, 1, 1}), grad};
  }
  at::Tensor total = channel_loss.sum();
  // mean of no channels (C = 0) is 0/0 = NaN, as torch's mean of an empty tensor
  if (red == kMean) total = total.div(numel);
  return {total.to(s.scalar_type()), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CUDA, m) {
  m.impl("pearson_feature_loss", &pearson_feature_loss_cuda);
}

}  // namespace kdkernels::cuda
