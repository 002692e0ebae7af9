"""CUDA and Triton backends on a real GPU against the float64 reference (skipped without CUDA)."""
import pytest
import torch

import kdkernels
from conftest import DTYPES, assert_close, run_with_grad

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _gpu_backends():
    names = ["triton"]
    if "cuda" in kdkernels.build_info()["compiled_backends"]:
        names.append("cuda")
    return names


GPU_BACKENDS = _gpu_backends() if torch.cuda.is_available() else ["cuda", "triton"]
ROW_SHAPES = [(1, 1), (21, 13), (5, 1000), (4096, 80), (3, 20000)]
FEAT_SHAPES = [(1, 1, 1, 1), (3, 7, 13, 5), (2, 64, 25, 42)]
ROW_OPS = {
    "soft_label_kl": (kdkernels.soft_label_kl, kdkernels.reference.soft_label_kl, {}),
    "adl": (kdkernels.adaptive_distillation_loss, kdkernels.reference.adaptive_distillation_loss, {}),
    "adl_detach": (kdkernels.adaptive_distillation_loss, kdkernels.reference.adaptive_distillation_loss,
                   dict(gamma=1.0, beta=1.5, detach_weight=True)),
}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", list(ROW_OPS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_row_losses_gpu(backend, op, dtype, mode, reduction, shape):
    fn, ref, extra = ROW_OPS[op]
    s = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    t = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    w = torch.rand(shape[0])
    kw = dict(temperature=2.0, mode=mode, reduction=reduction, **extra)
    up = torch.randn(shape[0], dtype=torch.float64) if reduction == "none" else None
    with kdkernels.use_backend(backend):
        loss, grad = run_with_grad(lambda x: fn(x, t.cuda(), weight=w.cuda(), **kw), s.cuda(),
                                   None if up is None else up.cuda())
    ref_loss, ref_grad = run_with_grad(lambda x: ref(x, t.double(), weight=w.double(), **kw), s.double(), up)
    assert loss.is_cuda and grad.is_cuda
    assert_close(loss.cpu(), ref_loss, dtype, "loss")
    assert_close(grad.cpu(), ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", FEAT_SHAPES, ids=str)
def test_masked_mse_gpu(backend, dtype, reduction, shape):
    n, c, h, w = shape
    s = torch.randn(shape, dtype=torch.float64).to(dtype)
    t = torch.randn(shape, dtype=torch.float64).to(dtype)
    conf = torch.rand(n, h, w)
    kw = dict(threshold=0.3, power=2.0, reduction=reduction)
    up = torch.randn(shape, dtype=torch.float64) if reduction == "none" else None
    with kdkernels.use_backend(backend):
        loss, grad = run_with_grad(lambda x: kdkernels.confidence_masked_mse(x, t.cuda(), conf.cuda(), **kw),
                                   s.cuda(), None if up is None else up.cuda())
    ref_loss, ref_grad = run_with_grad(
        lambda x: kdkernels.reference.confidence_masked_mse(x, t.double(), conf.double(), **kw), s.double(), up)
    assert_close(loss.cpu(), ref_loss, dtype, "loss")
    assert_close(grad.cpu(), ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_realistic_shapes_gpu(backend):
    """FPN P3 features and RetinaNet class logits: finite, matching the reference in fp32."""
    s4 = torch.randn(2, 256, 100, 168, device="cuda", requires_grad=True)
    t4 = torch.randn(2, 256, 100, 168, device="cuda")
    conf = torch.rand(2, 100, 168, device="cuda")
    s2 = torch.randn(400_000, 80, device="cuda", requires_grad=True)
    t2 = torch.randn(400_000, 80, device="cuda")
    w = torch.rand(400_000, device="cuda")
    with kdkernels.use_backend(backend):
        a = kdkernels.confidence_masked_mse(s4, t4, conf, threshold=0.5)
        b = kdkernels.soft_label_kl(s2, t2, mode="sigmoid", weight=w)
        c = kdkernels.adaptive_distillation_loss(s2, t2, weight=w)
    ra = kdkernels.reference.confidence_masked_mse(s4.double(), t4.double(), conf.double(), threshold=0.5)
    rb = kdkernels.reference.soft_label_kl(s2.double(), t2.double(), mode="sigmoid", weight=w.double())
    rc = kdkernels.reference.adaptive_distillation_loss(s2.double(), t2.double(), weight=w.double())
    for x, r in ((a, ra), (b, rb), (c, rc)):
        torch.testing.assert_close(x.double(), r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_compile_fullgraph_gpu(backend):
    torch._dynamo.reset()
    s = torch.randn(512, 80, device="cuda", requires_grad=True)
    t = torch.randn(512, 80, device="cuda")

    def f(s, t):
        return kdkernels.soft_label_kl(s, t, mode="sigmoid", weight=kdkernels.teacher_confidence(t)) * 2

    with kdkernels.use_backend(backend):
        loss = torch.compile(f, fullgraph=True)(s, t)
        (g,) = torch.autograd.grad(loss, s)
        loss_e = f(s, t)
        (g_e,) = torch.autograd.grad(loss_e, s)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(g, g_e)


def test_opcheck_cuda():
    if "cuda" not in kdkernels.build_info()["compiled_backends"]:
        pytest.skip("extension built without CUDA")
    args = (torch.randn(6, 7, device="cuda", requires_grad=True), torch.randn(6, 7, device="cuda"),
            torch.rand(6, device="cuda"), 2.0, "sigmoid", "mean", 1e-6, True)
    torch.library.opcheck(torch.ops.kdkernels.soft_label_kl, args)
    args = (torch.randn(2, 3, 4, 8, device="cuda", requires_grad=True), torch.randn(2, 3, 4, 8, device="cuda"),
            torch.rand(2, 4, 8, device="cuda"), 0.3, 1.0, "mean", 1e-6, True)
    torch.library.opcheck(torch.ops.kdkernels.confidence_masked_mse, args)
