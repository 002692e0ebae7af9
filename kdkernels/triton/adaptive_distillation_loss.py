"""adaptive_distillation_loss (ADL, Tang et al. 2019) on Triton.

Per class (sigmoid) or per row (softmax) on a = t/T, b = s/T: D = max(KL + β H, 0),
e = 1 − exp(−D), loss = T² e^γ KL; ∂/∂s = T (q − p) (e^γ + γ KL e^(γ−1) exp(−D)) w_r / norm
(e^γ only with detach_weight). The kernel is the one of soft_label_kl with ADAPTIVE=True
(see _row_losses.py); backward is grad · grad_output.
"""
from __future__ import annotations

from ._common import define_loss_op
from ._row_losses import row_loss_forward


@define_loss_op("adaptive_distillation_loss")
def adaptive_distillation_loss(student_logits, teacher_logits, weight, temperature, beta, gamma, mode,
                               detach_weight, reduction, eps, compute_grad):
    """(R, K) logits, (R,) weight or None → (loss, grad_student); the schema of
    torch.ops.kdkernels.adaptive_distillation_loss."""
    return row_loss_forward(student_logits, teacher_logits, weight, temperature, beta, gamma,
                            mode == "softmax", True, detach_weight, reduction, eps, compute_grad)
