"""soft_label_kl on Triton: row = T² KL(p_t ‖ q_s) (softmax over K, or Σ_k binary KL for sigmoid).

The kernel (shared with adaptive_distillation_loss, see _row_losses.py) writes the loss and
∂loss/∂s = T (q − p) w_r / norm in one pass; backward is grad · grad_output.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import define_loss_op, needs_grad
from ._row_losses import row_loss_forward

QUALNAME = "kdkernels_triton::soft_label_kl"


@define_loss_op(QUALNAME)
def soft_label_kl_op(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     weight: Optional[torch.Tensor], temperature: float, mode: str, reduction: str,
                     eps: float, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, K) logits → (loss, grad_student); same schema as torch.ops.kdkernels.soft_label_kl."""
    return row_loss_forward(student_logits, teacher_logits, weight, temperature, 0.0, 0.0,
                            mode == "softmax", False, True, reduction, eps, compute_grad)


def soft_label_kl_triton(s: torch.Tensor, t: torch.Tensor, w: Optional[torch.Tensor],
                         temperature: float, mode: str, reduction: str, eps: float) -> torch.Tensor:
    """Entry point of kdkernels.soft_label_kl for backend "triton" (inputs already validated):
    s, t (R, K), w (R,) or None. Returns () for mean/sum, (R,) for none, in the input dtype."""
    loss, _ = soft_label_kl_op(s, t.detach(), None if w is None else w.detach(), float(temperature),
                               mode, reduction, float(eps), needs_grad(s))
    return loss
