// CPU kernel for kdkernels::adaptive_distillation_loss (ADL, Tang et al. 2019): the soft-label KL
// re-weighted per class (sigmoid) or per row (softmax) by (1 − exp(−(KL + β H)))^γ.
// Math and gradient: row_losses.h.
#include "row_losses.h"

#include <torch/library.h>

namespace kdkernels::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> adaptive_distillation_loss_cpu(
    const at::Tensor& student_logits, const at::Tensor& teacher_logits,
    const std::optional<at::Tensor>& weight, double temperature, double beta, double gamma,
    c10::string_view mode, bool detach_weight, c10::string_view reduction, double eps,
    bool compute_grad) {
  return row_loss_cpu(student_logits, teacher_logits, weight,
                      RowLossArgs::adaptive_distillation_loss(temperature, beta, gamma, mode,
                                                              detach_weight, reduction, eps,
                                                              compute_grad));
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CPU, m) {
  m.impl("adaptive_distillation_loss", &adaptive_distillation_loss_cpu);
}

}  // namespace kdkernels::cpu
