"""The trainer's distillation terms (kdkernels/train/distill.py) on hand-built tensors: where the
teacher is confident they act, where it is not they are exactly zero, and the values are the
formulas of METHOD.md's trainer section."""
import dataclasses

import pytest
import torch

pytest.importorskip("torchvision")

import kdkernels  # noqa: E402
from kdkernels import reference as ref  # noqa: E402
from kdkernels.train.config import DistillConfig  # noqa: E402
from kdkernels.train.distill import FeatureAdapter, distill_losses, gt_box_masks, level_confidence  # noqa: E402
from kdkernels.train.models import DetectorOutputs  # noqa: E402

HI, LO = 6.0, -6.0            # teacher logits: σ(6) ≈ 0.9975 (confident), σ(−6) ≈ 0.0025 (not)
SHAPES = [(2, 2), (1, 1)]     # two FPN levels, A = 1 anchor per location → 5 anchors per image
N, C, K = 2, 3, 2


def _teacher_logits(confident):
    """confident: (N, 5) bool → (N, 5, K) logits with class 0 at HI where confident, all LO elsewhere."""
    t = torch.full((N, 5, K), LO)
    t[..., 0] = torch.where(confident, torch.tensor(HI), torch.tensor(LO))
    return t


def _outputs(features, cls, box, adapted=None):
    return DetectorOutputs(features, cls, box, SHAPES, 1, {}, [(16, 16)] * N, adapted)


def _features(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, C, h, w, generator=g) for h, w in SHAPES]


def _per_anchor(features):
    """Level features → (N, 5, C) in the anchor order of the heads (level by level, row-major)."""
    return torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)


def _from_per_anchor(x):
    out, start = [], 0
    for h, w in SHAPES:
        out.append(x[:, start:start + h * w].transpose(1, 2).reshape(N, -1, h, w))
        start += h * w
    return out


CONFIDENT = torch.tensor([[True, False, False, True, False],
                          [False, False, True, False, True]])


def _setup(student_differs_where):
    """Teacher and student equal except at the anchors selected by `student_differs_where` (N, 5)."""
    t_feat = _features(0)
    t_cls = _teacher_logits(CONFIDENT)
    t_box = torch.randn(N, 5, 4, generator=torch.Generator().manual_seed(1))
    diff = student_differs_where[..., None].float()
    s_feat = _from_per_anchor(_per_anchor(t_feat) + diff * 0.7)
    s_cls = t_cls + diff * torch.tensor([-3.0, 2.0])
    s_box = t_box + diff * 0.5
    s_feat = [f.clone().requires_grad_() for f in s_feat]
    s_cls, s_box = s_cls.clone().requires_grad_(), s_box.clone().requires_grad_()
    return _outputs(s_feat, s_cls, s_box), _outputs(t_feat, t_cls, t_box)


CFG = DistillConfig(temperature=2.0, kl_weight=1.0, feat_weight=1.0, feat_threshold=0.5, loc_weight=1.0,
                    loc_threshold=0.5)
IDENTITY = FeatureAdapter(C, C)


def test_level_confidence_is_max_over_anchors_and_classes():
    t_cls = _teacher_logits(CONFIDENT)
    maps = level_confidence(t_cls, SHAPES, 1)
    assert [m.shape for m in maps] == [(N, 2, 2), (N, 1, 1)]
    per_anchor = torch.cat([m.flatten(1) for m in maps], 1)
    assert torch.allclose(per_anchor, torch.sigmoid(t_cls).amax(-1))
    # two anchors per location: the map takes the max of both
    two = torch.tensor([[[LO, LO], [HI, LO], [LO, LO], [LO, LO]]])  # (1, 2·2, K): 2 locations × A = 2
    m = level_confidence(two, [(1, 2)], 2)[0]
    assert torch.allclose(m, torch.sigmoid(torch.tensor([[[HI, LO]]])))


def test_terms_are_exactly_zero_where_the_teacher_is_not_confident():
    """The student differs from the teacher only at unconfident anchors: feature and box imitation
    are exactly zero and give exactly zero gradient; the KL is weighted by the (tiny) confidence."""
    s, t = _setup(~CONFIDENT)
    losses = distill_losses(s, t, IDENTITY, CFG, labeled=True)
    assert set(losses) == {"kd_kl", "kd_feat", "kd_loc"}
    assert losses["kd_feat"].item() == 0.0
    assert losses["kd_loc"].item() == 0.0
    (losses["kd_feat"] + losses["kd_loc"]).backward()
    assert all(f.grad is None or not f.grad.any() for f in s.features)
    assert s.bbox_regression.grad is None or not s.bbox_regression.grad.any()
    conf = torch.sigmoid(torch.tensor(HI))
    assert 0 < losses["kd_kl"].item() < 1e-2 * conf  # only the low-confidence rows differ


def test_terms_are_nonzero_where_the_teacher_is_confident():
    s, t = _setup(CONFIDENT)
    losses = distill_losses(s, t, IDENTITY, CFG, labeled=True)
    for k in ("kd_kl", "kd_feat", "kd_loc"):
        assert losses[k].item() > 0.1, (k, losses[k])
    sum(losses.values()).backward()
    # gradient only at the confident anchors, for features and boxes
    g_feat = _per_anchor([f.grad for f in s.features]).abs().sum(-1)
    g_box = s.bbox_regression.grad.abs().sum(-1)
    for g in (g_feat, g_box):
        assert (g[CONFIDENT] > 0).all() and (g[~CONFIDENT] == 0).all()


def test_values_match_the_method_formulas():
    s, t = _setup(torch.ones(N, 5, dtype=torch.bool))
    cfg = dataclasses.replace(CFG, kl_weight=0.5, feat_weight=2.0, loc_weight=3.0, feat_power=2.0)
    losses = distill_losses(s, t, IDENTITY, cfg, labeled=True)
    cls_s, cls_t = s.cls_logits.detach().reshape(-1, K), t.cls_logits.reshape(-1, K)
    conf = torch.sigmoid(cls_t).amax(-1)
    kl = ref.soft_label_kl(cls_s, cls_t, temperature=2.0, mode="sigmoid", weight=conf)
    feat = sum(ref.confidence_masked_mse(fs.detach(), ft, cm, threshold=0.5, power=2.0)
               for fs, ft, cm in zip(s.features, t.features, level_confidence(t.cls_logits, SHAPES, 1)))
    # box imitation by hand: mean over the 4 deltas of conf·[conf ≥ τ]·(s − t)², normalised by Σ mask
    m = conf.reshape(N, 5) * (conf.reshape(N, 5) >= 0.5)
    loc = (m[..., None] * (s.bbox_regression.detach() - t.bbox_regression) ** 2).sum() / (4 * m.sum())
    torch.testing.assert_close(losses["kd_kl"].detach(), 0.5 * kl, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses["kd_feat"].detach(), 2.0 * feat, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses["kd_loc"].detach(), 3.0 * loc, rtol=1e-5, atol=1e-7)


def test_kl_rows_weighted_by_teacher_confidence():
    """Gradient of the KD-KL at an anchor ∝ the teacher's confidence there (METHOD: weight=conf_t)."""
    s, t = _setup(torch.ones(N, 5, dtype=torch.bool))
    cfg = dataclasses.replace(CFG, feat_weight=0.0, loc_weight=0.0)
    losses = distill_losses(s, t, IDENTITY, cfg, labeled=True)
    losses["kd_kl"].backward()
    g = s.cls_logits.grad.abs().sum(-1)                               # (N, 5)
    # same student/teacher logit gap everywhere; the sigmoid-KL gradient is T·(σ(s/T) − σ(t/T))·w/Σw
    T = cfg.temperature
    per = (torch.sigmoid(s.cls_logits.detach() / T) - torch.sigmoid(t.cls_logits / T)).abs().sum(-1) * T
    conf = torch.sigmoid(t.cls_logits).amax(-1)
    torch.testing.assert_close(g, per * conf / conf.sum(), rtol=1e-4, atol=1e-8)
    off = dataclasses.replace(cfg, kl_confidence_weighting=False)
    s2, t2 = _setup(torch.ones(N, 5, dtype=torch.bool))
    distill_losses(s2, t2, IDENTITY, off, labeled=True)["kd_kl"].backward()
    torch.testing.assert_close(s2.cls_logits.grad.abs().sum(-1), per / conf.numel(), rtol=1e-4, atol=1e-8)


def test_unlabeled_batch_uses_adl_and_no_kl():
    s, t = _setup(CONFIDENT)
    losses = distill_losses(s, t, IDENTITY, CFG, labeled=False)
    assert set(losses) == {"kd_unlabeled", "kd_feat", "kd_loc"}
    assert losses["kd_unlabeled"].item() > 0
    cls_s, cls_t = s.cls_logits.detach().reshape(-1, K), t.cls_logits.reshape(-1, K)
    adl = ref.adaptive_distillation_loss(cls_s, cls_t, temperature=2.0, beta=1.0, gamma=2.0, mode="sigmoid",
                                         reduction="sum")
    norm = torch.sigmoid(cls_t).pow(1.8).sum().clamp_min(1.0)
    torch.testing.assert_close(losses["kd_unlabeled"].detach(), adl / norm, rtol=1e-5, atol=1e-7)
    # identical student and teacher: every term is exactly zero
    s0, t0 = _setup(torch.zeros(N, 5, dtype=torch.bool))
    for v in distill_losses(s0, t0, IDENTITY, CFG, labeled=False).values():
        assert v.item() == 0.0
    code = distill_losses(s, t, IDENTITY, dataclasses.replace(CFG, adl_variant="code"), labeled=False)
    assert code["kd_unlabeled"].item() > 0
    kl = distill_losses(s, t, IDENTITY, dataclasses.replace(CFG, unlabeled_loss="kl"), labeled=False)
    assert kl["kd_unlabeled"].item() > 0


def test_zero_weights_skip_terms_and_nothing_reaches_the_teacher():
    s, t = _setup(CONFIDENT)
    t_cls = t.cls_logits.clone().requires_grad_()
    t = dataclasses.replace(t, cls_logits=t_cls)
    cfg = dataclasses.replace(CFG, feat_weight=0.0, loc_weight=0.0)
    losses = distill_losses(s, t, IDENTITY, cfg, labeled=True)
    assert set(losses) == {"kd_kl"}
    losses["kd_kl"].backward()
    assert t_cls.grad is None or not t_cls.grad.any()


def test_gt_region_baseline():
    boxes = [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]])}, {"boxes": torch.zeros(0, 4)}]
    masks = gt_box_masks(boxes, SHAPES, (16, 16))
    assert masks[0][0].tolist() == [[1.0, 0.0], [0.0, 0.0]]   # centre (4, 4) inside, (12, ·) outside
    assert not masks[0][1].any() and masks[1][0].any()           # the 1×1 level's centre (8, 8) is inside
    s, t = _setup(torch.ones(N, 5, dtype=torch.bool))
    gt = dataclasses.replace(CFG, feat_region="gt", kl_weight=0.0, loc_weight=0.0)
    assert distill_losses(s, t, IDENTITY, gt, labeled=True, targets=boxes)["kd_feat"].item() > 0
    assert "kd_feat" not in distill_losses(s, t, IDENTITY, gt, labeled=False)  # no boxes, no region


def test_adapter_maps_student_channels_to_teacher_channels():
    a = FeatureAdapter(3, 5)
    out = a([torch.randn(1, 3, 2, 2)])
    assert out[0].shape == (1, 5, 2, 2)
    assert isinstance(FeatureAdapter(4, 4).proj, torch.nn.Identity)


def test_kdkernels_ops_are_the_ones_called(monkeypatch):
    """Every KD term goes through the public kdkernels ops (the fused kernels), not a re-implementation."""
    called = []
    for name in ("soft_label_kl", "confidence_masked_mse", "adaptive_distillation_loss"):
        orig = getattr(kdkernels, name)
        monkeypatch.setattr(kdkernels, name, lambda *a, _o=orig, _n=name, **k: (called.append(_n), _o(*a, **k))[1])
    s, t = _setup(CONFIDENT)
    distill_losses(s, t, IDENTITY, CFG, labeled=True)
    distill_losses(s, t, IDENTITY, CFG, labeled=False)
    assert {"soft_label_kl", "confidence_masked_mse", "adaptive_distillation_loss"} <= set(called)
