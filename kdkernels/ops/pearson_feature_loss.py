"""pearson_feature_loss: PKD, MSE between per-channel standardised features."""
from __future__ import annotations

import torch

from .. import _backend, _native, _validate as V, reference
from ._registration import call_fused, register_loss_autograd

if _native.HAS_NATIVE:
    @torch.library.register_fake("kdkernels::pearson_feature_loss")
    def _pearson_feature_loss_fake(student, teacher, reduction, compute_grad):
        """(N, C, H, W) features → (loss: () or (1, C, 1, 1) for "none", grad)."""
        torch._check(student.dim() == 4, lambda: "pearson_feature_loss: student must be (N, C, H, W)")
        torch._check(student.shape == teacher.shape,
                     lambda: "pearson_feature_loss: student and teacher shapes differ")
        n, c, h, w = student.shape
        torch._check(n * h * w >= 2, lambda: "pearson_feature_loss: student needs N·H·W >= 2")
        return V.fake_loss_and_grad(student, (1, c, 1, 1), reduction, compute_grad)

    register_loss_autograd("kdkernels::pearson_feature_loss")


@V.argument_errors()
def pearson_feature_loss(student: torch.Tensor, teacher: torch.Tensor, *,
                         reduction: str = "mean") -> torch.Tensor:
    """Pearson-correlation feature distillation (Cao et al., NeurIPS 2022, "PKD"; MMRazor ``PKDLoss``).

    Args:
        student, teacher: (N, C, H, W) features, same shape and dtype (float64/32/16, bfloat16),
            N·H·W >= 2; non-contiguous accepted. Only the student receives a gradient. Under
            autocast a mixed pair (bf16 + fp32) is promoted to the wider dtype.
        reduction: "mean" (MMRazor's), "sum", or "none" → (C,) per-channel means (their mean is
            the "mean" loss; each channel's loss depends only on that channel).

    Returns:
        A scalar ("mean", "sum") or a (C,) tensor ("none"), in the input dtype.

    Formula (per channel c, over its M = N·H·W values):
        x̂ = (x − mean(x)) / (std(x) + ε),  std unbiased (÷ M − 1), ε = 1e-6, for x = s and x = t
        mean = Σ (ŝ − t̂)² / (2 · N·C·H·W)     (= F.mse_loss(ŝ, t̂) / 2, MMRazor's PKDLoss)
        sum  = Σ (ŝ − t̂)² / 2,   none[c] = Σ_channel c (ŝ − t̂)² / (2M)
        A constant channel standardises to 0. Sums in float32 (float64 for float64 inputs).

    Gradient (student only; d = ŝ − t̂, a = 1/(σ_s + ε), ds = s − μ_s, G = grad_output / (N·C·H·W)
    for "mean", grad_output for "sum", grad_output[c] / M for "none"):
        ∂L/∂s = G · a · (d − mean_c(d) − ds · a · Σ_c(d · ds) / ((M − 1) σ_s)),   mean_c(d) = 0,
        with the σ_s term taken as 0 for a constant student channel (σ_s = 0), as torch.std's
        backward does.

    The fused backends (cpu, cuda, triton) make two passes over the features: per-channel shifted
    sums (Σ, Σ², Σ s·t about the channel's first value), then the loss and the gradient
    elementwise. Double backward and forward-mode AD need ``kdkernels.use_backend("reference")``.
    """
    student, teacher = V.autocast_pair(student, teacher)
    V.feature_tensors(student, teacher)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    V.pearson_sizes(student)
    backend = _backend.resolve(student.device, "pearson_feature_loss")
    if backend == "reference":
        return reference.pearson_feature_loss(student, teacher, reduction=reduction)
    loss = call_fused(backend, "pearson_feature_loss", student, teacher.detach(), reduction)
    return loss.reshape(student.shape[1]) if reduction == "none" else loss
