"""The distillation terms of METHOD.md's trainer section, every one through the kdkernels ops.

distill.method = thesis (default):
Labeled batch:   L = L_det + λ_kl·KL_conf + λ_feat·Σ_levels MSE_conf + λ_loc·LOC_conf
Unlabeled batch: L =         λ_adl·ADL    + λ_feat·Σ_levels MSE_conf + λ_loc·LOC_conf
The peer presets (cwd, pkd, fgd, fgd_conf) live in peers.py; distill_losses dispatches on the method.
"""
from __future__ import annotations

import torch
from torch import nn

import kdkernels

from .config import DistillConfig
from .models import DetectorOutputs


class FeatureAdapter(nn.Module):
    """1×1 conv from the student's FPN channels to the teacher's (identity when they match)."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.proj = (nn.Identity() if student_channels == teacher_channels
                     else nn.Conv2d(student_channels, teacher_channels, 1))

    def forward(self, features):
        return [self.proj(f) for f in features]


def level_confidence(cls_logits: torch.Tensor, level_shapes, num_anchors: int) -> list:
    """Teacher confidence per FPN location: (N, Σ H W A, K) → [(N, H_l, W_l)] (max over anchors, classes)."""
    conf = kdkernels.teacher_confidence(cls_logits)  # (N, Σ HWA)
    n = conf.shape[0]
    out, start = [], 0
    for h, w in level_shapes:
        stop = start + h * w * num_anchors
        out.append(conf[:, start:stop].reshape(n, h, w, num_anchors).amax(-1))
        start = stop
    return out


def gt_box_masks(targets, level_shapes, image_size) -> list:
    """The label-dependent baseline region: 1 where a location's centre lies inside a GT box."""
    masks = []
    for h, w in level_shapes:
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (image_size[0] / h)
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (image_size[1] / w)
        per_image = []
        for t in targets:
            boxes = t["boxes"].float().cpu()
            if boxes.numel() == 0:
                per_image.append(torch.zeros(h, w))
                continue
            inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] <= boxes[:, 3:4])  # (B, h)
            inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] <= boxes[:, 2:3])  # (B, w)
            per_image.append((inside_y[:, :, None] & inside_x[:, None, :]).any(0).float())
        masks.append(torch.stack(per_image).to(targets[0]["boxes"].device))
    return masks


def code_variant_adl(cls_s, cls_t, cfg: DistillConfig):
    """The authors' Caffe2 op: weight (1 − exp(−(KL + βH)))^γ times the cross-entropy (KL + H),
    summed and divided by max(Σ p^1.8, 1). Plain PyTorch (the op has no CE form)."""
    T = cfg.temperature
    s, t = cls_s.float() / T, cls_t.detach().float() / T
    p = torch.sigmoid(t)
    ls_t, ls_nt = nn.functional.logsigmoid(t), nn.functional.logsigmoid(-t)
    ce = -(p * nn.functional.logsigmoid(s) + (1 - p) * nn.functional.logsigmoid(-s))
    h = -(p * ls_t + (1 - p) * ls_nt)
    kl = ce - h
    weight = (-torch.expm1(-(kl + cfg.adl_beta * h).clamp_min(0))).pow(cfg.adl_gamma)
    return T * T * (weight * ce).sum() / torch.sigmoid(cls_t.detach().float()).pow(1.8).sum().clamp_min(1.0)


THESIS_TERMS = ("kl", "unlabeled", "feat", "loc")


def needs_adapted_features(cfg: DistillConfig, labeled: bool) -> bool:
    """Whether a batch's KD terms use the student's adapted FPN features (the trainer adapts them
    inside the DDP-wrapped forward then)."""
    if cfg.method != "thesis":
        return True  # every peer preset imitates FPN features (fgd on unlabeled batches: attention, relation)
    return cfg.feat_weight > 0 and (cfg.feat_region == "confidence" or labeled)


def distill_losses(s: DetectorOutputs, t: DetectorOutputs, adapter: FeatureAdapter, cfg: DistillConfig,
                   *, labeled: bool, targets=None, peer_modules=None, image_sizes=None) -> dict:
    """The weighted KD terms for one batch (a dict of scalar tensors; zero-weight terms are skipped).
    distill.method other than thesis: the peer preset's terms (peers.py) plus the thesis terms named
    in distill.peer_thesis_terms; `peer_modules` / `image_sizes` go to peers.peer_losses."""
    if cfg.method == "thesis":
        return thesis_losses(s, t, adapter, cfg, labeled=labeled, targets=targets)
    from .peers import peer_losses
    losses = peer_losses(s, t, adapter, cfg, labeled=labeled, targets=targets, modules=peer_modules,
                         image_sizes=image_sizes)
    if cfg.peer_thesis_terms:
        losses.update(thesis_losses(s, t, adapter, cfg, labeled=labeled, targets=targets,
                                    terms=tuple(cfg.peer_thesis_terms)))
    return losses


def thesis_losses(s: DetectorOutputs, t: DetectorOutputs, adapter: FeatureAdapter, cfg: DistillConfig,
                  *, labeled: bool, targets=None, terms=THESIS_TERMS) -> dict:
    """The thesis's terms (`terms`: a subset of THESIS_TERMS) for one batch."""
    losses = {}
    n, k = s.cls_logits.shape[0], s.cls_logits.shape[-1]
    cls_s, cls_t = s.cls_logits.reshape(-1, k), t.cls_logits.reshape(-1, k)
    conf = kdkernels.teacher_confidence(cls_t)  # (N·anchors,), no grad
    if labeled and cfg.kl_weight > 0 and "kl" in terms:
        weight = conf if cfg.kl_confidence_weighting else None
        losses["kd_kl"] = cfg.kl_weight * kdkernels.soft_label_kl(
            cls_s, cls_t, temperature=cfg.temperature, mode="sigmoid", weight=weight)
    if not labeled and cfg.adl_weight > 0 and "unlabeled" in terms:
        if cfg.unlabeled_loss == "kl":
            losses["kd_unlabeled"] = cfg.adl_weight * kdkernels.soft_label_kl(
                cls_s, cls_t, temperature=cfg.temperature, mode="sigmoid",
                weight=conf if cfg.kl_confidence_weighting else None)
        elif cfg.adl_variant == "code":
            losses["kd_unlabeled"] = cfg.adl_weight * code_variant_adl(cls_s, cls_t, cfg)
        else:
            adl = kdkernels.adaptive_distillation_loss(
                cls_s, cls_t, temperature=cfg.temperature, beta=cfg.adl_beta, gamma=cfg.adl_gamma,
                mode="sigmoid", reduction="sum")
            norm = torch.sigmoid(cls_t.float()).pow(1.8).sum().clamp_min(1.0)
            losses["kd_unlabeled"] = cfg.adl_weight * adl / norm
    if cfg.feat_weight > 0 and "feat" in terms:
        if cfg.feat_region == "gt":
            if not labeled:
                regions = None  # no boxes on unlabeled images: the GT baseline cannot imitate there
            else:
                regions = gt_box_masks(targets, s.level_shapes, s.image_sizes[0])
        else:
            regions = level_confidence(t.cls_logits, t.level_shapes, t.num_anchors)
        if regions is not None:
            adapted = s.adapted if s.adapted is not None else adapter(s.features)
            per_level = [kdkernels.confidence_masked_mse(fs, ft, r, threshold=cfg.feat_threshold,
                                                         power=cfg.feat_power if cfg.feat_region == "confidence" else 0.0)
                         for fs, ft, r in zip(adapted, t.features, regions)]
            losses["kd_feat"] = cfg.feat_weight * torch.stack(per_level).sum()
    if cfg.loc_weight > 0 and "loc" in terms:
        # box deltas as a (N, 4, anchors, 1) "feature", the anchor's teacher confidence as the mask
        box_s = s.bbox_regression.permute(0, 2, 1).unsqueeze(-1)
        box_t = t.bbox_regression.permute(0, 2, 1).unsqueeze(-1)
        losses["kd_loc"] = cfg.loc_weight * kdkernels.confidence_masked_mse(
            box_s, box_t, conf.reshape(n, -1, 1), threshold=cfg.loc_threshold)
    return losses
