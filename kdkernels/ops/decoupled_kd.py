"""decoupled_kd: DKD, target-class and non-target-class KD, one fused row kernel per backend."""
from __future__ import annotations

import torch

from .. import _backend, _native, _validate as V, reference
from ._registration import call_fused, register_loss_autograd

if _native.HAS_NATIVE:
    @torch.library.register_fake("kdkernels::decoupled_kd")
    def _decoupled_kd_fake(student_logits, teacher_logits, labels, temperature, alpha, beta, reduction,
                           compute_grad):
        """(B, K) logits, (B,) labels → (loss: () or (B,) for "none", grad: (B, K) or (0,))."""
        V.fake_row_loss_checks("decoupled_kd", student_logits, teacher_logits, None)
        torch._check(labels.shape == student_logits.shape[:1], lambda: "decoupled_kd: labels must be (B,)")
        return V.fake_loss_and_grad(student_logits, student_logits.shape[:1], reduction, compute_grad)

    register_loss_autograd("kdkernels::decoupled_kd")


@V.argument_errors()
def decoupled_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                 alpha: float = 1.0, beta: float = 1.0, temperature: float = 1.0,
                 reduction: str = "mean") -> torch.Tensor:
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022; MMRazor ``DKDLoss``).

    Args:
        student_logits, teacher_logits: (..., K) class logits, K >= 2, same shape and dtype; the
            leading dims are flattened to B rows. Only the student receives a gradient.
        labels: integer (...) target class per row, in [0, K).
        alpha, beta: >= 0, weights of TCKD and NCKD (MMRazor's defaults 1, 1; the paper uses β = 8
            on CIFAR/ImageNet).
        temperature: T > 0.
        reduction: "mean" (÷ B, MMRazor's "batchmean"), "sum", "none" → (...).

    Formula (p = softmax(t/T), q = softmax(s/T), g = labels[b]):
        TCKD = p_g log(p_g/q_g) + (1 − p_g) log((1 − p_g)/(1 − q_g))
        NCKD = Σ_{k≠g} p̂_k log(p̂_k/q̂_k),  p̂ = softmax over k ≠ g of t/T (q̂ likewise)
        row_b = T² (α·TCKD + β·NCKD)
    One fused kernel per backend (cpu, triton, cuda) computes both parts and ∂/∂student from one
    pass over each row for the sums and one for the gradient; the target class is kept out of the
    non-target sums (the exact form of MMRazor's −1000 shift of the target logit), and
    TCKD is the binary KL of σ(u) with u = logit_g − logsumexp_{k≠g}(logits), so a dominant
    target logit neither overflows nor loses 1 − p_g to cancellation. "mean" of no rows is 0.
    """
    student_logits, teacher_logits = V.autocast_pair(student_logits, teacher_logits)
    s, t, gt = V.dkd_inputs(student_logits, teacher_logits, labels)
    alpha = V.non_negative(alpha, "alpha")
    beta = V.non_negative(beta, "beta")
    T = V.positive(temperature, "temperature")
    V.choice(reduction, "reduction", V.REDUCTIONS)
    backend = _backend.resolve(s.device, "decoupled_kd")
    if backend == "reference":
        return reference.decoupled_kd(student_logits, teacher_logits, labels, alpha=alpha, beta=beta,
                                      temperature=T, reduction=reduction)
    loss = call_fused(backend, "decoupled_kd", s, t.detach(), gt, T, alpha, beta, reduction)
    return loss.reshape(student_logits.shape[:-1]) if reduction == "none" else loss
