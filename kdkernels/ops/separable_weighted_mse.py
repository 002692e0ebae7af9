"""separable_weighted_mse: feature MSE weighted by a spatial map times a per-channel weight (FGD's
term); the one fused feature-imitation kernel, which confidence_masked_mse also runs."""
from __future__ import annotations

import torch

from .. import _backend, _native, _validate as V, reference
from ._registration import call_fused, register_loss_autograd

if _native.HAS_NATIVE:
    @torch.library.register_fake("kdkernels::separable_weighted_mse")
    def _separable_weighted_mse_fake(student, teacher, spatial_weight, channel_weight, reduction, eps,
                                     compute_grad):
        """(N, C, H, W) features, (N, H, W) spatial and None or (N, C) channel weights →
        (loss: () or (N, C, H, W), grad)."""
        torch._check(student.dim() == 4, lambda: "separable_weighted_mse: student must be (N, C, H, W)")
        torch._check(student.shape == teacher.shape,
                     lambda: "separable_weighted_mse: student and teacher shapes differ")
        n, c, h, w = student.shape
        torch._check(spatial_weight.shape == (n, h, w),
                     lambda: f"separable_weighted_mse: spatial_weight must be (N, H, W) = {(n, h, w)}")
        if channel_weight is not None:
            torch._check(channel_weight.shape == (n, c),
                         lambda: f"separable_weighted_mse: channel_weight must be (N, C) = {(n, c)}")
        return V.fake_loss_and_grad(student, student.shape, reduction, compute_grad)

    register_loss_autograd("kdkernels::separable_weighted_mse")


def fused_separable_mse(op: str, student: torch.Tensor, teacher: torch.Tensor,
                        spatial_weight: torch.Tensor, channel_weight: torch.Tensor | None,
                        reduction: str, eps: float) -> torch.Tensor:
    """The separable MSE on the selected backend, for arguments already validated by the public op
    `op` (named in backend errors) and WITHOUT the value check of the weights: NaN or negative
    weights are computed as the formula says (confidence_masked_mse's mask is NaN where the
    confidence is NaN). spatial_weight is (N, H, W), channel_weight None or (N, C), both detached."""
    backend = _backend.resolve(student.device, op)
    if backend == "reference":
        return reference.separable_weighted_mse(student, teacher, spatial_weight, channel_weight,
                                                reduction=reduction, eps=eps)
    return call_fused(backend, "separable_weighted_mse", student, teacher.detach(), spatial_weight,
                      channel_weight, reduction, eps)


@V.argument_errors()
def separable_weighted_mse(student: torch.Tensor, teacher: torch.Tensor, spatial_weight: torch.Tensor,
                           channel_weight: torch.Tensor | None = None, *, reduction: str = "mean",
                           eps: float = 1e-6) -> torch.Tensor:
    """Feature imitation weighted by w_s[n,h,w] · w_c[n,c] (FGD's focal feature term; with
    w_c = None it is ``confidence_masked_mse`` on a precomputed mask).

    Args:
        student, teacher: (N, C, H, W) features, same shape and dtype (float64/32/16, bfloat16);
            non-contiguous accepted. Only ``student`` receives a gradient.
        spatial_weight: (N, H, W) or (N, 1, H, W) weights, finite and >= 0 (any float dtype). Detached.
        channel_weight: None (ones, nothing materialised) or (N, C) weights, finite and >= 0.
            Detached.
        reduction: "mean" | "sum" | "none" (N, C, H, W).
        eps: floor of Σ w_s in the mean's denominator (> 0).

    Formula:
        l[n,c,h,w] = w_s[n,h,w] · w_c[n,c] · (s − t)²
        mean = Σ l / (C · max(Σ_{n,h,w} w_s, eps)),  sum = Σ l,  none = l.
        An element with a zero weight contributes exactly 0 (loss and gradient) whatever its
        features; Σ w_s == 0 gives mean 0 with a zero gradient. Gradient 2 · w_s · w_c · (s − t) · G
        (G = grad_output, divided by the mean's denominator), written by the forward kernel.
        Accumulates in float32 (float64 for float64); the result has the input dtype. Under
        autocast a bf16/fp32 pair is promoted to fp32.
        FGD's foreground term is ``separable_weighted_mse(s, t, M_fg·A_s, A_c, reduction="sum") / N``.
    Raises:
        ValueError naming spatial_weight / channel_weight for a negative, inf or NaN value (on CUDA
        only with KDKERNELS_CHECK_VALUES=1: the check needs a host synchronisation).
    """
    student, teacher = V.autocast_pair(student, teacher)
    ws, wc = V.separable_weights(student, teacher, spatial_weight, channel_weight)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    eps = V.positive(eps, "eps")
    V.check_values(ws, "spatial_weight", "separable_weighted_mse")
    V.check_values(wc, "channel_weight", "separable_weighted_mse")
    return fused_separable_mse("separable_weighted_mse", student, teacher, ws, wc, reduction, eps)
