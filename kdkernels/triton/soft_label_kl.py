"""soft_label_kl on Triton: row = T² KL(p_t ‖ q_s) (softmax over K, or Σ_k binary KL for sigmoid).

The kernel (shared with adaptive_distillation_loss, see _row_losses.py) writes the loss and
∂loss/∂s = T (q − p) w_r / norm in one pass; backward is grad · grad_output.
"""
from __future__ import annotations

from ._common import define_loss_op
from ._row_losses import row_loss_forward


@define_loss_op("soft_label_kl")
def soft_label_kl(student_logits, teacher_logits, weight, temperature, mode, reduction, eps, compute_grad):
    """(R, K) logits, (R,) weight or None → (loss, grad_student); the schema of
    torch.ops.kdkernels.soft_label_kl."""
    return row_loss_forward(student_logits, teacher_logits, weight, temperature, 0.0, 0.0,
                            mode == "softmax", False, True, reduction, eps, compute_grad)
