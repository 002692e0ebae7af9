"""fgd_attention: FGD's spatial and channel attention maps (plain PyTorch: two small reductions)."""
from __future__ import annotations

import torch

from .. import _validate as V, reference


@V.argument_errors(outputs=2)
def fgd_attention(features: torch.Tensor, temperature: float = 0.5):
    """Spatial and channel attention of FGD (Yang et al., CVPR 2022, "Focal and Global Knowledge
    Distillation for Detectors").

    Args:
        features: (N, C, H, W) float features (float64/32/16, bfloat16).
        temperature: T > 0 (FGD's default 0.5).
    Returns:
        spatial (N, H, W) = H·W · softmax over H·W of mean_c |F| / T  (mean 1 per image),
        channel (N, C)    = C · softmax over C of mean_hw |F| / T     (mean 1 per image),
        in the input dtype (computed in float32 for half inputs). Differentiable: FGD's attention
        loss compares the student's maps with the teacher's; detach the teacher's maps when they
        weight the feature term (``separable_weighted_mse`` detaches its weights itself).
    """
    return reference.fgd_attention(features, temperature=temperature)
