"""confidence_masked_mse: feature imitation inside the teacher-confident region."""
from __future__ import annotations

import torch

from .. import _backend, _native, _validate as V, reference
from ._registration import call_fused, register_loss_autograd

if _native.HAS_NATIVE:
    @torch.library.register_fake("kdkernels::confidence_masked_mse")
    def _confidence_masked_mse_fake(student, teacher, confidence, threshold, power, reduction, eps,
                                    compute_grad):
        """(N, C, H, W) features, (N, H, W) confidence → (loss: () or (N, C, H, W), grad)."""
        torch._check(student.dim() == 4, lambda: "confidence_masked_mse: student must be (N, C, H, W)")
        torch._check(student.shape == teacher.shape,
                     lambda: "confidence_masked_mse: student and teacher shapes differ")
        n, _, h, w = student.shape
        torch._check(confidence.shape == (n, h, w),
                     lambda: f"confidence_masked_mse: confidence must be (N, H, W) = {(n, h, w)}")
        return V.fake_loss_and_grad(student, student.shape, reduction, compute_grad)

    register_loss_autograd("kdkernels::confidence_masked_mse")


def confidence_masked_mse(student: torch.Tensor, teacher: torch.Tensor, confidence: torch.Tensor, *,
                          threshold: float = 0.0, power: float = 1.0, reduction: str = "mean",
                          eps: float = 1e-6) -> torch.Tensor:
    """Confidence-masked feature-imitation MSE.

    Args:
        student, teacher: (N, C, H, W) features, same shape and dtype (float64/32/16, bfloat16);
            non-contiguous accepted. Only ``student`` receives a gradient.
        confidence: (N, H, W) or (N, 1, H, W) teacher confidence in [0, 1] (any float dtype).
        threshold: pixels with confidence < threshold are masked out.
        power: α in the mask weight conf^α (0 = binary mask, 1 = linear).
        reduction: "mean" | "sum" | "none".
        eps: floor of the mask sum in the mean's denominator (> 0).

    Formula:
        m[n,h,w] = conf^power · [conf ≥ threshold];  l[n,c,h,w] = m · (s − t)²
        mean = Σ l / (C · max(Σ m, eps)),  sum = Σ l,  none = l (N, C, H, W).
        An all-zero mask gives 0 and a zero gradient. Accumulates in float32 (float64 for float64);
        the result has the input dtype. Under autocast a bf16/fp32 pair is promoted to fp32.

    Example:
        >>> conf = kdkernels.confidence_map(teacher_cls_p3, num_anchors=9)       # (N, H, W)
        >>> loss = kdkernels.confidence_masked_mse(adapter(f_s), f_t, conf, threshold=0.5)
    """
    student, teacher = V.autocast_pair(student, teacher)
    conf = V.feature_pair(student, teacher, confidence)
    threshold = V.number(threshold, "threshold")
    power = V.number(power, "power")
    V.choice(reduction, "reduction", V.REDUCTIONS)
    eps = V.positive(eps, "eps")
    backend = _backend.resolve(student.device, "confidence_masked_mse")
    if backend == "reference":
        return reference.confidence_masked_mse(student, teacher, conf, threshold=threshold,
                                               power=power, reduction=reduction, eps=eps)
    return call_fused(backend, "confidence_masked_mse", student, teacher.detach(), conf, threshold,
                      power, reduction, eps)
