"""soft_label_kl and adaptive_distillation_loss: backend × dtype × mode × reduction × shape vs float64."""
import functools

import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS, DTYPES, assert_close, run_with_grad

OPS = {
    "soft_label_kl": (kdkernels.soft_label_kl, kdkernels.reference.soft_label_kl, {}),
    "adl": (kdkernels.adaptive_distillation_loss, kdkernels.reference.adaptive_distillation_loss, {}),
    "adl_b1.5_g1": (kdkernels.adaptive_distillation_loss, kdkernels.reference.adaptive_distillation_loss,
                    dict(beta=1.5, gamma=1.0)),
    "adl_detach_g0.5": (kdkernels.adaptive_distillation_loss, kdkernels.reference.adaptive_distillation_loss,
                        dict(gamma=0.5, detach_weight=True)),
}
# (leading shape, K): one element, primes, a large K, detection-like rows
SHAPES = [((1,), 1), ((3, 7), 13), ((5,), 1000), ((64,), 80)]


def make(lead, k, dtype, scale=3.0):
    s = (torch.randn(*lead, k, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(*lead, k, dtype=torch.float64) * scale).to(dtype)
    return s, t


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(backend, op, dtype, mode, reduction, shape, weighted):
    fn, ref, extra = OPS[op]
    lead, k = shape
    s, t = make(lead, k, dtype)
    w = torch.rand(lead) if weighted else None
    kw = dict(temperature=2.0, mode=mode, reduction=reduction, **extra)
    up = torch.randn(lead, dtype=torch.float64) if reduction == "none" else None
    dev = backend.device
    loss, grad = run_with_grad(lambda x: fn(x, t.to(dev), weight=None if w is None else w.to(dev), **kw),
                               s.to(dev), up)
    ref_loss, ref_grad = run_with_grad(
        lambda x: ref(x, t.double(), weight=None if w is None else w.double(), **kw), s.double(), up)
    assert loss.shape == ref_loss.shape
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_saturated_teacher_and_equal_logits_no_nan(backend, op, mode):
    fn, ref, extra = OPS[op]
    t = torch.tensor([[30.0, -30.0, 0.0, 100.0], [-100.0, -100.0, 100.0, 5.0]], dtype=torch.float64)
    for s in (t.clone(), torch.zeros_like(t), -t):
        loss, grad = run_with_grad(lambda x: fn(x, t.to(backend.device), mode=mode, **extra), s.to(backend.device))
        ref_loss, ref_grad = run_with_grad(lambda x: ref(x, t, mode=mode, **extra), s)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert_close(loss, ref_loss, torch.float64, "loss")
        if torch.isfinite(ref_grad).all():
            assert_close(grad, ref_grad, torch.float64, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_weights_and_empty_rows(backend, op, mode, reduction):
    fn, _, extra = OPS[op]
    dev = backend.device
    s, t = (x.to(dev) for x in make((6,), 5, torch.float32))
    loss, grad = run_with_grad(lambda x: fn(x, t, mode=mode, weight=torch.zeros(6, device=dev),
                                            reduction=reduction, **extra), s)
    assert torch.all(loss == 0) and torch.all(grad == 0)
    s, t = (x.to(dev) for x in make((0,), 5, torch.float32))
    loss, grad = run_with_grad(lambda x: fn(x, t, mode=mode, reduction=reduction, **extra), s)
    assert loss.shape == ((0,) if reduction == "none" else ())
    assert grad.shape == (0, 5) and (reduction == "none" or loss.item() == 0.0)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_non_contiguous_inputs(backend, op):
    fn, ref, extra = OPS[op]
    dev = backend.device
    s = torch.randn(80, 33, device=dev).t()  # (33, 80), column-major
    t = torch.randn(33, 161, device=dev)[:, 1::2]  # row stride 161, storage offset 1
    w = torch.rand(67, device=dev)[1::2]  # stride 2, storage offset 1
    loss, grad = run_with_grad(lambda x: fn(x, t, weight=w, mode="sigmoid", **extra), s)
    ref_loss, ref_grad = run_with_grad(lambda x: ref(x, t.double().cpu(), weight=w.double().cpu(), mode="sigmoid", **extra),
                                       s.double().cpu())
    assert_close(loss, ref_loss, torch.float32, "loss")
    assert_close(grad, ref_grad, torch.float32, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("op", list(OPS))
def test_no_gradient_into_teacher_or_weight(backend, op):
    fn, _, extra = OPS[op]
    s = torch.randn(4, 7, device=backend.device, requires_grad=True)
    t = torch.randn(4, 7, device=backend.device, requires_grad=True)
    w = torch.rand(4, device=backend.device, requires_grad=True)
    fn(s, t, weight=w, **extra).backward()
    assert s.grad is not None and t.grad is None and w.grad is None


# detach_weight drops d(weight)/ds on purpose, so finite differences cannot agree with it
@pytest.mark.parametrize("op", [name for name in OPS if not OPS[name][2].get("detach_weight")])
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_fp64(op, mode, reduction):
    fn, _, extra = OPS[op]
    s = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 6, dtype=torch.float64) * 2
    w = torch.rand(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        functools.partial(fn, teacher_logits=t, temperature=1.5, mode=mode, weight=w,
                          reduction=reduction, **extra), (s,))


def test_adl_gamma_zero_beta_zero_is_soft_label_kl():
    s, t = make((20,), 9, torch.float64)
    for mode in ("softmax", "sigmoid"):
        a = kdkernels.adaptive_distillation_loss(s, t, mode=mode, gamma=0.0, temperature=3.0)
        b = kdkernels.soft_label_kl(s, t, mode=mode, temperature=3.0)
        torch.testing.assert_close(a, b)


def test_adl_focuses_on_hard_samples():
    """Hard rows (teacher uncertain, student far) keep more of their KL than easy ones."""
    t = torch.tensor([[8.0, -8.0], [0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[6.0, -6.0], [3.0, -3.0]], dtype=torch.float64)
    kl = kdkernels.soft_label_kl(s, t, mode="softmax", reduction="none")
    adl = kdkernels.adaptive_distillation_loss(s, t, mode="softmax", reduction="none")
    ratio = adl / kl
    assert ratio[1] > ratio[0]


def test_leading_dims_and_weight_shape():
    s, t = make((2, 3, 4), 5, torch.float32)
    w = torch.rand(2, 3, 4)
    out = kdkernels.soft_label_kl(s, t, weight=w, reduction="none")
    assert out.shape == (2, 3, 4)
    ref = kdkernels.reference.soft_label_kl(s.double(), t.double(), weight=w.double(), reduction="none")
    assert_close(out, ref, torch.float32, "loss")


def test_deterministic_large():
    s, t = make((20000,), 80, torch.float32)
    w = torch.rand(20000)
    runs = [run_with_grad(lambda x: kdkernels.soft_label_kl(x, t, weight=w, mode="sigmoid"), s) for _ in range(3)]
    for loss, grad in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1])
