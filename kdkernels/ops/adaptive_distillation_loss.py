"""adaptive_distillation_loss (ADL): KL re-weighted towards samples hard for teacher and student."""
from __future__ import annotations

import torch

from .. import _backend, _native, _validate as V, reference
from ._registration import call_fused, register_loss_autograd

if _native.HAS_NATIVE:
    @torch.library.register_fake("kdkernels::adaptive_distillation_loss")
    def _adaptive_distillation_loss_fake(student_logits, teacher_logits, weight, temperature, beta,
                                         gamma, mode, detach_weight, reduction, eps, compute_grad):
        """(R, K) logits → (loss: () or (R,) for "none", grad: (R, K) or (0,))."""
        V.fake_row_loss_checks("adaptive_distillation_loss", student_logits, teacher_logits, weight)
        return V.fake_loss_and_grad(student_logits, student_logits.shape[:1], reduction, compute_grad)

    register_loss_autograd("kdkernels::adaptive_distillation_loss")


@V.argument_errors()
def adaptive_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                               temperature: float = 1.0, beta: float = 1.0, gamma: float = 2.0,
                               mode: str = "sigmoid", weight: torch.Tensor | None = None,
                               reduction: str = "mean", detach_weight: bool = False,
                               eps: float = 1e-6) -> torch.Tensor:
    """Adaptive distillation loss of Tang et al. 2019 (semi-supervised adaptive distillation).

    Args:
        student_logits, teacher_logits: (..., K) logits, same shape and dtype (flattened to R rows).
        temperature: T > 0 (both logits are divided by T).
        beta: β ≥ 0, weight of the teacher entropy (hard-for-the-teacher samples).
        gamma: γ ≥ 0, focusing exponent (γ = 0 gives plain KL).
        mode: "sigmoid" (per class, RetinaNet) or "softmax" (per row).
        weight, reduction, eps: as in :func:`soft_label_kl`.
        detach_weight: False (default) lets the gradient flow through the adaptive weight, as in
            the authors' CUDA kernel and in focal loss; True treats it as a constant.

    Formula, per class (sigmoid) or per row (softmax), on a = t/T, b = s/T:
        KL as in soft_label_kl without T²; H = teacher entropy (−p log p − (1−p) log(1−p), or −Σ p log p)
        D = KL + β H,  e = 1 − exp(−D),  ADL = T² · e^γ · KL   (rows summed over K for sigmoid)
        ∂/∂s = T (q − p) (e^γ + γ KL e^(γ−1) exp(−D));  with detach_weight: T (q − p) e^γ.
        No NaN where the teacher saturates or where KL = 0.

    What the paper and its code do: the paper (eq. 7) weights KL by (1 − exp(−(KL + β T(θ))))^γ,
    with T(θ) the teacher entropy, and shows β = 1.5, γ = 1 (its "ADL" row) — our defaults β = 1,
    γ = 2 follow the released RetinaNet config. The released Caffe2 op
    (sigmoid_adaptive_distillation_loss_op.cu) instead multiplies the weight by the α-balanced
    cross-entropy (KL + H), uses β_code = 1 − β_paper, scales by T² without tempering the teacher
    and sums over all anchors and classes divided by max(Σ q^1.8, 1). To reproduce it use
    reduction="sum" and divide by that normaliser.

    Example:
        >>> loss = kdkernels.adaptive_distillation_loss(cls_s_unlabeled, cls_t_unlabeled, beta=1.5, gamma=1.0)
    """
    student_logits, teacher_logits = V.autocast_pair(student_logits, teacher_logits)
    s, t = V.logits_pair(student_logits, teacher_logits)
    w = V.row_weight(weight, s.shape[0], s)
    temperature = V.positive(temperature, "temperature")
    beta = V.non_negative(beta, "beta")
    gamma = V.non_negative(gamma, "gamma")
    V.choice(mode, "mode", V.MODES)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    if not isinstance(detach_weight, bool):
        raise TypeError(f"detach_weight must be a bool, got {detach_weight!r}")
    eps = V.positive(eps, "eps")
    backend = _backend.resolve(s.device, "adaptive_distillation_loss")
    V.check_weight_values(w, "adaptive_distillation_loss", backend)
    if backend == "reference":
        loss = reference.adaptive_distillation_loss(s, t, temperature=temperature, beta=beta,
                                                    gamma=gamma, mode=mode, weight=w,
                                                    reduction=reduction,
                                                    detach_weight=detach_weight, eps=eps)
    else:
        loss = call_fused(backend, "adaptive_distillation_loss", s, t.detach(), w, temperature, beta,
                          gamma, mode, detach_weight, reduction, eps)
    return loss.reshape(student_logits.shape[:-1]) if reduction == "none" else loss
