"""localization_distillation: LD, the tempered KL between box-edge distributions (a soft_label_kl call)."""
from __future__ import annotations

import torch

from .. import _validate as V
from .soft_label_kl import soft_label_kl


@V.argument_errors()
def localization_distillation(student_bins: torch.Tensor, teacher_bins: torch.Tensor, *,
                              temperature: float = 10.0, weight: torch.Tensor | None = None,
                              reduction: str = "mean", eps: float = 1e-6) -> torch.Tensor:
    """Localisation distillation (Zheng et al., CVPR 2022; MMDetection ``LDHead`` with
    ``KnowledgeDistillationKLDivLoss``).

    Args:
        student_bins, teacher_bins: (..., K) box-edge logits, K = reg_max + 1 bins; the leading
            dims are flattened to R rows = anchors × 4 box sides (e.g. (A, 4, K) or (A·4, K)).
            Same shape and dtype (float64/32/16, bfloat16). Only the student receives a gradient.
        temperature: T > 0 (LD's default 10).
        weight: None or one non-negative value per row (the leading shape), e.g. the teacher's
            max class score of the anchor repeated for its 4 sides. Detached.
        reduction: "mean" = Σ w_r row_r / max(Σ w_r, eps) (÷ R without weight); "sum"; "none" (...).
        eps: floor of the weight sum (> 0).

    Formula (p = softmax(t/T), q = softmax(s/T) over the K bins):
        row_r = T² · (1/K) Σ_k p_k (log p_k − log q_k)   (KL averaged over the bins, MMDetection's
        class_reduction="mean");  ∂row/∂s = T (q − p) / K.
        MMDetection's LDHead sums w_r·row_r and divides by avg_factor=4: ``reduction="sum"`` / 4.
        This is ``soft_label_kl(..., mode="softmax", class_reduction="mean")``: the same fused kernel.
    """
    return soft_label_kl(student_bins, teacher_bins, temperature=temperature, mode="softmax",
                         weight=weight, reduction=reduction, eps=eps, class_reduction="mean")
