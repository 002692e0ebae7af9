"""channel_wise_divergence: CWD, each channel's spatial distribution (the soft_label_kl kernel on (N·C, H·W) rows)."""
from __future__ import annotations

import torch

from .. import _validate as V
from .soft_label_kl import soft_label_kl


@V.argument_errors()
def channel_wise_divergence(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float = 4.0,
                            reduction: str = "mean") -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021; MMRazor ``ChannelWiseDivergence``).

    Args:
        student, teacher: (N, C, H, W) features (after any adapter), same shape and dtype
            (float64/32/16, bfloat16). Only the student receives a gradient.
        temperature: T > 0 (the paper's detection setting: 4).
        reduction: "mean" (÷ N·C, MMRazor's), "sum", or "none" → (N, C).
            An empty input (N·C = 0 or H·W = 0) gives 0 (zeros for "none").

    Formula (each channel's H·W activations as a distribution):
        p = softmax_HW(t[n,c] / T), q = softmax_HW(s[n,c] / T)
        mean = T² · Σ_{n,c} Σ_hw p (log p − log q) / (N·C);  ∂/∂s = T (q − p) / (N·C)
        This is ``soft_label_kl`` on the (N·C, H·W) rows: the same fused kernel (a non-contiguous
        input is copied once by the reshape). Accumulates in float32 (float64 for float64).
    """
    student, teacher = V.autocast_pair(student, teacher)
    V.feature_tensors(student, teacher)
    temperature = V.positive(temperature, "temperature")
    V.choice(reduction, "reduction", V.REDUCTIONS)
    n, c, h, w = student.shape
    if h * w == 0:  # no pixels: every channel's divergence is 0, as for N = 0 (a graph to the student)
        empty = student.sum(dim=(2, 3))
        return empty if reduction == "none" else empty.sum()
    loss = soft_label_kl(student.reshape(n * c, h * w), teacher.reshape(n * c, h * w),
                         temperature=temperature, mode="softmax", reduction=reduction)
    return loss.reshape(n, c) if reduction == "none" else loss
