"""The trainer's peer presets (kdkernels/train/peers.py, distill.method): each preset's terms equal an
independent float64 transcription of the peer's published code (MMRazor ChannelWiseDivergence and
PKDLoss, yzd-v/FGD FeatureLoss) on seeded random tensors; FGD's vectorised masks equal FGD's per-box
loop; and tiny `kdkernels-train distill` runs for every preset, with an fgd run that crashes and
resumes to the same weights (GcBlocks included) and unlabeled batches for the label-free presets."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchvision")

import kdkernels  # noqa: E402
from kdkernels.train import peers, trainer  # noqa: E402
from kdkernels.train.config import ConfigError, DistillConfig, load_config  # noqa: E402
from kdkernels.train.distill import FeatureAdapter, distill_losses, level_confidence  # noqa: E402
from kdkernels.train.models import DetectorOutputs  # noqa: E402
from peer_transcriptions import fgd_fea_loss, fgd_get_attention, mmrazor_cwd, mmrazor_pkd  # noqa: E402

N, C, K, A = 2, 6, 3, 1
SHAPES = [(8, 8), (4, 5), (2, 2), (1, 1)]     # FPN levels (one not square, one 1×1)
IMAGE = (64, 72)                               # (h, w) of the images the boxes are in
BOXES = [torch.tensor([[0.0, 0.0, 20.0, 30.0], [30.5, 9.0, 72.0, 64.0], [40.0, 40.0, 40.3, 41.0]]),
         torch.zeros(0, 4)]                    # a full-border box, a tiny box, an empty image


# ----------------------------------------------------------------------------- transcriptions (float64)


def fgd_loop_masks(gt_bboxes, img_shapes, shape, dtype=torch.float32):
    """yzd-v/FGD FeatureLoss.forward's mask loop (per image, per box)."""
    n, (h, w) = len(gt_bboxes), shape
    mask_fg, mask_bg = torch.zeros(n, h, w, dtype=dtype), torch.ones(n, h, w, dtype=dtype)
    for i in range(n):
        new_boxxes = torch.ones_like(gt_bboxes[i])
        new_boxxes[:, 0] = gt_bboxes[i][:, 0] / img_shapes[i][1] * w
        new_boxxes[:, 2] = gt_bboxes[i][:, 2] / img_shapes[i][1] * w
        new_boxxes[:, 1] = gt_bboxes[i][:, 1] / img_shapes[i][0] * h
        new_boxxes[:, 3] = gt_bboxes[i][:, 3] / img_shapes[i][0] * h
        wmin, wmax = torch.floor(new_boxxes[:, 0]).int(), torch.ceil(new_boxxes[:, 2]).int()
        hmin, hmax = torch.floor(new_boxxes[:, 1]).int(), torch.ceil(new_boxxes[:, 3]).int()
        area = 1.0 / (hmax.view(1, -1) + 1 - hmin.view(1, -1)) / (wmax.view(1, -1) + 1 - wmin.view(1, -1))
        for j in range(len(gt_bboxes[i])):
            mask_fg[i][hmin[j]:hmax[j] + 1, wmin[j]:wmax[j] + 1] = \
                torch.maximum(mask_fg[i][hmin[j]:hmax[j] + 1, wmin[j]:wmax[j] + 1], area[0][j])
        mask_bg[i] = torch.where(mask_fg[i] > 0, 0, 1)
        if torch.sum(mask_bg[i]):
            mask_bg[i] /= torch.sum(mask_bg[i])
    return mask_fg, mask_bg



def fgd_gc(x, gc):
    """FGD's spatial_pool + channel_add_conv with the parameters of our GcBlock `gc`."""
    batch, channel, height, width = x.size()
    input_x = x.view(batch, channel, height * width).unsqueeze(1)
    context_mask = F.conv2d(x, gc.conv_mask.weight, gc.conv_mask.bias).view(batch, 1, height * width)
    context_mask = F.softmax(context_mask, dim=2).unsqueeze(-1)
    context = torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)
    conv1, ln, _, conv2 = gc.channel_add
    y = F.conv2d(context, conv1.weight, conv1.bias)
    y = F.relu(F.layer_norm(y, ln.normalized_shape, ln.weight, ln.bias, ln.eps))
    return x + F.conv2d(y, conv2.weight, conv2.bias)


def fgd_feature_loss(preds_S, preds_T, mask_fg, mask_bg, gc_s, gc_t, cfg):
    """yzd-v/FGD FeatureLoss.forward after the masks: (α·fg + β·bg, γ·mask loss, λ·relation loss)."""
    S_t, C_t = fgd_get_attention(preds_T, cfg.fgd_temp)
    S_s, C_s = fgd_get_attention(preds_S, cfg.fgd_temp)
    out = {}
    if mask_fg is not None:
        fg_loss, bg_loss = fgd_fea_loss(preds_S, preds_T, mask_fg, mask_bg, C_t, S_t)
        out["feat"] = cfg.fgd_alpha * fg_loss + cfg.fgd_beta * bg_loss
    out["mask"] = cfg.fgd_gamma * (torch.sum(torch.abs(C_s - C_t)) / len(C_s) + torch.sum(torch.abs(S_s - S_t)) / len(S_s))
    out["rela"] = cfg.fgd_lambda * F.mse_loss(fgd_gc(preds_S, gc_s), fgd_gc(preds_T, gc_t), reduction="sum") / len(preds_S)
    return out


# ----------------------------------------------------------------------------- captured random tensors
def _outputs(features, cls, seed=0):
    box = torch.randn(N, cls.shape[1], 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return DetectorOutputs(features, cls, box, SHAPES, A, {}, [IMAGE] * N)


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    t_feat = [torch.randn(N, C, h, w, generator=g, dtype=torch.float64) for h, w in SHAPES]
    s_feat = [(f + 0.7 * torch.randn(f.shape, generator=g, dtype=torch.float64)).requires_grad_() for f in t_feat]
    total = sum(h * w for h, w in SHAPES) * A
    t_cls = 3 * torch.randn(N, total, K, generator=g, dtype=torch.float64)
    s_cls = torch.randn(N, total, K, generator=g, dtype=torch.float64)
    return _outputs(s_feat, s_cls), _outputs(t_feat, t_cls)


IDENTITY = FeatureAdapter(C, C)
TARGETS = [{"boxes": b} for b in BOXES]


def _relation_modules(seed=1):
    """FGD's GcBlocks in float64 with every parameter random (the last conv too, zero at init)."""
    torch.manual_seed(seed)
    mods = peers.FGDRelation(C, len(SHAPES)).double()
    with torch.no_grad():
        for p in mods.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return mods


def _cfg(method, **kw):
    return DistillConfig(method=method, method_weight=2.0, **kw)


def _close(a, b, what):
    torch.testing.assert_close(a.detach().double(), b.detach().double(), rtol=1e-9, atol=1e-12, msg=what)


def test_cwd_equals_mmrazor():
    s, t = _setup()
    cfg = _cfg("cwd")
    losses = distill_losses(s, t, IDENTITY, cfg, labeled=True, targets=TARGETS)
    assert set(losses) == {"kd_cwd"}
    want = sum(mmrazor_cwd(fs, ft, cfg.cwd_tau, cfg.cwd_weight) for fs, ft in zip(s.features, t.features))
    _close(losses["kd_cwd"], 2.0 * want, "cwd")
    tau4 = dataclasses.replace(cfg, cwd_tau=4.0)
    want4 = sum(mmrazor_cwd(fs, ft, 4.0, cfg.cwd_weight) for fs, ft in zip(s.features, t.features))
    _close(distill_losses(s, t, IDENTITY, tau4, labeled=False)["kd_cwd"], 2.0 * want4, "cwd tau 4")


def test_pkd_equals_mmrazor_and_skips_levels_without_a_std():
    s, t = _setup()
    cfg = _cfg("pkd")
    losses = distill_losses(s, t, IDENTITY, cfg, labeled=False)
    assert set(losses) == {"kd_pkd"}
    want = sum(mmrazor_pkd(fs, ft, cfg.pkd_weight) for fs, ft in zip(s.features, t.features))
    _close(losses["kd_pkd"], 2.0 * want, "pkd")
    one = DetectorOutputs([f[:1] for f in s.features], s.cls_logits[:1], s.bbox_regression[:1], SHAPES, A, {}, [IMAGE])
    one_t = DetectorOutputs([f[:1] for f in t.features], t.cls_logits[:1], t.bbox_regression[:1], SHAPES, A, {}, [IMAGE])
    # batch 1: the 1×1 level has one value per channel (no unbiased std) and is left out
    want1 = sum(mmrazor_pkd(fs[:1], ft[:1], cfg.pkd_weight) for fs, ft in zip(s.features[:3], t.features[:3]))
    _close(distill_losses(one, one_t, IDENTITY, cfg, labeled=True)["kd_pkd"], 2.0 * want1, "pkd batch 1")


def test_fgd_equals_the_official_feature_loss():
    s, t = _setup()
    mods = _relation_modules()
    cfg = _cfg("fgd", fgd_alpha=0.3, fgd_beta=0.2, fgd_gamma=0.1, fgd_lambda=0.05)  # terms of one size
    losses = distill_losses(s, t, IDENTITY, cfg, labeled=True, targets=TARGETS, peer_modules=mods)
    assert set(losses) == {"kd_fgd_feat", "kd_fgd_mask", "kd_fgd_rela"}
    want = {"feat": 0.0, "mask": 0.0, "rela": 0.0}
    for lvl, (fs, ft) in enumerate(zip(s.features, t.features)):
        fg, bg = fgd_loop_masks(BOXES, [IMAGE] * N, SHAPES[lvl], dtype=torch.float64)
        for k, v in fgd_feature_loss(fs, ft, fg, bg, mods.student[lvl], mods.teacher[lvl], cfg).items():
            want[k] = want[k] + v
    for k, v in want.items():
        _close(losses[f"kd_fgd_{k}"], 2.0 * v, f"fgd {k}")
    # gradients reach the student features and both sides' GcBlocks, never the teacher features
    sum(losses.values()).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s.features[:3])
    for side in (mods.student, mods.teacher):
        assert all(p.grad is not None for p in side.parameters())
        assert side[0].channel_add[-1].bias.grad.abs().sum() > 0
    assert mods.student[0].conv_mask.weight.grad.abs().sum() > 0
    # unlabeled batch: no boxes, so no feature term; attention and relation terms stay
    unl = distill_losses(s, t, IDENTITY, cfg, labeled=False, peer_modules=mods)
    assert set(unl) == {"kd_fgd_mask", "kd_fgd_rela"}
    _close(unl["kd_fgd_mask"], losses["kd_fgd_mask"], "unlabeled mask term")


def test_fgd_conf_uses_the_teacher_confidence_as_foreground():
    s, t = _setup()
    mods = _relation_modules()
    cfg = _cfg("fgd_conf", fgd_alpha=0.3, fgd_beta=0.2, fgd_gamma=0.1, fgd_lambda=0.05, feat_threshold=0.6)
    conf = level_confidence(t.cls_logits, SHAPES, A)
    want = {"feat": 0.0, "mask": 0.0, "rela": 0.0}
    for lvl, (fs, ft) in enumerate(zip(s.features, t.features)):
        fg = conf[lvl] * (conf[lvl] >= 0.6)
        bg = (1 - fg) / (1 - fg).sum((1, 2), keepdim=True)
        for k, v in fgd_feature_loss(fs, ft, fg, bg, mods.student[lvl], mods.teacher[lvl], cfg).items():
            want[k] = want[k] + v
    for labeled in (True, False):  # label-free: the same terms on unlabeled batches
        losses = distill_losses(s, t, IDENTITY, cfg, labeled=labeled, targets=TARGETS if labeled else None,
                                peer_modules=mods)
        for k, v in want.items():
            _close(losses[f"kd_fgd_{k}"], 2.0 * v, f"fgd_conf {k} (labeled={labeled})")


def test_peer_presets_leave_out_the_thesis_terms_unless_asked():
    s, t = _setup()
    cfg = _cfg("cwd", peer_thesis_terms=["kl", "loc"])
    assert set(distill_losses(s, t, IDENTITY, cfg, labeled=True)) == {"kd_cwd", "kd_kl", "kd_loc"}
    assert set(distill_losses(s, t, IDENTITY, cfg, labeled=False)) == {"kd_cwd", "kd_loc"}
    thesis = distill_losses(s, t, IDENTITY, DistillConfig(), labeled=True)
    assert set(thesis) == {"kd_kl", "kd_feat", "kd_loc"}
    with pytest.raises(ValueError, match="GcBlock"):
        distill_losses(s, t, IDENTITY, _cfg("fgd"), labeled=True, targets=TARGETS)


def test_the_kdkernels_ops_are_the_ones_called(monkeypatch):
    called = []
    for name in ("channel_wise_divergence", "pearson_feature_loss", "separable_weighted_mse", "fgd_attention"):
        orig = getattr(kdkernels, name)
        monkeypatch.setattr(kdkernels, name, lambda *a, _o=orig, _n=name, **k: (called.append(_n), _o(*a, **k))[1])
    s, t = _setup()
    mods = _relation_modules()
    for method in ("cwd", "pkd", "fgd", "fgd_conf"):
        distill_losses(s, t, IDENTITY, _cfg(method), labeled=True, targets=TARGETS, peer_modules=mods)
    assert set(called) == {"channel_wise_divergence", "pearson_feature_loss", "separable_weighted_mse",
                           "fgd_attention"}


# ----------------------------------------------------------------------------- masks: vectorised == loop
def _random_boxes(gen, count, h, w):
    wh = torch.rand(count, 2, generator=gen) * torch.tensor([w, h]) * 0.6
    xy = torch.rand(count, 2, generator=gen) * (torch.tensor([w, h]) - wh)
    boxes = torch.cat([xy, xy + wh], 1)
    kind = torch.randint(0, 5, (count,), generator=gen)
    boxes[kind == 0, 0] = 0.0                                   # touching the left border
    boxes[kind == 1, 2] = float(w)                              # ... the right border
    boxes[kind == 2, 1], boxes[kind == 2, 3] = 0.0, float(h)    # full height
    tiny = kind == 3                                            # sub-pixel and zero-size boxes
    boxes[tiny, 2] = boxes[tiny, 0] + torch.rand(int(tiny.sum()), generator=gen) * 0.5
    boxes[tiny, 3] = boxes[tiny, 1]
    return boxes


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_masks_equal_the_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 4
    sizes = [(64, 64), (60, 90), (64, 64), (33, 47)]
    counts = [int(c) for c in torch.randint(0, 12, (n,), generator=gen)]
    counts[seed % n] = 0                                        # an empty image in every batch
    gt = [_random_boxes(gen, c, h, w) for c, (h, w) in zip(counts, sizes)]
    gt[1] = torch.cat([gt[1], torch.tensor([[0.0, 0.0, 90.0, 60.0], [8.0, 8.0, 16.0, 16.0]])])  # whole image, on cells
    padded, valid = peers.pad_boxes([{"boxes": b} for b in gt])
    for shape in [(8, 8), (8, 12), (4, 6), (2, 3), (1, 1), (13, 7)]:
        fg, bg = peers.fgd_box_masks(padded, valid, sizes, shape)
        fg_ref, bg_ref = fgd_loop_masks(gt, sizes, shape)
        assert torch.equal(fg, fg_ref), (seed, shape)
        assert torch.equal(bg, bg_ref), (seed, shape)


def test_masks_of_a_batch_without_boxes():
    padded, valid = peers.pad_boxes([{"boxes": torch.zeros(0, 4)}] * 3)
    assert padded.shape == (3, 0, 4)
    fg, bg = peers.fgd_box_masks(padded, valid, [(64, 64)] * 3, (4, 4))
    assert not fg.any() and torch.equal(bg, torch.full((3, 4, 4), 1 / 16))


def test_benchmark_loop_is_fgds_loop(tmp_path):
    from benchmarks import fgd_masks
    gen = torch.Generator().manual_seed(3)
    gt = fgd_masks.random_boxes(3, 7, 96, gen)
    for shape in [(12, 12), (3, 3)]:
        for a, b in zip(fgd_masks.fgd_masks_loop(gt, [(96, 96)] * 3, shape), fgd_loop_masks(gt, [(96, 96)] * 3, shape)):
            assert torch.equal(a, b)
    assert fgd_masks.main(["--quick", "--image-size", "64", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["rows"][0]["loop_ms"] > 0


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, words", [
    ("distill.method=mgd", ["distill.method", "fgd_conf", "'mgd'"]),
    ("distill.method_weight=-1", ["distill.method_weight", ">= 0"]),
    ("distill.fgd_alpha=-0.1", ["distill.fgd_alpha", ">= 0"]),
    ("distill.cwd_tau=0", ["distill.cwd_tau", "> 0"]),
    ("distill.fgd_temp=0", ["distill.fgd_temp", "> 0"]),
    ("distill.peer_thesis_terms=kl", ["distill.peer_thesis_terms", "list"]),
    ("distill.peer_thesis_terms=[kl, adl]", ["distill.peer_thesis_terms", "'adl'"]),
    ("distill.peer_thesis_terms=[kl, kl]", ["distill.peer_thesis_terms", "duplicates"]),
])
def test_bad_peer_settings_name_the_key(override, words):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_published_defaults():
    d = load_config(None, []).distill
    assert d.method == "thesis" and d.method_weight == 1.0 and d.peer_thesis_terms == []
    assert (d.cwd_tau, d.cwd_weight, d.pkd_weight) == (1.0, 10.0, 10.0)
    assert (d.fgd_temp, d.fgd_alpha, d.fgd_beta, d.fgd_gamma, d.fgd_lambda) == (0.5, 0.001, 0.0005, 0.0005, 0.000005)


# ----------------------------------------------------------------------------- end to end
TINY = ["data.image_size=64", "data.num_train=6", "data.num_unlabeled=4", "data.num_val=4",
        "data.classes=[circle, square]", "data.min_size=10", "data.max_objects=3",
        "model.anchor_sizes=[12, 24, 48, 96, 192]", "train.iterations=3", "train.batch_size=2",
        "train.unlabeled_batch_size=2", "train.unlabeled_every=1", "train.warmup_iters=1", "train.log_every=1",
        "train.ckpt_every=2", "train.num_threads=1", "eval.batch_size=4"]


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Tiny data and a 3-iteration teacher, shared by the runs below."""
    from kdkernels.train.cli import main
    base = tmp_path_factory.mktemp("train_peers")
    args = [a for s in TINY + [f"data.root={base / 'data'}", f"out_dir={base / 'runs'}"] for a in ("--set", s)]
    assert main(["make-data", *args]) == 0
    assert main(["teacher", *args]) == 0
    return base


def _config(base, out, *extra):
    return load_config(None, TINY + [f"data.root={base / 'data'}", f"out_dir={base / out}",
                                     f"distill.teacher_checkpoint={base / 'runs' / 'teacher' / 'model.pt'}", *extra])


def _history(path: Path):
    return json.loads(path.read_text())["history"]


@pytest.mark.parametrize("method, labeled_terms, unlabeled_terms", [
    ("cwd", {"kd_cwd"}, {"kd_cwd"}),
    ("pkd", {"kd_pkd"}, {"kd_pkd"}),
    ("fgd_conf", {"kd_fgd_feat", "kd_fgd_mask", "kd_fgd_rela"}, {"kd_fgd_feat", "kd_fgd_mask", "kd_fgd_rela"}),
])
def test_distill_runs_with_each_preset(base, method, labeled_terms, unlabeled_terms):
    """Steps 1 and 3 are labeled (detection loss + the preset), step 2 unlabeled (the preset alone)."""
    metrics = trainer.train(_config(base, method, f"distill.method={method}"), "distill", progress=False)
    rows = metrics["history"]
    assert [r["iteration"] for r in rows] == [1, 2, 3] and metrics["unlabeled_steps"] == 1
    kd = [{k for k in r if k.startswith("kd_")} for r in rows]
    assert kd[0] == kd[2] == labeled_terms and kd[1] == unlabeled_terms
    assert any(k.startswith("det_") for k in rows[0]) and not any(k.startswith("det_") for k in rows[1])
    for r in rows:
        assert all(v == v and abs(v) < 1e6 for v in r.values())


def test_fgd_trains_its_gcblocks_and_resume_restores_them(base, monkeypatch):
    """fgd: the GcBlocks are in the optimizer and the checkpoint; a run crashed after its iteration-2
    checkpoint and resumed ends with the same student, adapter and GcBlock weights as an
    uninterrupted run (unlabeled step 2: attention and relation terms only, no boxes)."""
    runs = {}
    orig_finish = trainer._finish
    monkeypatch.setattr(trainer, "_finish", lambda run: (runs.setdefault(run.cfg.out_dir, run), orig_finish(run))[1])
    full = _config(base, "fgd_full", "distill.method=fgd", "train.iterations=4")
    metrics = trainer.train(full, "distill", progress=False)
    kd = [{k for k in r if k.startswith("kd_")} for r in metrics["history"]]
    assert kd[0] == {"kd_fgd_feat", "kd_fgd_mask", "kd_fgd_rela"} and kd[1] == {"kd_fgd_mask", "kd_fgd_rela"}
    run = runs[full.out_dir]
    in_optimizer = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    gc = list(run.module.peer.parameters())
    assert len(gc) > 0 and all(id(p) in in_optimizer for p in gc)
    assert run.module.peer.student[0].channel_add[-1].weight.abs().sum() > 0  # zero at init: trained

    class Crash(Exception):
        pass

    def crash(mode, it):
        if it == 3:
            raise Crash
    crashed = _config(base, "fgd_crashed", "distill.method=fgd", "train.iterations=4")
    monkeypatch.setattr(trainer, "_STEP_HOOK", crash)
    with pytest.raises(Crash):
        trainer.train(crashed, "distill", progress=False)
    monkeypatch.setattr(trainer, "_STEP_HOOK", None)
    assert trainer.train(crashed, "distill", resume=True, progress=False)["start_iteration"] == 2
    from kdkernels.train.checkpoint import load_verified
    a = load_verified(base / "fgd_full" / "distill" / "checkpoint.pt", kind="checkpoint")["module"]
    b = load_verified(base / "fgd_crashed" / "distill" / "checkpoint.pt", kind="checkpoint")["module"]
    assert a.keys() == b.keys() and any(k.startswith("peer.teacher.4.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_thesis_runs_keep_their_config_hash_and_old_checkpoints_resume():
    """The peer keys do not change a thesis run: its config hash is the one from before they existed
    (stored efficacy results stay valid) and a checkpoint without them resumes."""
    import hashlib
    from kdkernels.train.cli import config_hash
    from kdkernels.train.config import PEER_KEYS
    cfg = load_config(None, ["distill.teacher_checkpoint=/nonexistent/model.pt"])
    d = cfg.to_dict()
    d.pop("eval")
    for k in ("num_threads", "log_every", "ckpt_every"):
        d["train"].pop(k)
    for k in PEER_KEYS:
        d["distill"].pop(k)
    d["mode"], d["teacher_stamp"] = "distill", None
    assert config_hash(cfg, "distill") == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    peer = load_config(None, ["distill.teacher_checkpoint=/nonexistent/model.pt", "distill.method=fgd"])
    assert config_hash(peer, "distill") != config_hash(cfg, "distill")
    old = cfg.to_dict()
    for k in PEER_KEYS:
        old["distill"].pop(k)
    assert trainer.resume_differences({"config": old, "mode": "distill"}, cfg, "distill") == []
    assert "distill.method" in trainer.resume_differences({"config": old, "mode": "distill"}, peer, "distill")
