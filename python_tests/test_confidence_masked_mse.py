"""confidence_masked_mse: every backend × dtype × reduction × shape against the float64 reference."""
import pytest
import torch

import kdkernels
from conftest import ALL_BACKENDS, DTYPES, assert_close, run_with_grad

SHAPES = [(1, 1, 1, 1), (3, 7, 13, 5), (2, 16, 9, 11), (1, 3, 40, 33)]


def make(shape, dtype, conf_4d=False):
    n, c, h, w = shape
    s = torch.randn(shape, dtype=torch.float64).to(dtype)
    t = torch.randn(shape, dtype=torch.float64).to(dtype)
    conf = torch.rand(n, 1, h, w) if conf_4d else torch.rand(n, h, w)
    return s, t, conf


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threshold,power", [(0.0, 1.0), (0.5, 2.0), (0.3, 0.0)])
def test_matches_reference(backend, dtype, reduction, shape, threshold, power):
    s, t, conf = make(shape, dtype, conf_4d=shape[0] == 3)
    kw = dict(threshold=threshold, power=power, reduction=reduction)
    up = torch.randn(shape, dtype=torch.float64) if reduction == "none" else None
    dev = backend.device
    loss, grad = run_with_grad(lambda x: kdkernels.confidence_masked_mse(x, t.to(dev), conf.to(dev), **kw),
                               s.to(dev), up)
    ref_loss, ref_grad = run_with_grad(
        lambda x: kdkernels.reference.confidence_masked_mse(x, t.double(), conf.double(), **kw),
        s.double(), up)
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_non_contiguous_and_broadcast_confidence(backend):
    dev = backend.device
    s = torch.randn(2, 5, 8, 6, device=dev).transpose(2, 3)          # (2, 5, 6, 8) non-contiguous
    t = torch.randn(2, 6, 8, 5, device=dev).permute(0, 3, 1, 2)      # (2, 5, 6, 8) non-contiguous
    s_cl = torch.randn(2, 5, 6, 8, device=dev).to(memory_format=torch.channels_last)
    t_off = torch.randn(2 * 5 * 6 * 8 + 1, device=dev)[1:].view(2, 5, 6, 8)  # storage offset 1
    conf = torch.rand(1, 6, 8, device=dev).expand(2, 6, 8)           # broadcast (stride 0)
    conf4 = torch.rand(2, 8, 1, 6, device=dev).permute(0, 2, 3, 1)   # (2, 1, 6, 8) non-contiguous
    for s, t, c in ((s, t, conf), (s, t, conf4), (s_cl, t_off, conf)):
        loss, grad = run_with_grad(lambda x: kdkernels.confidence_masked_mse(x, t, c, threshold=0.2), s)
        ref_loss, ref_grad = run_with_grad(
            lambda x: kdkernels.reference.confidence_masked_mse(x, t.double().cpu(), c.double().cpu(), threshold=0.2),
            s.double().cpu())
        assert_close(loss, ref_loss, torch.float32, "loss")
        assert_close(grad, ref_grad, torch.float32, "grad")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_zero_mask_gives_zero_and_zero_grad(backend, reduction):
    s, t, _ = (x.to(backend.device) for x in make((2, 4, 5, 5), torch.float32))
    conf = torch.full((2, 5, 5), 0.1, device=backend.device)
    loss, grad = run_with_grad(
        lambda x: kdkernels.confidence_masked_mse(x, t, conf, threshold=0.5, reduction=reduction), s)
    assert torch.all(loss == 0) and not torch.isnan(loss).any()
    assert torch.all(grad == 0)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (2, 0, 5, 5), (2, 4, 0, 5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_inputs(backend, shape, reduction):
    s, t = torch.randn(shape, device=backend.device), torch.randn(shape, device=backend.device)
    conf = torch.rand(shape[0], shape[2], shape[3], device=backend.device)
    loss, grad = run_with_grad(lambda x: kdkernels.confidence_masked_mse(x, t, conf, reduction=reduction), s)
    if reduction == "none":
        assert loss.shape == shape
    else:
        assert loss.item() == 0.0
    assert grad.shape == shape and torch.all(grad == 0)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_no_gradient_into_teacher_or_confidence(backend):
    s = torch.randn(2, 3, 4, 4, device=backend.device, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, device=backend.device, requires_grad=True)
    conf = torch.rand(2, 4, 4, device=backend.device, requires_grad=True)
    kdkernels.confidence_masked_mse(s, t, conf).backward()
    assert s.grad is not None and t.grad is None and conf.grad is None


def test_gradcheck_fp64():
    s = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    conf = torch.rand(2, 4, 5, dtype=torch.float64)
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda x: kdkernels.confidence_masked_mse(x, t, conf, threshold=0.3, power=1.5,
                                                      reduction=reduction), (s,))


def test_no_grad_mode_returns_loss_only():
    s, t, conf = make((2, 4, 6, 6), torch.float32)
    with torch.no_grad():
        a = kdkernels.confidence_masked_mse(s.requires_grad_(), t, conf)
    b = kdkernels.reference.confidence_masked_mse(s.double(), t.double(), conf.double())
    assert_close(a, b, torch.float32, "loss")


def test_deterministic():
    s, t, conf = make((2, 64, 50, 60), torch.float32)
    a = [run_with_grad(lambda x: kdkernels.confidence_masked_mse(x, t, conf, threshold=0.2), s) for _ in range(3)]
    for loss, grad in a[1:]:
        assert torch.equal(loss, a[0][0]) and torch.equal(grad, a[0][1])
