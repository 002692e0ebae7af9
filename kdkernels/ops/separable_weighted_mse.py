"""separable_weighted_mse: feature MSE weighted by a spatial map times a per-channel weight (FGD's term)."""
from __future__ import annotations

import torch

from .. import _validate as V, reference


def separable_weighted_mse(student: torch.Tensor, teacher: torch.Tensor, spatial_weight: torch.Tensor,
                           channel_weight: torch.Tensor | None = None, *, reduction: str = "mean",
                           eps: float = 1e-6) -> torch.Tensor:
    """Feature imitation weighted by w_s[n,h,w] · w_c[n,c] (FGD's focal feature term; with
    w_c = None it is ``confidence_masked_mse`` on a precomputed mask).

    Args:
        student, teacher: (N, C, H, W) features, same shape and dtype (float64/32/16, bfloat16);
            non-contiguous accepted. Only ``student`` receives a gradient.
        spatial_weight: (N, H, W) or (N, 1, H, W) weights, finite and >= 0 (any float dtype). Detached.
        channel_weight: None (ones) or (N, C) weights, finite and >= 0. Detached.
        reduction: "mean" | "sum" | "none" (N, C, H, W).
        eps: floor of Σ w_s in the mean's denominator (> 0).

    Formula:
        l[n,c,h,w] = w_s[n,h,w] · w_c[n,c] · (s − t)²
        mean = Σ l / (C · max(Σ_{n,h,w} w_s, eps)),  sum = Σ l,  none = l.
        An element with a zero weight contributes exactly 0 (loss and gradient) whatever its
        features; Σ w_s == 0 gives mean 0 with a zero gradient.
        FGD's foreground term is ``separable_weighted_mse(s, t, M_fg·A_s, A_c, reduction="sum") / N``.
    Raises:
        ValueError naming spatial_weight / channel_weight for a negative, inf or NaN value (on CUDA
        only with KDKERNELS_CHECK_VALUES=1: the check needs a host synchronisation).
    """
    ws, wc = V.separable_weights(student, teacher, spatial_weight, channel_weight)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    eps = V.positive(eps, "eps")
    V.check_values(ws, "spatial_weight", "separable_weighted_mse")
    V.check_values(wc, "channel_weight", "separable_weighted_mse")
    return reference.separable_weighted_mse(student, teacher, ws, wc, reduction=reduction, eps=eps)
