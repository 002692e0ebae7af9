"""Peer KD presets of the trainer (`distill.method`), every feature loss through the kdkernels ops.

A peer preset is the detection loss + that peer's published feature loss(es) on the FPN levels
(student features through the trainer's 1×1 FeatureAdapter, as FGD's `align` conv), each with its
published weight × `distill.method_weight`; the thesis's class KL / ADL / box terms are left out
unless `distill.peer_thesis_terms` names them. METHOD.md ("Peer presets") has the formulas and sources.

  cwd       Σ_l w·T²·Σ_{n,c} KL(softmax_HW(t/T) ‖ softmax_HW(s/T)) / (N·C)   (MMRazor ChannelWiseDivergence)
  pkd       Σ_l w·MSE(std(s), std(t)) / 2, standardised per channel over N·H·W (MMRazor PKDLoss)
  fgd       Σ_l FGD (yzd-v/FGD FeatureLoss): attention-weighted feature term in GT-box fg/bg masks,
            attention loss, global relation through a GcBlock per level (student and teacher side)
  fgd_conf  fgd with the teacher-confidence map as the foreground (label-free)

Label-free presets (cwd, pkd, fgd_conf) act on unlabeled batches too; `fgd` has no boxes there and
keeps only its attention and relation terms.
"""
from __future__ import annotations

import torch
from torch import nn

import kdkernels

METHODS = ("thesis", "cwd", "pkd", "fgd", "fgd_conf")
LABEL_FREE = ("thesis", "cwd", "pkd", "fgd_conf")
RELATION_METHODS = ("fgd", "fgd_conf")   # the presets with trainable GcBlock modules


# ----------------------------------------------------------------------------- FGD's global relation
class GcBlock(nn.Module):
    """FGD's global context block (GCNet): attention-pooled context (1×1 conv → softmax over H·W)
    passed through channel_add (1×1 conv C→C/2, LayerNorm, ReLU, 1×1 conv C/2→C) and added to every
    location. Initialised as FGD does: the mask conv Kaiming-normal (fan_in), the last conv zero."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(1, channels // 2)
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1), nn.LayerNorm([hidden, 1, 1]), nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1))
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weights = torch.softmax(self.conv_mask(x).reshape(n, 1, h * w), dim=-1)   # (N, 1, HW)
        return torch.bmm(x.reshape(n, c, h * w), weights.transpose(1, 2)).reshape(n, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.channel_add(self.context(x))


class FGDRelation(nn.Module):
    """FGD's relation modules: per FPN level one GcBlock for the student and one for the teacher
    (FGD's conv_mask_s/t, channel_add_conv_s/t). Trainable: part of the trainer's student module, so
    they are optimised, checkpointed and run inside the DDP-wrapped forward."""

    def __init__(self, channels: int, num_levels: int):
        super().__init__()
        self.student = nn.ModuleList(GcBlock(channels) for _ in range(num_levels))
        self.teacher = nn.ModuleList(GcBlock(channels) for _ in range(num_levels))

    def forward(self, student_features, teacher_features) -> list:
        """[(GcBlock_s(student_l), GcBlock_t(teacher_l))] per level."""
        if not len(student_features) == len(teacher_features) == len(self.student):
            raise ValueError(f"FGD relation: {len(self.student)} GcBlock levels, but {len(student_features)} "
                             f"student and {len(teacher_features)} teacher feature levels")
        return [(gs(fs), gt(ft.detach())) for gs, gt, fs, ft
                in zip(self.student, self.teacher, student_features, teacher_features)]


def build_peer_modules(cfg, channels: int, num_levels: int):
    """The trainable modules a preset needs (FGDRelation for fgd / fgd_conf), else None."""
    return FGDRelation(channels, num_levels) if cfg.method in RELATION_METHODS else None


# ----------------------------------------------------------------------------- FGD's masks
def pad_boxes(targets, device=None):
    """Per-image (B_i, 4) boxes → (N, B_max, 4) float32 boxes (zero padding) and an (N, B_max) valid mask."""
    boxes = [t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4) for t in targets]
    counts = torch.tensor([len(b) for b in boxes], device=device)
    padded = nn.utils.rnn.pad_sequence(boxes, batch_first=True)
    valid = torch.arange(padded.shape[1], device=device)[None, :] < counts[:, None]
    return padded, valid


def fgd_box_masks(boxes, valid, image_sizes, shape, dtype=torch.float32):
    """FGD's foreground / background masks on an (H, W) feature level, vectorised over boxes.

    boxes (N, B, 4) x1 y1 x2 y2 in pixels of the image whose (h, w) is image_sizes[n]; valid (N, B).
    As yzd-v/FGD: a box covers cells [floor(y1·H/h), ceil(y2·H/h)] × [floor(x1·W/w), ceil(x2·W/w)]
    (inclusive, cut at the map's edge) and gives them 1/((hmax+1−hmin)·(wmax+1−wmin)); fg is the max
    over boxes; bg = 1 where fg = 0, divided by its sum per image (all zero when fg covers the map).
    Boxes must lie in the image (FGD's assumption; a negative start would wrap in FGD's slicing).
    Returns (fg, bg), each (N, H, W) in `dtype` (float32: FGD's masks in float32 training)."""
    n, h, w = boxes.shape[0], shape[0], shape[1]
    dev = boxes.device
    sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=dev).reshape(n, 1, 2)
    # the same float ops in the same order as FGD: coordinate / image side * feature side
    wmin = torch.floor(boxes[..., 0] / sizes[..., 1] * w).int()
    wmax = torch.ceil(boxes[..., 2] / sizes[..., 1] * w).int()
    hmin = torch.floor(boxes[..., 1] / sizes[..., 0] * h).int()
    hmax = torch.ceil(boxes[..., 3] / sizes[..., 0] * h).int()
    area = 1.0 / (hmax + 1 - hmin) / (wmax + 1 - wmin)                       # (N, B) float32
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    in_rows = (rows >= hmin[..., None]) & (rows <= hmax[..., None]) & valid[..., None]   # (N, B, H)
    in_cols = (cols >= wmin[..., None]) & (cols <= wmax[..., None])                      # (N, B, W)
    if boxes.shape[1] == 0:
        fg = torch.zeros(n, h, w, device=dev, dtype=dtype)
    else:
        inside = in_rows[..., :, None] & in_cols[..., None, :]                           # (N, B, H, W)
        fg = torch.where(inside, area.to(dtype)[..., None, None], 0.0).amax(1)
    bg = (fg <= 0).to(dtype)
    return fg, bg / bg.sum((1, 2), keepdim=True).clamp_min(1.0)


def _acc(x: torch.Tensor) -> torch.Tensor:
    """float32 for half inputs (the sums of the FGD terms), float64 kept."""
    return x if x.dtype == torch.float64 else x.float()


def confidence_masks(confidence: torch.Tensor, threshold: float):
    """fgd_conf's masks from a teacher-confidence level map (N, H, W): fg = conf·[conf ≥ τ],
    bg = 1 − fg divided by its sum per image (FGD's background normalisation)."""
    conf = _acc(confidence.detach())
    fg = conf * (conf >= threshold)
    bg = 1.0 - fg
    return fg, bg / bg.sum((1, 2), keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------- the preset losses
def cwd_loss(student_features, teacher_features, cfg) -> torch.Tensor:
    terms = [kdkernels.channel_wise_divergence(fs, ft, temperature=cfg.cwd_tau, reduction="mean")
             for fs, ft in zip(student_features, teacher_features)]
    return cfg.method_weight * cfg.cwd_weight * torch.stack(terms).sum()


def pkd_loss(student_features, teacher_features, cfg) -> torch.Tensor:
    """Levels with fewer than 2 values per channel (N·H·W < 2) have no sample std and are skipped."""
    terms = [kdkernels.pearson_feature_loss(fs, ft, reduction="mean")
             for fs, ft in zip(student_features, teacher_features) if fs.shape[0] * fs.shape[2] * fs.shape[3] >= 2]
    if not terms:
        return student_features[0].sum() * 0.0
    return cfg.method_weight * cfg.pkd_weight * torch.stack(terms).sum()


def fgd_level_terms(fs, ft, masks, relation, cfg) -> dict:
    """FGD's terms on one level, unweighted by method_weight: {"feat": α·fg + β·bg (absent without
    masks), "mask": γ·attention loss, "rela": λ·relation loss}, each divided by the batch size N."""
    n = fs.shape[0]
    s_t, c_t = kdkernels.fgd_attention(ft.detach(), temperature=cfg.fgd_temp)
    s_s, c_s = kdkernels.fgd_attention(fs, temperature=cfg.fgd_temp)
    out = {}
    if masks is not None:
        fg, bg = masks
        spatial = (cfg.fgd_alpha * fg + cfg.fgd_beta * bg) * _acc(s_t)
        out["feat"] = kdkernels.separable_weighted_mse(fs, ft, spatial, _acc(c_t), reduction="sum") / n
    out["mask"] = cfg.fgd_gamma * ((_acc(c_s) - _acc(c_t)).abs().sum() + (_acc(s_s) - _acc(s_t)).abs().sum()) / n
    if relation is not None:
        gs, gt = relation
        out["rela"] = cfg.fgd_lambda * (_acc(gs) - _acc(gt)).pow(2).sum() / n
    return out


def fgd_losses(student_features, teacher_features, level_masks, relations, cfg) -> dict:
    """kd_fgd_feat / kd_fgd_mask / kd_fgd_rela summed over levels, × method_weight."""
    sums = {}
    for i, (fs, ft) in enumerate(zip(student_features, teacher_features)):
        masks = None if level_masks is None else level_masks[i]
        for k, v in fgd_level_terms(fs, ft, masks, relations[i], cfg).items():
            sums[k] = sums[k] + v if k in sums else v
    return {f"kd_fgd_{k}": cfg.method_weight * v for k, v in sums.items()}


def _fgd_masks(s, t, cfg, labeled: bool, targets, image_sizes):
    """Per-level (fg, bg): GT boxes for fgd (None on unlabeled batches), teacher confidence for fgd_conf."""
    if cfg.method == "fgd_conf":
        from .distill import level_confidence
        conf = level_confidence(t.cls_logits, t.level_shapes, t.num_anchors)
        return [confidence_masks(c, cfg.feat_threshold) for c in conf]
    if not labeled or targets is None:
        return None
    boxes, valid = pad_boxes(targets, s.cls_logits.device)
    sizes = image_sizes if image_sizes is not None else s.image_sizes
    dtype = _acc(t.features[0]).dtype
    return [fgd_box_masks(boxes, valid, [tuple(sz) for sz in sizes], shape, dtype) for shape in s.level_shapes]


def peer_losses(s, t, adapter, cfg, *, labeled: bool, targets=None, modules=None, image_sizes=None) -> dict:
    """The KD terms of a peer preset for one batch (a dict of scalar tensors). `modules`: the
    FGDRelation of fgd / fgd_conf (used when the student's forward did not already run it);
    `image_sizes`: per image (h, w) of the frame the boxes are in (default s.image_sizes)."""
    if cfg.method not in METHODS or cfg.method == "thesis":
        raise ValueError(f"distill.method must be one of {', '.join(METHODS[1:])} here, got {cfg.method!r}")
    student = s.adapted if s.adapted is not None else adapter(s.features)
    teacher = [f.detach() for f in t.features]
    if cfg.method == "cwd":
        return {"kd_cwd": cwd_loss(student, teacher, cfg)}
    if cfg.method == "pkd":
        return {"kd_pkd": pkd_loss(student, teacher, cfg)}
    relations = s.relation
    if relations is None:
        if modules is None:
            raise ValueError(f"distill.method={cfg.method} needs its GcBlock modules (build_peer_modules)")
        relations = modules(student, teacher)
    masks = _fgd_masks(s, t, cfg, labeled, targets, image_sizes)
    return fgd_losses(student, teacher, masks, relations, cfg)
