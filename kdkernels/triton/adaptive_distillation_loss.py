"""adaptive_distillation_loss (ADL, Tang et al. 2019) on Triton.

Per class (sigmoid) or per row (softmax) on a = t/T, b = s/T: D = max(KL + β H, 0),
e = 1 − exp(−D), loss = T² e^γ KL; ∂/∂s = T (q − p) (e^γ + γ KL e^(γ−1) exp(−D)) w_r / norm
(e^γ only with detach_weight). The kernel is the one of soft_label_kl with ADAPTIVE=True
(see _row_losses.py); backward is grad · grad_output.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import define_loss_op, needs_grad
from ._row_losses import row_loss_forward

QUALNAME = "kdkernels_triton::adaptive_distillation_loss"


@define_loss_op(QUALNAME)
def adaptive_distillation_loss_op(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                  weight: Optional[torch.Tensor], temperature: float, beta: float,
                                  gamma: float, mode: str, detach_weight: bool, reduction: str,
                                  eps: float, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, K) logits → (loss, grad_student); same schema as
    torch.ops.kdkernels.adaptive_distillation_loss."""
    return row_loss_forward(student_logits, teacher_logits, weight, temperature, beta, gamma,
                            mode == "softmax", True, detach_weight, reduction, eps, compute_grad)


def adaptive_distillation_loss_triton(s: torch.Tensor, t: torch.Tensor, w: Optional[torch.Tensor],
                                      temperature: float, beta: float, gamma: float, mode: str,
                                      detach_weight: bool, reduction: str, eps: float) -> torch.Tensor:
    """Entry point of kdkernels.adaptive_distillation_loss for backend "triton" (inputs already
    validated): s, t (R, K), w (R,) or None. Returns () for mean/sum, (R,) for none."""
    loss, _ = adaptive_distillation_loss_op(
        s, t.detach(), None if w is None else w.detach(), float(temperature), float(beta),
        float(gamma), mode, bool(detach_weight), reduction, float(eps), needs_grad(s))
    return loss
