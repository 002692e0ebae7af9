// CPU kernel for kdkernels::soft_label_kl: T² · KL(p_teacher ‖ q_student) per row, softmax over
// classes or per-class sigmoid (binary KL). Math and gradient: row_losses.h.
#include "row_losses.h"

#include <torch/library.h>

namespace kdkernels::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> soft_label_kl_cpu(
    const at::Tensor& student_logits, const at::Tensor& teacher_logits,
    const std::optional<at::Tensor>& weight, double temperature, c10::string_view mode,
    c10::string_view reduction, double eps, bool compute_grad) {
  return row_loss_cpu(student_logits, teacher_logits, weight,
                      RowLossArgs::soft_label_kl(temperature, mode, reduction, eps, compute_grad));
}

}  // namespace

TORCH_LIBRARY_IMPL(kdkernels, CPU, m) {
  m.impl("soft_label_kl", &soft_label_kl_cpu);
}

}  // namespace kdkernels::cpu
