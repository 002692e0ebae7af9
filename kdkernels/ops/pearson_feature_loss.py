"""pearson_feature_loss: PKD, MSE between per-channel standardised features."""
from __future__ import annotations

import torch

from .. import _validate as V, reference


def pearson_feature_loss(student: torch.Tensor, teacher: torch.Tensor, *,
                         reduction: str = "mean") -> torch.Tensor:
    """Pearson-correlation feature distillation (Cao et al., NeurIPS 2022, "PKD"; MMRazor ``PKDLoss``).

    Args:
        student, teacher: (N, C, H, W) features, same shape and dtype (float64/32/16, bfloat16),
            N·H·W >= 2. Only the student receives a gradient.
        reduction: "mean" (MMRazor's), "sum", or "none" → (C,) per-channel means (their mean is
            the "mean" loss; each channel's loss depends only on that channel).

    Formula (per channel c, over its M = N·H·W values):
        x̂ = (x − mean(x)) / (std(x) + 1e-6),  std unbiased (÷ M − 1), for x = s and x = t
        mean = Σ (ŝ − t̂)² / (2 · N·C·H·W)     (= F.mse_loss(ŝ, t̂) / 2)
        A constant channel standardises to 0. Accumulates in float32 (float64 for float64).
    """
    V.feature_tensors(student, teacher)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    V.pearson_sizes(student)
    return reference.pearson_feature_loss(student, teacher, reduction=reduction)
