// Operator schemas (the contract of docs/METHOD.md) and the Python module `kdkernels._C`.
//
// Each loss op returns (loss, grad_student): the fused kernels write the student gradient in the
// forward pass (Liger-style), so backward is one multiply by grad_output. compute_grad=False skips
// it (inference, no_grad) and returns an empty grad tensor. Autograd and fake (meta) kernels are
// registered from Python in kdkernels/ops/.
#include <torch/extension.h>
#include <torch/library.h>

#include "ops/cpu/buffer_cache.h"
#include "ops/cpu/vec_math.h"

#ifdef KDK_WITH_CUDA
namespace kdkernels::cuda {
int compiled_cuda_version();
}
#endif

TORCH_LIBRARY(kdkernels, m) {
  m.def(
      "separable_weighted_mse(Tensor student, Tensor teacher, Tensor spatial_weight, "
      "Tensor? channel_weight, str reduction, float eps, bool compute_grad) -> (Tensor, Tensor)");
  m.def(
      "soft_label_kl(Tensor student_logits, Tensor teacher_logits, Tensor? weight, "
      "float temperature, str mode, str reduction, float eps, bool compute_grad) "
      "-> (Tensor, Tensor)");
  m.def(
      "adaptive_distillation_loss(Tensor student_logits, Tensor teacher_logits, Tensor? weight, "
      "float temperature, float beta, float gamma, str mode, bool detach_weight, str reduction, "
      "float eps, bool compute_grad) -> (Tensor, Tensor)");
  m.def(
      "decoupled_kd(Tensor student_logits, Tensor teacher_logits, Tensor labels, "
      "float temperature, float alpha, float beta, str reduction, bool compute_grad) "
      "-> (Tensor, Tensor)");
  m.def(
      "pearson_feature_loss(Tensor student, Tensor teacher, str reduction, bool compute_grad) "
      "-> (Tensor, Tensor)");
}

namespace {

std::string runtime_cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "compiler default";
#endif
}

pybind11::dict build_info() {
  pybind11::dict info;
  pybind11::list backends;
  backends.append("cpu");
#ifdef KDK_WITH_CUDA
  backends.append("cuda");
  info["cuda_version"] = kdkernels::cuda::compiled_cuda_version();
#else
  info["cuda_version"] = pybind11::none();
#endif
  info["compiled_backends"] = backends;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  info["cpu_isa_clones"] = KDK_CLONES_ENABLED ? "x86-64-v4, x86-64-v3, baseline" : "none";
  info["cpu_isa"] = runtime_cpu_isa();
  info["torch_compiled"] = KDK_TORCH_VERSION;
  info["openmp"] = at::get_parallel_info();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kdkernels native operators (registered under torch.ops.kdkernels)";
  m.def("build_info", &build_info, "What this build of the extension contains.");
  m.def(
      "cpu_buffer_cache_info",
      [] {
        const auto i = kdkernels::cpu::buffer_cache_info();
        pybind11::dict d;
        d["limit_bytes"] = i.limit_bytes;
        d["cached_bytes"] = i.cached_bytes;
        d["cached_blocks"] = i.cached_blocks;
        d["hits"] = i.hits;
        d["misses"] = i.misses;
        return d;
      },
      "State of the cache of large CPU output buffers (see csrc/ops/cpu/buffer_cache.h).");
  m.def("release_cpu_buffers", &kdkernels::cpu::release_buffer_cache,
        "Unmap every freed CPU output buffer kept for reuse.");
}
