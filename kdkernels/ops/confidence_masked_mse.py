"""confidence_masked_mse: feature imitation inside the teacher-confident region."""
from __future__ import annotations

import torch

from .. import _validate as V, reference
from .separable_weighted_mse import fused_separable_mse


@V.argument_errors()
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
        = ``separable_weighted_mse(s, t, m)``: the mask (N·H·W values) is computed first, then the
        fused separable kernel runs on it. A pixel with m = 0 (masked out, or conf = 0) adds exactly
        0 whatever its features; a NaN confidence gives NaN. An all-zero mask gives 0 and a zero
        gradient. Accumulates in float32 (float64 for float64); the result has the input dtype.
        Under autocast a bf16/fp32 pair is promoted to fp32.

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
    # the (N, H, W) mask in the accumulation dtype, then the fused separable kernel with it as the
    # spatial weight: no value check of the mask (a NaN confidence gives NaN, NaN in → NaN out)
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    mask = reference._confidence_mask(conf, threshold, power, acc)
    return fused_separable_mse("confidence_masked_mse", student, teacher, mask, None, reduction, eps)
