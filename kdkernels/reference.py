"""Plain-PyTorch implementations of every op: the ground truth for tests and the eager baseline.

Same signatures and checks as the public ops. float16/bfloat16 inputs are computed in float32 and
the result is returned in the input dtype; float64 stays float64. Gradients reach the student only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validate as V


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float64, torch.float32) else x.float()


def _safe_mean(total: torch.Tensor, norm: torch.Tensor, eps: float) -> torch.Tensor:
    """total / max(norm, eps), and exactly 0 (with a zero gradient) when norm == 0, for any eps:
    an empty mask or all-zero weights give 0 even where eps underflows in float32. NaN stays NaN."""
    empty = norm == 0
    safe = torch.where(empty, torch.ones_like(norm), norm.clamp_min(eps))
    return torch.where(empty, torch.zeros_like(total), total / safe)


def _reduce(rows: torch.Tensor, weight, reduction: str, eps: float, like: torch.Tensor) -> torch.Tensor:
    """Weighted reduction of per-row losses; "none" keeps the leading shape of `like` (..., K)."""
    dtype = like.dtype
    if weight is not None:
        rows = rows * weight.to(rows.dtype)
    if reduction == "none":
        return rows.to(dtype).reshape(like.shape[:-1])
    total = rows.sum()
    if reduction == "sum":
        return total.to(dtype)
    norm = weight.to(rows.dtype).sum() if weight is not None else rows.new_tensor(float(rows.shape[0]))
    return _safe_mean(total, norm, eps).to(dtype)


def teacher_confidence(cls_logits: torch.Tensor, *, mode: str = "sigmoid") -> torch.Tensor:
    """(..., K) → (...): max_k σ(t_k) (sigmoid) or max_k softmax(t)_k (softmax). Detached."""
    V.tensor(cls_logits, "cls_logits")
    V.choice(mode, "mode", V.MODES)
    if cls_logits.dim() < 1 or cls_logits.shape[-1] < 1:
        raise ValueError(f"cls_logits must have shape (..., K) with K >= 1, got {V.dims(cls_logits.shape)}")
    t = _acc(cls_logits.detach())
    probs = torch.sigmoid(t) if mode == "sigmoid" else torch.softmax(t, dim=-1)
    return probs.amax(dim=-1).to(cls_logits.dtype)


def confidence_map(cls_logits: torch.Tensor, num_anchors: int, *, mode: str = "sigmoid") -> torch.Tensor:
    """One FPN level's head output (N, A·K, H, W) → (N, H, W): max over anchors and classes."""
    V.tensor(cls_logits, "cls_logits")
    if cls_logits.dim() != 4:
        raise ValueError(f"cls_logits must have shape (N, A*K, H, W), got {V.dims(cls_logits.shape)}")
    if not isinstance(num_anchors, int) or num_anchors < 1 or cls_logits.shape[1] % num_anchors:
        raise ValueError(f"num_anchors must be a positive int dividing the {int(cls_logits.shape[1])} "
                         f"channels of cls_logits, got {num_anchors!r}")
    n, ak, h, w = cls_logits.shape
    per_anchor = cls_logits.reshape(n, num_anchors, ak // num_anchors, h, w).movedim(2, -1)
    return teacher_confidence(per_anchor, mode=mode).amax(dim=1)


def _confidence_mask(conf: torch.Tensor, threshold: float, power: float, dtype: torch.dtype) -> torch.Tensor:
    """m = 0 where conf < threshold, else conf^power, in `dtype` (the accumulation dtype: the
    comparison and the power run there, threshold rounded to it). A NaN confidence is kept (NaN < τ
    is false): m = NaN^power. A masked-out pixel is exactly 0 whatever conf^power would be (0^-1,
    a fractional power of a negative confidence). The spatial weight that confidence_masked_mse
    passes to separable_weighted_mse, on every backend."""
    c = conf.to(dtype)
    return torch.where(c < threshold, 0.0, c if power == 1.0 else c.pow(power))


def confidence_masked_mse(student, teacher, confidence, *, threshold=0.0, power=1.0,
                          reduction="mean", eps=1e-6):
    """separable_weighted_mse with the spatial weight m = conf^power·[conf ≥ threshold] and no
    channel weight: l = m (s − t)²; mean = Σ l / (C · max(Σ m, eps)).

    A pixel is masked out iff conf < threshold (a NaN confidence is kept, so NaN propagates); a
    masked-out pixel, or a kept one whose m is 0, contributes exactly 0 to the loss, the normaliser
    and the gradient, whatever its student/teacher values or conf^power. Mean with Σ m == 0 is 0
    with a zero gradient."""
    conf = V.feature_pair(student, teacher, confidence)
    V.number(threshold, "threshold")
    V.number(power, "power")
    V.choice(reduction, "reduction", V.REDUCTIONS)
    V.positive(eps, "eps")
    mask = _confidence_mask(conf, threshold, power, _acc(student).dtype)
    return separable_weighted_mse(student, teacher, mask, reduction=reduction, eps=eps)


def _kl_terms(s, t, temperature: float, mode: str):
    """Tempered KL(p‖q) per element (sigmoid) or per row (softmax), and the teacher entropy H."""
    a, b = t / temperature, s / temperature
    if mode == "softmax":
        logp, logq = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
        p = logp.exp()
        return (p * (logp - logq)).sum(-1), -(p * logp).sum(-1)
    p = torch.sigmoid(a)
    lp, lnp = F.logsigmoid(a), F.logsigmoid(-a)
    kl = p * (lp - F.logsigmoid(b)) + (1 - p) * (lnp - F.logsigmoid(-b))
    return kl, -(p * lp + (1 - p) * lnp)


def soft_label_kl(student_logits, teacher_logits, *, temperature=1.0, mode="softmax", weight=None,
                  reduction="mean", eps=1e-6, class_reduction="sum"):
    """row_r = T² KL(p_t‖q_s) (softmax over K, or Σ_k binary KL for sigmoid), divided by K for
    class_reduction="mean" (MMDetection's KnowledgeDistillationKLDivLoss); weighted; reduced."""
    s, t = V.logits_pair(student_logits, teacher_logits)
    w = V.row_weight(weight, s.shape[0], s)
    T = V.positive(temperature, "temperature")
    V.choice(mode, "mode", V.MODES)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    V.choice(class_reduction, "class_reduction", V.CLASS_REDUCTIONS)
    V.positive(eps, "eps")
    kl, _ = _kl_terms(_acc(s), _acc(t.detach()), T, mode)
    rows = kl if mode == "softmax" else kl.sum(-1)
    if class_reduction == "mean":
        rows = rows / s.shape[-1]
    return _reduce(T * T * rows, w, reduction, eps, student_logits)


def localization_distillation(student_bins, teacher_bins, *, temperature=10.0, weight=None,
                              reduction="mean", eps=1e-6):
    """LD (Zheng et al.): row = T² · KL(softmax(t/T) ‖ softmax(s/T)) / K over the K box-edge bins."""
    return soft_label_kl(student_bins, teacher_bins, temperature=temperature, mode="softmax",
                         weight=weight, reduction=reduction, eps=eps, class_reduction="mean")


def channel_wise_divergence(student, teacher, *, temperature=4.0, reduction="mean"):
    """CWD (Shu et al.): per (n, c) T² · KL(softmax_HW(t/T) ‖ softmax_HW(s/T)); mean over N·C;
    "none" → (N, C)."""
    V.feature_tensors(student, teacher)
    T = V.positive(temperature, "temperature")
    V.choice(reduction, "reduction", V.REDUCTIONS)
    n, c, h, w = student.shape
    s = _acc(student).reshape(n * c, h * w)
    t = _acc(teacher.detach()).reshape(n * c, h * w)
    kl, _ = _kl_terms(s, t, T, "softmax")
    rows = (T * T * kl).reshape(n, c)
    if reduction == "none":
        return rows.to(student.dtype)
    return (rows.sum() if reduction == "sum" else rows.mean()).to(student.dtype)


def _standardise_channels(x, eps=1e-6):
    """(N, C, H, W) → each channel minus its mean over N·H·W, over (unbiased std + eps)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True)
    return (flat - mean) / (std + eps)


def pearson_feature_loss(student, teacher, *, reduction="mean"):
    """PKD (Cao et al.): ŝ, t̂ = per-channel standardised over N·H·W (unbiased std + 1e-6);
    element loss (ŝ − t̂)²/2; mean over all elements, sum, or "none" → (C,) per-channel means."""
    V.feature_tensors(student, teacher)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    V.pearson_sizes(student)
    diff = _standardise_channels(_acc(student)) - _standardise_channels(_acc(teacher.detach()))
    per_element = diff.square() / 2  # (C, N·H·W)
    if reduction == "none":
        return per_element.mean(dim=1).to(student.dtype)
    return (per_element.sum() if reduction == "sum" else per_element.mean()).to(student.dtype)


def separable_weighted_mse(student, teacher, spatial_weight, channel_weight=None, *, reduction="mean",
                           eps=1e-6):
    """l = w_s[n,h,w] · w_c[n,c] · (s − t)²; mean = Σ l / (C · max(Σ w_s, eps)).

    An element whose weight is 0 (w_s or w_c) contributes exactly 0 to the loss and the gradient,
    whatever its features; a NaN weight propagates. Σ w_s == 0 gives mean 0 with a zero gradient."""
    ws, wc = V.separable_weights(student, teacher, spatial_weight, channel_weight)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    V.positive(eps, "eps")
    s, t = _acc(student), _acc(teacher.detach())
    w = ws.to(s.dtype).unsqueeze(1)
    if wc is not None:
        w = w * wc.to(s.dtype)[:, :, None, None]
    keep = w != 0  # NaN weights are kept (NaN in, NaN out)
    diff = torch.where(keep, s - t, 0.0)
    loss = w * diff.square()
    if reduction == "none":
        return loss.to(student.dtype)
    if reduction == "sum":
        return loss.sum().to(student.dtype)
    c = student.shape[1]
    return _safe_mean(loss.sum(), ws.to(s.dtype).sum() * c, eps * c).to(student.dtype)


def fgd_attention(features, temperature=0.5):
    """FGD's attention maps: spatial H·W·softmax_HW(mean_c|F|/T) (N, H, W) and channel
    C·softmax_C(mean_HW|F|/T) (N, C); differentiable, in the input dtype."""
    V.features(features, "features")
    T = V.positive(temperature, "temperature")
    n, c, h, w = features.shape
    a = _acc(features).abs()
    spatial = h * w * torch.softmax(a.mean(dim=1).reshape(n, h * w) / T, dim=1)
    channel = c * torch.softmax(a.mean(dim=(2, 3)) / T, dim=1)
    return spatial.reshape(n, h, w).to(features.dtype), channel.to(features.dtype)


def decoupled_kd(student_logits, teacher_logits, labels, *, alpha=1.0, beta=1.0, temperature=1.0,
                 reduction="mean"):
    """DKD (Zhao et al.): row_b = T² (α·TCKD + β·NCKD); TCKD = binary KL over [p_gt, 1 − p_gt],
    NCKD = KL over the non-target classes renormalised; mean = Σ_b row_b / B ("batchmean", 0 for B = 0)."""
    s, t, gt = V.dkd_inputs(student_logits, teacher_logits, labels)
    V.non_negative(alpha, "alpha")
    V.non_negative(beta, "beta")
    T = V.positive(temperature, "temperature")
    V.choice(reduction, "reduction", V.REDUCTIONS)
    a, b = _acc(t.detach()) / T, _acc(s) / T
    # read in bounds even for a label out of [0, K): dkd_inputs reports it (an in-graph assert when
    # traced, which Inductor may schedule after this gather) instead of a raw index error
    gt = torch.where((gt >= 0) & (gt < a.shape[1]), gt, 0)
    onehot = F.one_hot(gt, a.shape[1]).bool()

    def parts(x):
        lse = torch.logsumexp(x, dim=1)
        lse_nt = torch.logsumexp(x.masked_fill(onehot, -torch.inf), dim=1)
        log_gt = x.gather(1, gt[:, None])[:, 0] - lse   # log p_gt
        return log_gt, lse_nt - lse, x - lse_nt[:, None]  # log p_gt, log(1 − p_gt), log p̂ (non-target)

    tg, tn, tp = parts(a)
    sg, sn, sp = parts(b)
    tckd = tg.exp() * (tg - sg) + tn.exp() * (tn - sn)
    nckd = torch.where(onehot, 0.0, tp.exp() * (tp - sp)).sum(dim=1)
    rows = T * T * (alpha * tckd + beta * nckd)
    if reduction == "none":
        return rows.to(student_logits.dtype).reshape(student_logits.shape[:-1])
    total = rows.sum() if reduction == "sum" else rows.sum() / max(rows.shape[0], 1)  # no rows: 0
    return total.to(student_logits.dtype)


def adaptive_distillation_loss(student_logits, teacher_logits, *, temperature=1.0, beta=1.0,
                               gamma=2.0, mode="sigmoid", weight=None, reduction="mean",
                               detach_weight=False, eps=1e-6):
    """ADL: D = KL + β H, weight (1 − exp(−D))^γ, loss T² · weight · KL (see the public op)."""
    s, t = V.logits_pair(student_logits, teacher_logits)
    w = V.row_weight(weight, s.shape[0], s)
    T = V.positive(temperature, "temperature")
    V.non_negative(beta, "beta")
    V.non_negative(gamma, "gamma")
    V.choice(mode, "mode", V.MODES)
    V.choice(reduction, "reduction", V.REDUCTIONS)
    V.positive(eps, "eps")
    kl, h = _kl_terms(_acc(s), _acc(t.detach()), T, mode)
    e = -torch.expm1(-(kl + beta * h).clamp_min(0))
    adaptive = e.pow(gamma)
    if detach_weight:
        adaptive = adaptive.detach()
    loss = T * T * adaptive * kl
    rows = loss if mode == "softmax" else loss.sum(-1)
    return _reduce(rows, w, reduction, eps, student_logits)
