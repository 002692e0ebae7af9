"""The peers' losses that run on the soft_label_kl kernel: channel_wise_divergence (CWD),
localization_distillation (LD), decoupled_kd (DKD), soft_label_kl(class_reduction="mean")
(MMDetection's KD), and fgd_attention. Backend × dtype × reduction × shape against the float64
reference, and against independent transcriptions of the peers' published code."""
import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS, DTYPES, assert_close, run_with_grad
from peer_transcriptions import fgd_get_attention, mmdet_kd, mmrazor_cwd, mmrazor_dkd

R = kdkernels.reference


# ---- independent transcriptions of the peers' code (MMRazor, MMDetection, FGD), float64 ----





def test_cwd_matches_mmrazor():
    s, t = torch.randn(2, 5, 6, 7, dtype=torch.float64) * 3, torch.randn(2, 5, 6, 7, dtype=torch.float64) * 3
    for tau in (1.0, 4.0):
        torch.testing.assert_close(kdkernels.channel_wise_divergence(s, t, temperature=tau), mmrazor_cwd(s, t, tau))
        torch.testing.assert_close(R.channel_wise_divergence(s, t, temperature=tau), mmrazor_cwd(s, t, tau))


@pytest.mark.parametrize("class_reduction", ["mean", "sum"])
def test_soft_label_kl_matches_mmdet_kd(class_reduction):
    s, t = torch.randn(40, 17, dtype=torch.float64) * 2, torch.randn(40, 17, dtype=torch.float64) * 2
    w = torch.rand(40, dtype=torch.float64)
    ref = mmdet_kd(s, t, 10.0, class_reduction)
    got = kdkernels.soft_label_kl(s, t, temperature=10.0, class_reduction=class_reduction)
    torch.testing.assert_close(got, ref.mean())  # MMDetection's reduction="mean", no weight
    got_w = kdkernels.soft_label_kl(s, t, temperature=10.0, class_reduction=class_reduction, weight=w,
                                    reduction="sum")
    torch.testing.assert_close(got_w, (ref * w).sum())


def test_ld_matches_mmdet_ld_head():
    """LDHead: loss_ld(pos corners, soft corners, weight=max score ×4 sides, avg_factor=4)."""
    a, k = 30, 17  # anchors, reg_max + 1
    s, t = torch.randn(a * 4, k, dtype=torch.float64), torch.randn(a * 4, k, dtype=torch.float64)
    score = torch.rand(a, dtype=torch.float64)
    w = score[:, None].expand(-1, 4).reshape(-1)
    mmdet = (mmdet_kd(s, t, 10.0, "mean") * w).sum() / 4.0
    got = kdkernels.localization_distillation(s.reshape(a, 4, k), t.reshape(a, 4, k), weight=w.reshape(a, 4),
                                              reduction="sum") / 4.0
    torch.testing.assert_close(got, mmdet)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("alpha,beta,tau", [(1.0, 1.0, 1.0), (1.0, 8.0, 4.0), (0.0, 2.0, 2.0), (0.5, 0.0, 1.0)])
def test_dkd_matches_mmrazor(backend, alpha, beta, tau):
    s, t = torch.randn(24, 10, dtype=torch.float64) * 3, torch.randn(24, 10, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (24,))
    ref = mmrazor_dkd(s, t, labels, alpha, beta, tau)
    dev = backend.device
    got = kdkernels.decoupled_kd(s.to(dev), t.to(dev), labels.to(dev), alpha=alpha, beta=beta, temperature=tau)
    torch.testing.assert_close(got.cpu(), ref)
    torch.testing.assert_close(R.decoupled_kd(s, t, labels, alpha=alpha, beta=beta, temperature=tau), ref)


def test_fgd_attention_matches_fgd():
    f = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    for got, ref in zip(kdkernels.fgd_attention(f, 0.5), fgd_get_attention(f, 0.5)):
        torch.testing.assert_close(got, ref)


# ---- backend × dtype × reduction × shape against the float64 reference ----

FEATURE_SHAPES = [(1, 1, 1, 1), (2, 3, 4, 5), (2, 16, 9, 11)]


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", FEATURE_SHAPES, ids=str)
def test_cwd_matches_reference(backend, dtype, reduction, shape):
    s, t = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype), (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    up = torch.randn(shape[:2], dtype=torch.float64) if reduction == "none" else None
    dev = backend.device
    kw = dict(temperature=4.0, reduction=reduction)
    loss, grad = run_with_grad(lambda x: kdkernels.channel_wise_divergence(x, t.to(dev), **kw), s.to(dev), up)
    ref_loss, ref_grad = run_with_grad(lambda x: R.channel_wise_divergence(x, t.double(), **kw), s.double(), up)
    assert loss.shape == ref_loss.shape
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("lead,k", [((1,), 1), ((7, 4), 17), ((50, 4), 8)], ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_ld_matches_reference(backend, dtype, reduction, lead, k, weighted):
    s, t = torch.randn(*lead, k, dtype=torch.float64).to(dtype), torch.randn(*lead, k, dtype=torch.float64).to(dtype)
    w = torch.rand(lead, dtype=torch.float64) if weighted else None
    up = torch.randn(lead, dtype=torch.float64) if reduction == "none" else None
    dev = backend.device
    # T = 2: at LD's default T = 10 the float32 KL of near-equal distributions loses ~1e-4 relative
    # precision to cancellation (the same kernel; the error scales with T²·|log p|·eps).
    kw = dict(temperature=2.0, reduction=reduction)
    loss, grad = run_with_grad(lambda x: kdkernels.localization_distillation(
        x, t.to(dev), weight=None if w is None else w.to(dev), **kw), s.to(dev), up)
    ref_loss, ref_grad = run_with_grad(lambda x: R.localization_distillation(
        x, t.double(), weight=w, **kw), s.double(), up)
    assert loss.shape == ref_loss.shape
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_soft_label_kl_class_mean(backend, dtype, mode):
    s, t = torch.randn(9, 6, dtype=torch.float64).to(dtype), torch.randn(9, 6, dtype=torch.float64).to(dtype)
    w = torch.rand(9)
    dev = backend.device
    kw = dict(temperature=2.0, mode=mode, class_reduction="mean")
    loss, grad = run_with_grad(lambda x: kdkernels.soft_label_kl(x, t.to(dev), weight=w.to(dev), **kw), s.to(dev))
    ref_loss, ref_grad = run_with_grad(lambda x: R.soft_label_kl(x, t.double(), weight=w.double(), **kw), s.double())
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad")
    summed = R.soft_label_kl(s.double(), t.double(), weight=w.double(), temperature=2.0, mode=mode)
    torch.testing.assert_close(ref_loss, summed / 6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fgd_attention_dtype_and_grad(dtype):
    f = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    spatial, channel = kdkernels.fgd_attention(f.to(dtype).requires_grad_(True))
    ref_s, ref_c = R.fgd_attention(f)
    assert_close(spatial, ref_s, dtype, "spatial")
    assert_close(channel, ref_c, dtype, "channel")
    assert spatial.requires_grad and channel.requires_grad
    torch.testing.assert_close(ref_s.mean(dim=(1, 2)), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ref_c.mean(dim=1), torch.ones(2, dtype=torch.float64))


# ---- contract: teacher gets no gradient, compile, autocast, bad input ----

def _row_cases():
    s4, t4 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    s2, t2 = torch.randn(8, 6), torch.randn(8, 6)
    labels, w = torch.randint(0, 6, (8,)), torch.rand(8)
    return {
        "cwd": (lambda s, t: kdkernels.channel_wise_divergence(s, t), s4, t4),
        "ld": (lambda s, t: kdkernels.localization_distillation(s, t, weight=w), s2, t2),
        "dkd": (lambda s, t: kdkernels.decoupled_kd(s, t, labels, beta=8.0, temperature=4.0), s2, t2),
        "mmdet_kd": (lambda s, t: kdkernels.soft_label_kl(s, t, class_reduction="mean"), s2, t2),
    }


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
@pytest.mark.parametrize("case", ["cwd", "ld", "dkd", "mmdet_kd"])
def test_teacher_gets_no_gradient(backend, case):
    fn, s, t = _row_cases()[case]
    s, t = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    fn(s, t).backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
@pytest.mark.parametrize("case", ["cwd", "ld", "dkd", "mmdet_kd"])
def test_compiled_fullgraph_matches_eager(backend, case):
    fn, s, t = _row_cases()[case]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss, grad = run_with_grad(lambda x: compiled(x, t), s)
    ref_loss, ref_grad = run_with_grad(lambda x: fn(x, t), s)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("case", ["cwd", "ld", "dkd", "mmdet_kd"])
def test_bf16_autocast_mixed_pair(case):
    fn, s, t = _row_cases()[case]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(s.bfloat16(), t)  # mixed pair promoted to float32
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, fn(s.bfloat16().float(), t))


def test_bad_inputs_name_the_argument():
    s4, t4 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    s2, t2, labels = torch.randn(8, 6), torch.randn(8, 6), torch.randint(0, 6, (8,))
    cases = [
        (lambda: kdkernels.channel_wise_divergence(s4[0], t4[0]), ValueError, "student"),
        (lambda: kdkernels.channel_wise_divergence(s4, t4[:1]), ValueError, "teacher"),
        (lambda: kdkernels.channel_wise_divergence(s4, t4.double()), TypeError, "teacher"),
        (lambda: kdkernels.channel_wise_divergence(s4, t4, temperature=0.0), ValueError, "temperature"),
        (lambda: kdkernels.channel_wise_divergence(s4, t4, reduction="avg"), ValueError, "reduction"),
        (lambda: kdkernels.localization_distillation(s2, t2, weight=torch.rand(7)), ValueError, "weight"),
        (lambda: kdkernels.localization_distillation(s2, t2, temperature=float("inf")), ValueError, "temperature"),
        (lambda: kdkernels.soft_label_kl(s2, t2, class_reduction="avg"), ValueError, "class_reduction"),
        (lambda: kdkernels.decoupled_kd(s2, t2, labels.float()), TypeError, "labels"),
        (lambda: kdkernels.decoupled_kd(s2, t2, labels[:5]), ValueError, "labels"),
        (lambda: kdkernels.decoupled_kd(s2, t2, labels + 6), ValueError, "labels"),
        (lambda: kdkernels.decoupled_kd(s2, t2, labels - 7), ValueError, "labels"),
        (lambda: kdkernels.decoupled_kd(s2[:, :1], t2[:, :1], labels * 0), ValueError, "K >= 2"),
        (lambda: kdkernels.decoupled_kd(s2, t2, labels, beta=-1.0), ValueError, "beta"),
        (lambda: kdkernels.decoupled_kd(s2, t2, labels, alpha=float("nan")), ValueError, "alpha"),
        (lambda: kdkernels.fgd_attention(s2), ValueError, "features"),
        (lambda: kdkernels.fgd_attention(s4, temperature=-1.0), ValueError, "temperature"),
    ]
    for fn, exc, name in cases:
        with pytest.raises(exc, match=name):
            fn()


def test_dkd_nan_propagates_and_saturated_rows_are_finite():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    bad = s.clone()
    bad[1, 2] = float("nan")
    assert torch.isnan(kdkernels.decoupled_kd(bad, t, labels))
    big = torch.tensor([[50.0, -50.0, 0.0], [-80.0, 80.0, 3.0]])
    loss, grad = run_with_grad(lambda x: kdkernels.decoupled_kd(x, big * 0.9, torch.tensor([0, 1])), big)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
