"""kdkernels.integrations.ultralytics: the KD terms on tensors captured from real YOLO heads, against
their float64 formulas written out here; the feature term against Ultralytics' own loss_sl2; the
model's loss on labelled and unlabeled batches; teacher checks; config errors; compile."""
import math
import re

import pytest
import torch

pytest.importorskip("ultralytics")
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.distill_model import DistillationModel  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

import kdkernels.integrations.ultralytics as kdu  # noqa: E402
from kdkernels.integrations.ultralytics import losses as L  # noqa: E402
from kdkernels.integrations.ultralytics.config import KDConfig, kd_config  # noqa: E402
from kdkernels.integrations.ultralytics.model import KDDistillationModel, _branches  # noqa: E402
from kdkernels.integrations.ultralytics.unlabeled import InterleavedLoader  # noqa: E402

IMG = 64
NC = 4


def _model(yaml, seed):
    torch.manual_seed(seed)
    m = DetectionModel(yaml, nc=NC, verbose=False)
    m.args = get_cfg(overrides={"imgsz": IMG})
    return m


def _confident(model):
    """Random class-logit layers so the confidences cover [0, 1] like a trained teacher's."""
    g = torch.Generator().manual_seed(5)
    head = model.model[-1]
    for heads in (head.cv3, getattr(head, "one2one_cv3", None) or []):
        for seq in heads:
            seq[-1].weight.data = torch.randn(seq[-1].weight.shape, generator=g) * 0.3
            seq[-1].bias.data = torch.randn(seq[-1].bias.shape, generator=g) - 2.0
    return model


def _pair(student="yolo11n.yaml", teacher="yolo11s.yaml", **kd):
    return KDDistillationModel(_confident(_model(teacher, 1)), _model(student, 2), KDConfig(**kd))


def _batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls = torch.tensor([[0.0], [2.0], [3.0]])
    boxes = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.6, 0.6, 0.4, 0.2], [0.5, 0.4, 0.2, 0.5]])
    return {"img": torch.rand(n, 3, IMG, IMG, generator=g), "cls": cls, "bboxes": boxes,
            "batch_idx": torch.tensor([0.0, 0.0, 1.0])}


def _captured(model, batch):
    """Run the pair once and return the tensors the KD terms see (all float64)."""
    model.train()
    model._teacher_feats.clear(), model._student_feats.clear()
    model.student_model(batch["img"])
    with torch.no_grad():
        model.teacher_model(batch["img"])
    n = len(model.feats_idx) - 1
    s_feats = [model.projector[i](model._student_feats[i]).double() for i in range(n)]
    t_feats = [model._teacher_feats[i].double() for i in range(n)]
    s_br = [(s.double(), b.double()) for s, b in _branches(model._student_feats[n])]
    t_br = [(s.double(), b.double()) for s, b in _branches(model._teacher_feats[n])]
    return s_feats, t_feats, s_br, t_br


# ---------------------------------------------------------------- float64 formulas, written out
def _sigmoid_kl_rows(s, t, T):
    p, q = torch.sigmoid(t / T), torch.sigmoid(s / T)
    kl = p * (torch.log(p) - torch.log(q)) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))
    return T * T * kl.sum(-1)


def _f64_feat(s_feats, t_feats, conf, tau, alpha):
    total = 0.0
    start = 0
    for s, t in zip(s_feats, t_feats):
        h, w = s.shape[-2:]
        c = conf[:, start:start + h * w].reshape(-1, 1, h, w)
        start += h * w
        m = torch.where(c >= tau, c ** alpha, torch.zeros_like(c))
        if m.sum() > 0:  # an empty mask contributes 0 (METHOD.md, edge cases)
            total = total + (m * (s - t) ** 2).sum() / (s.shape[1] * m.sum())
    return total


def _f64_cls(s, t, conf, T):
    rows = _sigmoid_kl_rows(s.transpose(1, 2), t.transpose(1, 2), T)  # (N, A)
    return (conf * rows).sum() / conf.sum()


def _f64_adl(s, t, T, beta, gamma):
    a, b = t.transpose(1, 2) / T, s.transpose(1, 2) / T
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    kl = p * (torch.log(p) - torch.log(q)) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))
    ent = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
    adl = T * T * (1 - torch.exp(-(kl + beta * ent))) ** gamma * kl
    return adl.sum() / max(float((torch.sigmoid(t) ** 1.8).sum()), 1.0)


def _f64_ld(sb, tb, conf, T, tau, R):
    n, _, a = sb.shape
    ps = torch.log_softmax(sb.reshape(n, 4, R, a) / T, dim=2)
    pt = torch.log_softmax(tb.reshape(n, 4, R, a) / T, dim=2)
    rows = T * T * (pt.exp() * (pt - ps)).sum(2)  # (N, 4, A)
    w = (conf * (conf >= tau)).unsqueeze(1).expand(n, 4, a)
    return (w * rows).sum() / w.sum()


def _f64_box(sb, tb, conf, tau):
    m = (conf * (conf >= tau)).unsqueeze(1)  # (N, 1, A)
    return (m * (sb - tb) ** 2).sum() / (4 * m.sum())


@pytest.fixture(scope="module")
def dfl_pair():
    return _pair(kd_feat=1.0, kd_feat_threshold=0.3, kd_feat_power=2.0, kd_T=3.0, kd_ld_T=2.5,
                 kd_ld_threshold=0.2, unlabeled="x")


@pytest.fixture(scope="module")
def e2e_pair():
    return _pair("yolo26n.yaml", "yolo26n.yaml")


def test_each_term_equals_its_float64_formula_dfl_head(dfl_pair):
    cfg = dfl_pair.kd
    s_feats, t_feats, s_br, t_br = _captured(dfl_pair, _batch())
    t_scores = t_br[0][0]
    conf = torch.sigmoid(t_scores).amax(1)  # (N, A), max_k σ(t_k)
    assert 0.2 < float((conf >= 0.3).double().mean()) < 0.9  # the thresholds select part of the anchors
    lab = L.kd_terms(cfg, True, 16, s_feats, t_feats, s_br, t_br, t_scores)
    unl = L.kd_terms(cfg, False, 16, s_feats, t_feats, s_br, t_br, t_scores)
    (s, sb), (t, tb) = s_br[0], t_br[0]
    want = {"kd_feat": cfg.kd_feat * _f64_feat(s_feats, t_feats, conf, 0.3, 2.0),
            "kd_cls": cfg.kd_cls * _f64_cls(s, t, conf, 3.0),
            "kd_ld": cfg.kd_ld * _f64_ld(sb, tb, conf, 2.5, 0.2, 16)}
    assert set(lab) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(lab[k], v, rtol=1e-10, atol=1e-12, msg=k)
    assert set(unl) == {"kd_feat", "kd_unl", "kd_ld"}
    torch.testing.assert_close(unl["kd_unl"], cfg.kd_unl * _f64_adl(s, t, 3.0, 1.0, 2.0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(unl["kd_feat"], lab["kd_feat"])
    assert float(want["kd_feat"]) > 0 and float(want["kd_ld"]) > 0


def test_each_term_equals_its_float64_formula_yolo26_head(e2e_pair):
    """reg_max == 1: box imitation; two branches: the mean over one-to-many and one-to-one."""
    assert e2e_pair.reg_max == 1
    cfg = KDConfig(kd_unl_loss="kl", kd_ld_threshold=0.1)
    s_feats, t_feats, s_br, t_br = _captured(e2e_pair, _batch())
    assert len(s_br) == len(t_br) == 2
    t_conf = (t_br[0][0] + t_br[1][0]) / 2  # Ultralytics: the mean of the teacher's branches
    conf = torch.sigmoid(t_conf).amax(1)
    lab = L.kd_terms(cfg, True, 1, s_feats, t_feats, s_br, t_br, t_conf)
    unl = L.kd_terms(cfg, False, 1, s_feats, t_feats, s_br, t_br, t_conf)
    cls = sum(_f64_cls(s, t, conf, 2.0) for (s, _), (t, _) in zip(s_br, t_br)) / 2
    box = sum(_f64_box(sb, tb, conf, 0.1) for (_, sb), (_, tb) in zip(s_br, t_br)) / 2
    torch.testing.assert_close(lab["kd_cls"], cls, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lab["kd_box"], box, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(unl["kd_unl"], cls, rtol=1e-10, atol=1e-12)  # kd_unl_loss=kl: the same KL
    torch.testing.assert_close(lab["kd_feat"], 6.0 * _f64_feat(s_feats, t_feats, conf, 0.0, 1.0), rtol=1e-10,
                               atol=1e-12)
    assert "kd_ld" not in lab


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_feature_term_equals_ultralytics_loss_sl2(dtype):
    g = torch.Generator().manual_seed(3)
    shapes = [(8, 8), (4, 4), (2, 2)]
    s = [torch.randn(2, 16, h, w, generator=g, dtype=dtype) for h, w in shapes]
    t = [torch.randn(2, 16, h, w, generator=g, dtype=dtype) for h, w in shapes]
    scores = torch.randn(2, NC, sum(h * w for h, w in shapes), generator=g, dtype=dtype)
    # Ultralytics' teacher_scores, as DistillationModel.loss builds them
    parts = torch.split(scores, [h * w for h, w in shapes], dim=-1)
    t_scores = tuple(p.sigmoid().max(dim=1, keepdim=True).values for p in parts)
    theirs = sum(DistillationModel.loss_sl2(None, s[i], t[i], i, t_scores) for i in range(3))
    conf = L.level_confidence(L.anchor_confidence(scores), shapes)
    ours = L.feature_term(s, t, conf, threshold=0.0, power=1.0)
    tol = 1e-10 if dtype == torch.float64 else 1e-6  # they add 1e-9 to C·Σm, we floor Σm at 1e-9
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=0)


def test_model_feature_item_equals_ultralytics_dis_loss():
    """Same teacher, student and projector weights: our kd_feat item is Ultralytics' dis_loss."""
    import copy
    teacher, student = _confident(_model("yolo11s.yaml", 1)), _model("yolo11n.yaml", 2)
    theirs = DistillationModel(copy.deepcopy(teacher), copy.deepcopy(student))  # (hooks are per module)
    ours = KDDistillationModel(teacher, student, KDConfig(kd_cls=0.0, kd_ld=0.0))
    theirs.projector.load_state_dict(ours.projector.state_dict())
    batch = _batch()
    ours.train(), theirs.train()
    _, items = ours.loss(dict(batch))
    _, their_items = theirs.loss(dict(batch))
    torch.testing.assert_close(items["kd_feat"], their_items["dis_loss"].reshape(()), rtol=1e-5, atol=0)
    for k in ("box_loss", "cls_loss", "dfl_loss"):
        torch.testing.assert_close(items[k], their_items[k])


def test_unlabeled_batch_has_no_gt_loss_and_moves_only_through_label_free_terms(monkeypatch):
    model = _pair(teacher="yolo11n.yaml", unlabeled="x")
    model.train()
    batch = dict(_batch(), unlabeled=True)

    def no_gt(*a, **k):
        raise AssertionError("the detection (ground-truth) loss ran on an unlabeled batch")
    monkeypatch.setattr(model.student_model, "loss", no_gt)
    loss, items = model.loss(batch)
    assert [float(items[k]) for k in ("box_loss", "cls_loss", "dfl_loss")] == [0.0, 0.0, 0.0]
    assert float(items["kd_cls"]) == 0.0 and float(items["kd_unl"]) > 0
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
    # the same batch with other (or no) labels gives the same loss: no label is read
    loss2, _ = model.loss(dict(batch, cls=torch.zeros(0, 1), bboxes=torch.zeros(0, 4), batch_idx=torch.zeros(0)))
    torch.testing.assert_close(loss2, loss)
    # the gradient is that of N · (kd_feat + kd_unl + kd_ld) alone
    kd = model.kd_losses(labeled=False)
    assert set(kd) == {"kd_feat", "kd_unl", "kd_ld"}
    want = torch.autograd.grad(sum(kd.values()) * batch["img"].shape[0], params, allow_unused=True)
    for g, w in zip(grads, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w)
    assert all(g is None for p, g in zip(params, grads) if p is model.teacher_model)  # teacher frozen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_under_autocast_matches_fp32(dtype):
    """AMP: under autocast the head outputs are half precision; the KD terms stay close to fp32.
    (Ultralytics enables AMP on CUDA only; this runs the same autocast region on the CPU.)"""
    model = _pair(teacher="yolo11n.yaml", unlabeled="x")
    model.train()
    batch = _batch()
    torch.manual_seed(0)
    _, ref = model.loss(dict(batch))
    with torch.autocast("cpu", dtype=dtype):
        loss, items = model.loss(dict(batch))
        _, unl = model.loss(dict(batch, unlabeled=True))
    assert torch.isfinite(loss).all() and model._student_feats[0].dtype == dtype
    for k in ("kd_feat", "kd_cls", "kd_ld"):
        torch.testing.assert_close(items[k], ref[k], rtol=0.05, atol=1e-3, msg=k)
    assert torch.isfinite(unl["kd_unl"]) and float(unl["kd_unl"]) > 0


def test_zero_weight_turns_a_term_off():
    model = _pair(teacher="yolo11n.yaml", kd_feat=0.0, kd_ld=0.0)
    assert model.item_names() == ["kd_cls"]
    model.train()
    _, items = model.loss(_batch())
    assert set(items) == {"box_loss", "cls_loss", "dfl_loss", "kd_cls"}


def test_teacher_with_other_feature_levels_is_an_error():
    with pytest.raises(ValueError, match=r"distill_model: .*4 feature levels.*student's has 3"):
        KDDistillationModel(_model("yolov8n-p2.yaml", 1), _model("yolo11n.yaml", 2), KDConfig())


def test_teacher_with_other_reg_max_is_an_error():
    with pytest.raises(ValueError, match=r"distill_model: .*reg_max=1.*reg_max=16.*kd_ld=0"):
        KDDistillationModel(_model("yolo26n.yaml", 1), _model("yolo11n.yaml", 2), KDConfig())
    KDDistillationModel(_model("yolo26n.yaml", 1), _model("yolo11n.yaml", 2), KDConfig(kd_ld=0.0))  # LD off: fine


def test_missing_teacher_file_names_distill_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="distill_model="):
        KDDistillationModel(str(tmp_path / "none.pt"), _model("yolo11n.yaml", 2), KDConfig())


@pytest.mark.parametrize("key,value,match", [
    ("kd_T", 0, "'kd_T=0.0' must be > 0"), ("kd_feat", -1, "'kd_feat=-1.0' must be >= 0"),
    ("kd_unl_loss", "focal", "'kd_unl_loss='focal'' must be 'adl' or 'kl'"),
    ("kd_ld_T", "hot", "'kd_ld_T='hot'' must be a number"), ("kd_cls_conf", 3, "'kd_cls_conf=3' must be True"),
    ("unlabeled", "/no/such/dir", "'unlabeled=/no/such/dir' must be a folder"),
    ("kd_adl_gamma", float("nan"), "'kd_adl_gamma=nan' must be finite"),
])
def test_config_errors_name_the_key(key, value, match):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=match.replace("(", r"\(")):
        kd_config({key: value})


@pytest.mark.parametrize("ratio,n,want", [(0.5, 4, "LLULLU"), (1.0, 3, "LULULU"), (2.0, 2, "LUULUU"),
                                          (0.0, 3, "LLL"), (0.34, 3, "LLLU")])
def test_interleaved_loader_order_and_length(ratio, n, want):
    loader = InterleavedLoader(list("L" * n), list("UU"), ratio)
    assert "".join(loader) == want and len(loader) == len(want)


def test_interleaved_loader_set_epoch_reaches_both_samplers():
    class Sampler(list):
        epoch = None

        def set_epoch(self, e):
            self.epoch = e

    class Loader(list):
        def __init__(self, items):
            super().__init__(items)
            self.sampler = Sampler(items)
    lab, unl = Loader("LLLL"), Loader("UU")
    loader = InterleavedLoader(lab, unl, 0.5)
    loader.sampler.set_epoch(3)
    assert lab.sampler.epoch == unl.sampler.epoch == 3 and len(loader.sampler) == 4


@pytest.mark.parametrize("pair_name,labeled", [("dfl_pair", True), ("dfl_pair", False), ("e2e_pair", True)])
def test_kd_terms_compile_fullgraph_no_graph_break(pair_name, labeled, request):
    torch._dynamo.reset()
    model = request.getfixturevalue(pair_name)
    s_feats, t_feats, s_br, t_br = (x for x in _captured(model, _batch()))
    s_feats = [f.float().detach().requires_grad_() for f in s_feats]
    s_br = [(s.float().detach().requires_grad_(), b.float().detach().requires_grad_()) for s, b in s_br]
    t_feats = [f.float() for f in t_feats]
    t_br = [(s.float(), b.float()) for s, b in t_br]
    t_conf = t_br[0][0]
    args = (model.kd, labeled, model.reg_max, s_feats, t_feats, s_br, t_br, t_conf)
    eager = L.kd_terms(*args)
    compiled = torch.compile(L.kd_terms, fullgraph=True, backend="aot_eager")(*args)  # a break raises
    assert set(eager) == set(compiled)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6)
    leaves = s_feats + [x for pair in s_br for x in pair]
    g_e = torch.autograd.grad(sum(eager.values()), leaves, allow_unused=True)
    g_c = torch.autograd.grad(sum(compiled.values()), leaves, allow_unused=True)
    for a, b in zip(g_e, g_c):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_package_sets_yolo_offline():
    import os
    assert os.environ.get("YOLO_OFFLINE") == "1" or "YOLO_OFFLINE" in os.environ
    assert kdu.KD_DEFAULTS["offline"] is True and not math.isnan(kdu.KD_DEFAULTS["kd_T"])


def test_unlabeled_with_every_unlabeled_term_off_is_an_error(tmp_path):
    """Unlabeled batches would have no loss at all (the backward failed at the first one)."""
    off = {"unlabeled": str(tmp_path), "kd_feat": 0, "kd_unl": 0, "kd_ld": 0}
    with pytest.raises(ValueError, match=r"'unlabeled=.*' with kd_feat=0, kd_unl=0, kd_ld=0: no term runs"):
        kd_config(off)
    with pytest.raises(ValueError, match="no term runs on unlabeled batches"):
        kd_config({**off, "kd_cls": 0})  # every weight 0
    assert kd_config({**off, "kd_ld": 0.5}).kd_ld == 0.5  # one term left on unlabeled batches: fine
    assert kd_config({**off, "unlabeled_ratio": 0}).unlabeled_ratio == 0  # no unlabeled batch: fine
    assert kd_config({**off, "unlabeled": None}).kd_feat == 0  # labelled batches keep the detection loss


def test_teacher_that_is_not_a_yolo_model_names_distill_model(tmp_path):
    linear, garbage = tmp_path / "linear.pt", tmp_path / "garbage.pt"
    torch.save(torch.nn.Linear(2, 2), linear)
    garbage.write_bytes(b"not a checkpoint")
    for path in (linear, garbage):
        with pytest.raises(ValueError, match=rf"distill_model={re.escape(str(path))}: cannot load it as an Ultra"):
            KDDistillationModel(str(path), _model("yolo11n.yaml", 2), KDConfig())
    with pytest.raises(ValueError, match="distill_model=Linear: holds a Linear, not an Ultralytics detection model"):
        KDDistillationModel(torch.nn.Linear(2, 2), _model("yolo11n.yaml", 2), KDConfig())
