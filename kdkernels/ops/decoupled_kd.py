"""decoupled_kd: DKD, target-class and non-target-class KD (the non-target part on the soft_label_kl kernel)."""
from __future__ import annotations

import torch

from .. import _backend, _validate as V, reference
from .soft_label_kl import soft_label_kl

# MMRazor's DKDLoss removes the target class from the non-target softmax by subtracting 1000 from
# its tempered logit; exp(−1000) is 0 in float32 and float64, so this equals leaving it out while
# |logits / T| < ~900.
_TARGET_SHIFT = 1000.0


def decoupled_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                 alpha: float = 1.0, beta: float = 1.0, temperature: float = 1.0,
                 reduction: str = "mean") -> torch.Tensor:
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022; MMRazor ``DKDLoss``).

    Args:
        student_logits, teacher_logits: (..., K) class logits, K >= 2, same shape and dtype; the
            leading dims are flattened to B rows. Only the student receives a gradient.
        labels: integer (...) target class per row, in [0, K).
        alpha, beta: >= 0, weights of TCKD and NCKD (MMRazor's defaults 1, 1; the paper uses β = 8
            on CIFAR/ImageNet).
        temperature: T > 0.
        reduction: "mean" (÷ B, MMRazor's "batchmean"), "sum", "none" → (...).

    Formula (p = softmax(t/T), q = softmax(s/T), g = labels[b]):
        TCKD = p_g log(p_g/q_g) + (1 − p_g) log((1 − p_g)/(1 − q_g))
        NCKD = Σ_{k≠g} p̂_k log(p̂_k/q̂_k),  p̂ = softmax over k ≠ g of t/T (q̂ likewise)
        row_b = T² (α·TCKD + β·NCKD)
    NCKD runs on the fused ``soft_label_kl`` kernel (target logit shifted by −1000, as MMRazor
    does); TCKD needs two log-sum-exps per row, in PyTorch.
    """
    student_logits, teacher_logits = V.autocast_pair(student_logits, teacher_logits)
    s, t, gt = V.dkd_inputs(student_logits, teacher_logits, labels)
    alpha = V.non_negative(alpha, "alpha")
    beta = V.non_negative(beta, "beta")
    T = V.positive(temperature, "temperature")
    V.choice(reduction, "reduction", V.REDUCTIONS)
    if _backend.resolve(s.device, "soft_label_kl") == "reference":
        return reference.decoupled_kd(student_logits, teacher_logits, labels, alpha=alpha, beta=beta,
                                      temperature=T, reduction=reduction)
    out_shape = student_logits.shape[:-1]
    onehot = torch.nn.functional.one_hot(gt, s.shape[1]).bool()
    acc = s.dtype if s.dtype in (torch.float32, torch.float64) else torch.float32
    a, b = t.detach().to(acc) / T, s.to(acc) / T
    rows = 0
    if beta != 0:
        shift = onehot.to(acc) * _TARGET_SHIFT
        nckd = soft_label_kl(b - shift, a - shift, temperature=1.0, reduction="none")
        rows = beta * nckd
    if alpha != 0:
        rows = rows + alpha * _target_class_kl(a, b, onehot, gt)
    rows = (T * T) * rows
    if not isinstance(rows, torch.Tensor):  # alpha == beta == 0
        rows = s.new_zeros(s.shape[0], dtype=acc) + 0 * b.sum(dim=1)
    if reduction == "none":
        return rows.to(student_logits.dtype).reshape(out_shape)
    return (rows.sum() if reduction == "sum" else rows.mean()).to(student_logits.dtype)


def _target_class_kl(a, b, onehot, gt):
    """Binary KL over [p_g, 1 − p_g] per row, from two log-sum-exps of each of a (teacher), b (student)."""
    def log_parts(x):
        lse = torch.logsumexp(x, dim=1)
        log_rest = torch.logsumexp(x.masked_fill(onehot, -torch.inf), dim=1) - lse
        return x.gather(1, gt[:, None])[:, 0] - lse, log_rest

    tg, tr = log_parts(a)
    sg, sr = log_parts(b)
    return tg.exp() * (tg - sg) + tr.exp() * (tr - sr)
