"""soft_label_kl: tempered KL from the teacher's class distribution, per row, optionally weighted."""
from __future__ import annotations

import torch

from .. import _backend, _native, _validate as V, reference
from ._registration import call_fused, register_loss_autograd

if _native.HAS_NATIVE:
    @torch.library.register_fake("kdkernels::soft_label_kl")
    def _soft_label_kl_fake(student_logits, teacher_logits, weight, temperature, mode, reduction,
                            eps, compute_grad):
        """(R, K) logits → (loss: () or (R,) for "none", grad: (R, K) or (0,))."""
        V.fake_row_loss_checks("soft_label_kl", student_logits, teacher_logits, weight)
        return V.fake_loss_and_grad(student_logits, student_logits.shape[:1], reduction, compute_grad)

    register_loss_autograd("kdkernels::soft_label_kl")


@V.argument_errors()
def soft_label_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                  temperature: float = 1.0, mode: str = "softmax", weight: torch.Tensor | None = None,
                  reduction: str = "mean", eps: float = 1e-6,
                  class_reduction: str = "sum") -> torch.Tensor:
    """Soft-label distillation KL(p_teacher ‖ q_student) at temperature T.

    Args:
        student_logits, teacher_logits: (..., K) logits, same shape and dtype; leading dims are
            flattened to R rows. Only the student receives a gradient.
        temperature: T > 0.
        mode: "softmax" (distribution over K) or "sigmoid" (K independent binary KLs, RetinaNet/FCOS).
        weight: (R,) (or the leading shape) non-negative row weights, e.g. teacher confidence;
            None = ones. Detached.
        reduction: "mean" = Σ w_r row_r / max(Σ w_r, eps); "sum" = Σ w_r row_r; "none" = w_r row_r (R,).
        eps: floor of the weight sum (> 0).
        class_reduction: "sum" (the KL of the distributions) or "mean" (divided by K: MMDetection's
            ``KnowledgeDistillationKLDivLoss(class_reduction="mean")``, its KD loss in one call
            with ``reduction="mean"`` and no weight).

    Formula (a = t/T, b = s/T):
        softmax: row = T² Σ_k p_k (log p_k − log q_k),  p = softmax(a), q = softmax(b)
        sigmoid: row = T² Σ_k [p log(p/q) + (1−p) log((1−p)/(1−q))],  p = σ(a), q = σ(b)
        ∂row/∂s = T (q − p). Accumulates in float32 (float64 for float64); output in input dtype.

    ``channel_wise_divergence`` (softmax over H·W per channel) and ``localization_distillation``
    (softmax over box-edge bins, class_reduction="mean") are this op on a reshaped tensor.

    Example:
        >>> conf = kdkernels.teacher_confidence(cls_t)                      # (N, A)
        >>> loss = kdkernels.soft_label_kl(cls_s, cls_t, mode="sigmoid", temperature=2.0, weight=conf)
    """
    student_logits, teacher_logits = V.autocast_pair(student_logits, teacher_logits)
    s, t = V.logits_pair(student_logits, teacher_logits)
    w = V.row_weight(weight, s.shape[0], s)
    temperature = V.positive(temperature, "temperature")
    V.choice(mode, "mode", V.MODES)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    V.choice(class_reduction, "class_reduction", V.CLASS_REDUCTIONS)
    eps = V.positive(eps, "eps")
    backend = _backend.resolve(s.device, "soft_label_kl")
    V.check_weight_values(w, "soft_label_kl", backend)
    if backend == "reference":
        loss = reference.soft_label_kl(s, t, temperature=temperature, mode=mode, weight=w,
                                       reduction=reduction, eps=eps, class_reduction=class_reduction)
    else:
        loss = call_fused(backend, "soft_label_kl", s, t.detach(), w, temperature, mode, reduction, eps)
        if class_reduction == "mean":  # every row is divided by the same K: exact after the kernel
            loss = loss / s.shape[1]
    return loss.reshape(student_logits.shape[:-1]) if reduction == "none" else loss
