"""The KD terms on a YOLO head's tensors, every one through a kdkernels op (compile-friendly: no
Python branching on tensor values, so ``torch.compile(fullgraph=True)`` traces it without a break).

Shapes (N images, A = Σ_l H_l W_l anchor points, K classes, R = reg_max bins per box side):
    scores (N, K, A) class logits; boxes (N, 4R, A) box logits (channel = side · R + bin, Ultralytics'
    DFL order; R = 1: the four distances themselves); features [(N, C_l, H_l, W_l)] neck outputs (the
    student's already projected to the teacher's channels). Teacher tensors are detached.

Teacher confidence per anchor: ``c = max_k σ(t_k)`` of the teacher's class logits
(``kdkernels.teacher_confidence``); on the feature maps it is ``c`` reshaped to (N, H_l, W_l).

    feat = Σ_l confidence_masked_mse(F_s^l, F_t^l, c^l, τ_f, α)
         = Σ_l Σ m (F_s − F_t)² / (C_l · max(Σ m, eps)),  m = c^α · [c ≥ τ_f]
      (τ_f = 0, α = 1: Ultralytics' ``DistillationModel.loss_sl2`` summed over levels)
    cls  = soft_label_kl(s, t, sigmoid, T, weight = c)   rows = anchors, "mean" = Σ_r c_r KL_r / Σ_r c_r
    unl  = adaptive_distillation_loss(s, t, sigmoid, T, β, γ, "sum") / max(Σ σ(t)^1.8, 1)   ("adl")
           or the cls formula ("kl")
    ld   = soft_label_kl(box_s, box_t, softmax over the R bins, T_ld, weight = c·[c ≥ τ_ld] per side)
           rows = (anchor, side), "mean"                                   (DFL heads, R > 1)
    box  = confidence_masked_mse(box_s, box_t, c, threshold=τ_ld, power=1): the four distances,
           Σ m Σ_j (Δs − Δt)² / (4 · max(Σ m, eps)),  m = c·[c ≥ τ_ld]      (R = 1, e.g. YOLO26)

Heads with two branches (one-to-many and one-to-one, YOLO26/v10) get cls/unl/ld/box as the mean
over the branches.
"""
from __future__ import annotations

import torch

import kdkernels

from .config import KDConfig

__all__ = ["anchor_confidence", "level_confidence", "feature_term", "cls_term", "unlabeled_term",
           "ld_term", "box_term", "kd_terms"]

EPS = 1e-9  # the mean's floor of Σ mask (Ultralytics' loss_sl2 adds 1e-9 to C·Σ mask)


def anchor_confidence(t_scores: torch.Tensor) -> torch.Tensor:
    """(N, K, A) teacher class logits → (N, A) confidence max_k σ(t_k), detached."""
    return kdkernels.teacher_confidence(t_scores.transpose(1, 2))


def level_confidence(conf: torch.Tensor, shapes) -> list:
    """(N, A) anchor confidence → [(N, H_l, W_l)] for the level shapes [(H_l, W_l)] (A = Σ H_l W_l)."""
    parts = conf.split([h * w for h, w in shapes], dim=1)
    return [p.reshape(conf.shape[0], h, w) for p, (h, w) in zip(parts, shapes)]


def feature_term(s_feats, t_feats, conf_levels, threshold: float, power: float) -> torch.Tensor:
    """Σ over levels of the confidence-masked feature MSE (see the module docstring)."""
    terms = [kdkernels.confidence_masked_mse(s, t.to(s.dtype), c, threshold=threshold, power=power, eps=EPS)
             for s, t, c in zip(s_feats, t_feats, conf_levels)]
    return torch.stack(terms).sum()


def _rows(scores: torch.Tensor) -> torch.Tensor:
    """(N, K, A) → (N·A, K)."""
    return scores.transpose(1, 2).reshape(-1, scores.shape[1])


def cls_term(s_scores, t_scores, conf, temperature: float) -> torch.Tensor:
    """Sigmoid soft-label KL per anchor, weighted by ``conf`` (N, A) (None: unweighted mean)."""
    weight = None if conf is None else conf.reshape(-1)
    return kdkernels.soft_label_kl(_rows(s_scores), _rows(t_scores).to(s_scores.dtype), mode="sigmoid",
                                   temperature=temperature, weight=weight)


def unlabeled_term(s_scores, t_scores, temperature: float, beta: float, gamma: float) -> torch.Tensor:
    """ADL over all anchors and classes, divided by max(Σ σ(t)^1.8, 1) (the authors' normaliser)."""
    t = _rows(t_scores)
    adl = kdkernels.adaptive_distillation_loss(_rows(s_scores), t.to(s_scores.dtype), temperature=temperature,
                                               beta=beta, gamma=gamma, mode="sigmoid", reduction="sum")
    t_acc = t if t.dtype == torch.float64 else t.float()  # accumulate in float32 at least
    return adl / torch.sigmoid(t_acc).pow(1.8).sum().clamp_min(1.0)


def _masked_conf(conf: torch.Tensor, threshold: float) -> torch.Tensor:
    return conf * (conf >= threshold).to(conf.dtype)


def ld_term(s_boxes, t_boxes, conf, temperature: float, threshold: float, reg_max: int) -> torch.Tensor:
    """Softmax KL over the R DFL bins of each box side, weighted by the anchor's masked confidence."""
    n, a = s_boxes.shape[0], s_boxes.shape[-1]
    def bins(b):  # (N, 4R, A) → (N·A·4, R)
        return b.reshape(n, 4, reg_max, a).permute(0, 3, 1, 2).reshape(-1, reg_max)
    weight = _masked_conf(conf, threshold).unsqueeze(-1).expand(n, a, 4).reshape(-1)
    return kdkernels.soft_label_kl(bins(s_boxes), bins(t_boxes).to(s_boxes.dtype), mode="softmax",
                                   temperature=temperature, weight=weight)


def box_term(s_boxes, t_boxes, conf, threshold: float) -> torch.Tensor:
    """Confidence-masked MSE of the four box distances (heads without DFL), as (N, 4, A, 1) maps."""
    return kdkernels.confidence_masked_mse(s_boxes.unsqueeze(-1), t_boxes.unsqueeze(-1).to(s_boxes.dtype),
                                           conf.unsqueeze(-1), threshold=threshold, power=1.0, eps=EPS)


def _branch_mean(values) -> torch.Tensor:
    return torch.stack(values).mean() if len(values) > 1 else values[0]


def kd_terms(cfg: KDConfig, labeled: bool, reg_max: int, s_feats, t_feats, s_branches, t_branches,
             t_conf_scores) -> dict:
    """The weighted KD terms of one batch (only those with a non-zero weight that apply to it).

    Args:
        cfg: the KD weights and hyperparameters. labeled: a labelled batch (cls) or not (unl).
        s_feats, t_feats: [(N, C_l, H_l, W_l)] projected student / teacher neck features.
        s_branches, t_branches: [(scores (N, K, A), boxes (N, 4R, A))] per head branch, paired.
        t_conf_scores: (N, K, A) teacher logits defining the confidence (Ultralytics: the mean of
            the teacher's branches).
    Returns:
        {"kd_feat", "kd_cls" | "kd_unl", "kd_ld" | "kd_box"} → weighted scalar tensors.
    """
    conf = anchor_confidence(t_conf_scores.detach())
    out = {}
    if cfg.kd_feat > 0:
        levels = level_confidence(conf, [f.shape[-2:] for f in t_feats])
        out["kd_feat"] = cfg.kd_feat * feature_term(s_feats, [f.detach() for f in t_feats], levels,
                                                    cfg.kd_feat_threshold, cfg.kd_feat_power)
    if labeled and cfg.kd_cls > 0:
        w = conf if cfg.kd_cls_conf else None
        out["kd_cls"] = cfg.kd_cls * _branch_mean([cls_term(s, t.detach(), w, cfg.kd_T)
                                                   for (s, _), (t, _) in zip(s_branches, t_branches)])
    if not labeled and cfg.kd_unl > 0:
        if cfg.kd_unl_loss == "adl":
            vals = [unlabeled_term(s, t.detach(), cfg.kd_T, cfg.kd_adl_beta, cfg.kd_adl_gamma)
                    for (s, _), (t, _) in zip(s_branches, t_branches)]
        else:
            w = conf if cfg.kd_cls_conf else None
            vals = [cls_term(s, t.detach(), w, cfg.kd_T) for (s, _), (t, _) in zip(s_branches, t_branches)]
        out["kd_unl"] = cfg.kd_unl * _branch_mean(vals)
    if cfg.kd_ld > 0:
        if reg_max > 1:
            vals = [ld_term(b, tb.detach(), conf, cfg.kd_ld_T, cfg.kd_ld_threshold, reg_max)
                    for (_, b), (_, tb) in zip(s_branches, t_branches)]
            out["kd_ld"] = cfg.kd_ld * _branch_mean(vals)
        else:
            vals = [box_term(b, tb.detach(), conf, cfg.kd_ld_threshold)
                    for (_, b), (_, tb) in zip(s_branches, t_branches)]
            out["kd_box"] = cfg.kd_ld * _branch_mean(vals)
    return out
